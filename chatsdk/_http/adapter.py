"""ResilientAdapter: one tenacity retry loop around ``HTTPAdapter.send``.

Each attempt reads the body inside the loop (when not streaming), so a reset while reading is
an attempt failure like any other. urllib3's own retries stay off: this loop is the only one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import requests
import tenacity
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from chatsdk import _testmode
from chatsdk._errors import (
    ChatSDKError,
    CircuitBreakerOpenError,
    TransportError,
    error_for_response,
    map_transport_error,
)
from chatsdk._http.retry import (
    DEFAULT_RETRY_POLICY,
    IDEMPOTENT_METHODS,
    RetryPolicy,
    backoff_for,
    is_retryable_status,
    parse_retry_after,
    should_retry,
)
from chatsdk._resilience.breaker import BreakerPolicy, CircuitBreaker, CircuitState, Permit
from chatsdk._resilience.budget import RetryBudget
from chatsdk._resilience.hosts import HostState, host_of

__all__ = ["ResilientAdapter", "Transport", "attempts_of"]

log = logging.getLogger("chatsdk")

#: Statuses that mean "refused before processing": safe to resend even without a key.
_NOT_PROCESSED = frozenset({429, 503})

#: Statuses that count as the host failing, for its circuit breaker (429 counts as neither).
_HOST_FAILURES = frozenset({408, 500, 502, 503, 504})

_TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)

TimeoutArg = float | tuple[float | None, float | None] | None


class Transport(Protocol):
    """What makes one attempt: ``HTTPAdapter.send``'s signature, without retries.

    ``chatsdk.testing.InMemoryTransport`` is one; any ``requests`` adapter is another.
    """

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = ...,
        timeout: TimeoutArg = ...,
        verify: bool | str = ...,
        cert: str | tuple[str, str] | None = ...,
        proxies: Mapping[str, str] | None = ...,
    ) -> requests.Response:
        """Send ``request`` once; return its response or raise a requests/urllib3 error."""
        ...


def attempts_of(response: requests.Response) -> int:
    """HTTP sends the adapter made to obtain ``response`` (1 when it did not count)."""
    return int(getattr(response, "_chatsdk_attempts", 1))


class ResilientAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` that retries under a :class:`RetryPolicy`.

    Args:
        retry: the retry policy (default :data:`chatsdk.DEFAULT_RETRY_POLICY`).
        breaker: the per-host circuit breaker policy; None for the default
            :class:`BreakerPolicy`, False for no circuit breaking.
        sleep: called with the seconds to wait between attempts (inject for tests); by
            default ``time.sleep``, which test mode (``chatsdk.testing.set_testing``) skips.
        clock: a monotonic clock in seconds, for the deadline (inject for tests).
        rand: a uniform [0, 1) source for jitter (inject for tests).
        transport: makes each single attempt instead of urllib3 (e.g.
            ``chatsdk.testing.InMemoryTransport``); retries, breaker and budget are unchanged.
        **pool_kwargs: ``pool_connections``, ``pool_maxsize``, ``pool_block`` as for requests.
    """

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        *,
        breaker: BreakerPolicy | Literal[False] | None = None,
        sleep: Callable[[float], None] = _testmode.sleep,
        clock: Callable[[], float] = _testmode.monotonic,
        rand: Callable[[], float] = random.random,
        transport: Transport | None = None,
        **pool_kwargs: Any,
    ) -> None:
        # urllib3 must not retry on its own; read=False re-raises read errors to our loop.
        super().__init__(max_retries=Retry(0, read=False), **pool_kwargs)
        self.retry = retry or DEFAULT_RETRY_POLICY
        self._breaker_policy = None if breaker is False else (breaker or BreakerPolicy())
        self.hosts = HostState(self._breaker_policy, self.retry, clock=clock)
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self.transport = transport

    def reset_after_fork(self) -> None:
        """In a forked child: new connection pools and host state, nothing shared.

        The parent's pooled sockets must never be used by two processes, and a lock held by
        another thread at fork time would never be released in the child. The old pools are
        dropped, not closed: their sockets still belong to the parent.
        """
        # HTTPAdapter keeps its pool settings in these (untyped) attributes.
        pool: dict[str, Any] = vars(self)
        self.init_poolmanager(
            pool["_pool_connections"], pool["_pool_maxsize"], block=pool["_pool_block"]
        )
        self.proxy_manager = {}
        self.hosts = HostState(self._breaker_policy, self.retry, clock=self._clock)

    def send_attempt(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """One attempt, no retries: through the injected transport, else urllib3's pool."""
        if self.transport is None:
            return HTTPAdapter.send(self, request, **kwargs)
        return self.transport.send(request, **kwargs)

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: TimeoutArg = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` with retries; returns the last response or raises the last error.

        A response whose status stays retryable after the last attempt is returned (requests
        semantics); failures without a response raise :class:`~chatsdk.TransportError` with
        ``.attempts`` and ``.idempotency_key`` set. While the host's circuit is open, or when
        it opens with attempts left, :class:`~chatsdk.CircuitBreakerOpenError` is raised
        instead of waiting through the remaining attempts.
        """
        options = {"stream": stream, "verify": verify, "cert": cert, "proxies": proxies}
        op = _Operation(self, request, timeout, options)
        try:
            response = op.run()
        except ChatSDKError as exc:
            final = op.final(exc)
            if final is exc:
                raise
            raise final from exc
        if op.open_error is not None:
            response.close()
            raise op.final(op.open_error) from error_for_response(response)
        response._chatsdk_attempts = op.attempts  # type: ignore[attr-defined]
        return response


class _Operation:
    """The state of one logical call: its attempts, key, deadline and next wait."""

    def __init__(
        self,
        adapter: ResilientAdapter,
        request: requests.PreparedRequest,
        timeout: TimeoutArg,
        options: dict[str, Any],
    ) -> None:
        self.adapter = adapter
        #: ``HTTPAdapter.send`` arguments other than the request and timeout.
        self.options = options
        self.policy = adapter.retry
        self.request = request
        self.method = (request.method or "GET").upper()
        self.key: str | None = request.headers.get("Idempotency-Key")
        self.safe = self.method in IDEMPOTENT_METHODS or self.key is not None
        self.timeout = timeout
        self.started = adapter._clock()
        self.attempts = 0
        self.delay = 0.0
        self.reason = ""
        host = adapter.hosts.get(f"rest:{host_of(request.url or '')}")
        self.breaker: CircuitBreaker | None = host.breaker
        self.budget: RetryBudget | None = host.budget
        #: set when the loop stopped because the circuit opened with attempts left.
        self.open_error: CircuitBreakerOpenError | None = None
        #: the first attempt's outcome, handed to the retry loop as its attempt 1.
        self._first: requests.Response | ChatSDKError | None = None

    def run(self) -> requests.Response:
        """Make attempt 1, and enter the tenacity retry loop only if it did not succeed.

        Every retry goes through the one tenacity loop; a first attempt whose status is not
        retryable ends the operation without building it (the success path is every call's
        path, and the loop's bookkeeping would be most of the SDK's overhead there).
        """
        try:
            response = self.attempt()
        except ChatSDKError as exc:
            self._first = exc
        else:
            status = response.status_code
            if status not in self.policy.retry_statuses and status != 409:
                return response
            self._first = response
        retrying = tenacity.Retrying(
            retry=self.decide,
            wait=self.wait,
            sleep=self.adapter._sleep,
            before_sleep=self.before_sleep,
        )
        result: requests.Response = retrying(self._next)
        return result

    def _next(self) -> requests.Response:
        """The loop's attempt: the first outcome once, then real attempts."""
        first, self._first = self._first, None
        if first is None:
            return self.attempt()
        if isinstance(first, ChatSDKError):
            raise first
        return first

    def final(self, error: ChatSDKError) -> ChatSDKError:
        """Stamp the operation's context on the error it ends with."""
        chosen = self.open_error or error
        chosen.attempts = self.attempts
        chosen.idempotency_key = self.key
        return chosen

    def attempt(self) -> requests.Response:
        permit = None if self.breaker is None else self.breaker.acquire()
        self.attempts += 1
        try:
            response = self.adapter.send_attempt(
                self.request, timeout=self._attempt_timeout(), **self.options
            )
            if not self.options["stream"]:
                # Read here, not in Session.send: a reset mid-body must be a retryable failure.
                _ = response.content
        except _TRANSPORT_ERRORS as exc:
            if permit is not None:
                permit.failure()
            raise map_transport_error(exc, self.request) from exc
        except BaseException:
            if permit is not None:
                permit.release()
            raise
        self._record(permit, response)
        return response

    def _record(self, permit: Permit | None, response: requests.Response) -> None:
        status = response.status_code
        if status in _HOST_FAILURES:
            if permit is not None:
                hold = parse_retry_after(response.headers.get("Retry-After"))
                permit.failure(hold_open_for=hold if status == 503 else None)
            return
        if status == 429:
            if permit is not None:
                permit.release()
            return
        if permit is not None:
            permit.success()
        if self.budget is not None:
            self.budget.on_success()

    def _attempt_timeout(self) -> TimeoutArg:
        deadline = self.policy.deadline
        if deadline is None:
            return self.timeout
        left = max(0.001, deadline - (self.adapter._clock() - self.started))
        if isinstance(self.timeout, tuple):
            connect, read = self.timeout
            return (
                left if connect is None else min(connect, left),
                left if read is None else min(read, left),
            )
        return left if self.timeout is None else min(self.timeout, left)

    def decide(self, state: tenacity.RetryCallState) -> bool:
        """Tenacity's retry predicate: classify the outcome and choose the next wait."""
        assert state.outcome is not None
        n = state.attempt_number
        retry_after: float | None = None
        if state.outcome.failed:
            error = state.outcome.exception()
            assert error is not None
            if not should_retry(error, n, self.policy):
                return False
            if isinstance(error, TransportError) and error.request_sent and not self.safe:
                log.debug(
                    "not retrying %s %s: it may have been processed", self.method, self._path()
                )
                return False
            self.reason = type(error).__name__
        else:
            response: requests.Response = state.outcome.result()
            status = response.status_code
            code = _error_code(response) if status == 409 else None
            if n >= self.policy.max_attempts or not is_retryable_status(status, code, self.policy):
                return False
            if not self.safe and status not in _NOT_PROCESSED:
                return False
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if (
                self.policy.respect_retry_after
                and retry_after is not None
                and retry_after > self.policy.max_retry_after
            ):
                log.info(
                    "not retrying %s %s: Retry-After %.1fs is above max_retry_after",
                    self.method,
                    self._path(),
                    retry_after,
                )
                return False
            self.reason = f"HTTP {status}"
        delay = backoff_for(
            state.outcome.exception(), n - 1, self.policy, self.adapter._rand, retry_after
        )
        deadline = self.policy.deadline
        if deadline is not None and self.adapter._clock() - self.started + delay >= deadline:
            log.info("not retrying %s %s: the deadline would pass", self.method, self._path())
            return False
        if self.breaker is not None and self.breaker.state is CircuitState.OPEN:
            # Sleeping through the remaining attempts would only delay the same answer.
            self.open_error = CircuitBreakerOpenError(self.breaker.name, self.breaker.retry_after)
            return False
        if self.budget is not None and not self.budget.try_spend():
            log.info("not retrying %s %s: the retry budget is spent", self.method, self._path())
            return False
        self.delay = delay
        return True

    def wait(self, _state: tenacity.RetryCallState) -> float:
        return self.delay

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None
        if not state.outcome.failed:
            state.outcome.result().close()
        log.info(
            "retrying %s %s: attempt %d failed (%s); next attempt in %.3fs",
            self.method,
            self._path(),
            state.attempt_number,
            self.reason,
            self.delay,
        )

    def _path(self) -> str:
        return urlsplit(self.request.url or "").path


def _error_code(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
