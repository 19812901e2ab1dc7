"""ResilientAdapter: the request path, one straight retry loop around ``HTTPAdapter.send``.

For each attempt: take a breaker permit, send, read the body (when not streaming, so a reset
while reading is an attempt failure like any other), let :func:`~chatsdk._http.retry.classify`
judge the outcome, report it to the breaker; then either finish or wait and go again.
urllib3's own retries stay off: this loop is the only one.

Every attempt is bounded in time and memory, whatever the server does: the whole response
(status, headers, body) completes within what is left of the policy's ``deadline`` or,
without one, within :data:`RESPONSE_TIME_FACTOR` read timeouts (see
:mod:`chatsdk._http.connection`); its decoded body is at most ``max_response_bytes`` (see
:mod:`chatsdk._http.response`).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from chatsdk import _instrument, _testmode
from chatsdk._errors import (
    ChatSDKError,
    CircuitBreakerOpenError,
    InvalidResponseError,
    map_transport_error,
)
from chatsdk._http import connection
from chatsdk._http.response import DEFAULT_MAX_RESPONSE_BYTES, check_max_response_bytes, read_body
from chatsdk._http.retry import (
    DEFAULT_RETRY_POLICY,
    RetryPolicy,
    Verdict,
    backoff_for,
    classify,
    error_for_response,
    parse_retry_after,
)
from chatsdk._instrument import (
    AttemptFinished,
    BreakerStateChanged,
    Emitter,
    RetryScheduled,
    key_prefix,
)
from chatsdk._resilience.breaker import BreakerPolicy, CircuitBreaker, CircuitState, Permit
from chatsdk._resilience.hosts import HostState, host_of

__all__ = ["RESPONSE_TIME_FACTOR", "ResilientAdapter", "Transport", "attempts_of"]

log = logging.getLogger("chatsdk")

_TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)

TimeoutArg = float | tuple[float | None, float | None] | None
Outcome = requests.Response | ChatSDKError

_OPERATION_TOKENS = itertools.count()

#: Without a deadline, a whole response (headers and body) must complete within this many
#: read timeouts: a server dribbling a byte at a time cannot hold a call for ever.
RESPONSE_TIME_FACTOR = 3


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
        max_response_bytes: the most decoded bytes a response body may have (default
            :data:`~chatsdk.DEFAULT_MAX_RESPONSE_BYTES`, 8 MiB); a 2xx over it raises
            :class:`~chatsdk.InvalidResponseError`, an error status keeps that much.
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
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        **pool_kwargs: Any,
    ) -> None:
        self.max_response_bytes = check_max_response_bytes(max_response_bytes)
        # urllib3 must not retry on its own; read=False re-raises read errors to our loop.
        super().__init__(max_retries=Retry(0, read=False), **pool_kwargs)
        self.retry = retry or DEFAULT_RETRY_POLICY
        self._breaker_policy = None if breaker is False else (breaker or BreakerPolicy())
        self.hosts = HostState(self._breaker_policy, self.retry, clock=clock)
        #: hands this adapter's events (retries, attempts, breaker changes) to hooks.
        self.events = Emitter()
        self.hosts.add_listener(self._on_breaker_change)
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self.transport = transport

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """As requests does, with connections that bound and complete each response."""
        super().init_poolmanager(*args, **kwargs)
        connection.install(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """As requests does (HTTP and SOCKS proxies), with the same connections."""
        return connection.install(super().proxy_manager_for(proxy, **proxy_kwargs))

    def reset_after_fork(self) -> None:
        """In a forked child: new connection pools and host state (listeners are kept).

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
        self.hosts.reset_after_fork()

    def _on_breaker_change(
        self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState
    ) -> None:
        # Called after the breaker's lock is released (see CircuitBreaker._announce).
        if self.events.active:
            retry_after = breaker.retry_after if new is CircuitState.OPEN else 0.0
            event = BreakerStateChanged(
                breaker=breaker.name, old=old, new=new, retry_after=retry_after
            )
            self.events.emit(event)

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
        state = _RetryState(self, request)
        while True:
            outcome = self._attempt(state, timeout, options)
            verdict = classify(outcome, self.retry, method=state.method, idempotency_key=state.key)
            delay = self._next_delay(state, outcome, verdict)
            if delay is None:
                return state.finish(outcome)
            if state.breaker is not None and state.breaker.state is CircuitState.OPEN:
                # Sleeping through the remaining attempts would only delay the same answer.
                error = CircuitBreakerOpenError(state.breaker.name, state.breaker.retry_after)
                cause = outcome if isinstance(outcome, ChatSDKError) else None
                if isinstance(outcome, requests.Response):
                    cause = error_for_response(outcome)
                    outcome.close()
                raise state.stamp(error) from cause
            if state.budget is not None and not state.budget.try_spend():
                log.info(
                    "not retrying %s %s: the retry budget is spent",
                    *state.label,
                    extra=state.fields(),
                )
                return state.finish(outcome)
            if isinstance(outcome, requests.Response):
                outcome.close()
            log.info(
                "retrying %s %s: attempt %d failed (%s); next attempt in %.3fs",
                *state.label,
                state.attempts,
                _reason(outcome),
                delay,
                extra=state.fields(),
            )
            if self.events.active:
                method, path = state.label
                self.events.emit(
                    RetryScheduled(
                        host=state.host,
                        method=method,
                        path=path,
                        attempt=state.attempts,
                        delay=delay,
                        reason=_label(outcome),
                    )
                )
            self._sleep(delay)

    def _attempt(self, state: _RetryState, timeout: TimeoutArg, options: dict[str, Any]) -> Outcome:
        """One HTTP send under a breaker permit; the response or the mapped error."""
        try:
            permit = None if state.breaker is None else state.breaker.acquire(state.token)
        except CircuitBreakerOpenError as exc:
            return exc
        state.attempts += 1
        started = self._clock() if self.events.active else None
        tracer = _instrument.tracer
        span = None if tracer is None else tracer.attempt(state.request, state.attempts)
        attempt_timeout = state.attempt_timeout(timeout)
        limit = None if options["stream"] else state.time_limit(attempt_timeout)
        response: requests.Response | None = None
        try:
            with connection.time_limit(limit):
                response = self.send_attempt(state.request, timeout=attempt_timeout, **options)
            if not options["stream"]:
                # Read here, not in Session.send: a reset mid-body must be a retryable failure.
                read_body(response, self.max_response_bytes)
        except InvalidResponseError as exc:  # a 2xx body over max_response_bytes
            self._report(permit, classify(exc, self.retry), None, state)
            self._attempt_done(state, exc, started, span)
            return exc
        except _TRANSPORT_ERRORS as exc:
            if response is not None:
                # The body failed (reset, timeout, bad encoding): its socket must not leak.
                response.close()
            mapped = map_transport_error(exc, state.request)
            mapped.__cause__ = exc
            self._report(permit, classify(mapped, self.retry), None, state)
            self._attempt_done(state, mapped, started, span)
            return mapped
        except BaseException as exc:
            if permit is not None:
                permit.release()
            if span is not None:
                span.end(exc)
            raise
        verdict = classify(response, self.retry)
        hold = self._hold_for(state, response) if verdict.hold_open else None
        self._report(permit, verdict, hold, state)
        self._attempt_done(state, response, started, span)
        return response

    def _attempt_done(
        self,
        state: _RetryState,
        outcome: Outcome,
        started: float | None,
        span: _instrument.AttemptSpan | None,
    ) -> None:
        """The attempt's span ends and its event goes out (after the breaker heard of it)."""
        if span is not None:
            span.end(outcome)
        if started is not None:
            method, path = state.label
            self.events.emit(
                AttemptFinished(
                    host=state.host,
                    method=method,
                    path=path,
                    attempt=state.attempts,
                    outcome=_label(outcome),
                    duration=self._clock() - started,
                )
            )

    def _hold_for(self, state: _RetryState, response: requests.Response) -> float | None:
        """How long a ``Retry-After`` keeps the circuit open, capped (see retry.py's table)."""
        wait = parse_retry_after(response.headers.get("Retry-After"))
        if wait is None or state.breaker is None:
            return wait
        return min(wait, max(state.breaker.policy.recovery_timeout, self.retry.max_retry_after))

    @staticmethod
    def _report(
        permit: Permit | None, verdict: Verdict, hold: float | None, state: _RetryState
    ) -> None:
        if verdict.breaker == "success" and state.budget is not None:
            state.budget.on_success()
        if permit is None:
            return
        if verdict.breaker == "failure":
            permit.failure(hold_open_for=hold)
        elif verdict.breaker == "success":
            permit.success()
        else:
            permit.release()

    def _next_delay(self, state: _RetryState, outcome: Outcome, verdict: Verdict) -> float | None:
        """Seconds to wait before the next attempt, or None to finish with ``outcome``."""
        policy = self.retry
        if not verdict.retry or state.attempts >= policy.max_attempts:
            if verdict.error is not None and verdict.processed and not verdict.retry:
                log.debug(
                    "not retrying %s %s: %s", *state.label, _reason(outcome), extra=state.fields()
                )
            return None
        retry_after = None
        if isinstance(outcome, requests.Response):
            retry_after = parse_retry_after(outcome.headers.get("Retry-After"))
            if policy.respect_retry_after and (retry_after or 0) > policy.max_retry_after:
                log.info(
                    "not retrying %s %s: Retry-After %.1fs is above max_retry_after",
                    *state.label,
                    retry_after,
                    extra=state.fields(),
                )
                return None
        error = outcome if isinstance(outcome, BaseException) else None
        delay = backoff_for(error, state.attempts - 1, policy, self._rand, retry_after)
        if policy.deadline is not None and state.elapsed() + delay >= policy.deadline:
            log.info(
                "not retrying %s %s: the deadline would pass", *state.label, extra=state.fields()
            )
            return None
        return delay


class _RetryState:
    """The state of one operation's attempts: its key, deadline and count."""

    def __init__(self, adapter: ResilientAdapter, request: requests.PreparedRequest) -> None:
        self.adapter = adapter
        self.request = request
        self.method = (request.method or "GET").upper()
        self.key: str | None = request.headers.get("Idempotency-Key")
        self.started = adapter._clock()
        self.attempts = 0
        #: names the operation to the breaker, which counts failures per operation.
        self.token = next(_OPERATION_TOKENS)
        self.host = host_of(request.url or "")
        host = adapter.hosts.get(f"rest:{self.host}")
        self.breaker: CircuitBreaker | None = host.breaker
        self.budget = host.budget
        #: ``(method, path)`` for log lines.
        self.label = (self.method, urlsplit(request.url or "").path)

    def fields(self) -> dict[str, object]:
        """The ``extra`` fields of this operation's log records (never the key itself)."""
        method, path = self.label
        return {
            "host": self.host,
            "method": method,
            "path": path,
            "attempt": self.attempts,
            "key_prefix": key_prefix(self.key),
        }

    def elapsed(self) -> float:
        return self.adapter._clock() - self.started

    def attempt_timeout(self, timeout: TimeoutArg) -> TimeoutArg:
        """The caller's timeout, shortened to what is left of the deadline."""
        deadline = self.adapter.retry.deadline
        if deadline is None:
            return timeout
        left = max(0.001, deadline - self.elapsed())
        if isinstance(timeout, tuple):
            connect, read = timeout
            return (
                left if connect is None else min(connect, left),
                left if read is None else min(read, left),
            )
        return left if timeout is None else min(timeout, left)

    def time_limit(self, timeout: TimeoutArg) -> float | None:
        """Seconds the whole response of this attempt may take (None: no limit).

        What is left of the deadline; without one, :data:`RESPONSE_TIME_FACTOR` times the
        read timeout.
        """
        if self.adapter.retry.deadline is not None:
            return max(0.001, self.adapter.retry.deadline - self.elapsed())
        read = timeout[1] if isinstance(timeout, tuple) else timeout
        return None if read is None else RESPONSE_TIME_FACTOR * read

    def stamp(self, error: ChatSDKError) -> ChatSDKError:
        """Put the operation's context on the error it ends with."""
        error.attempts = self.attempts
        error.idempotency_key = self.key
        return error

    def finish(self, outcome: Outcome) -> requests.Response:
        """Return the final response, or raise the final error."""
        if isinstance(outcome, ChatSDKError):
            raise self.stamp(outcome)
        outcome._chatsdk_attempts = self.attempts  # type: ignore[attr-defined]
        return outcome


def _reason(outcome: Outcome) -> str:
    if isinstance(outcome, requests.Response):
        return f"HTTP {outcome.status_code}"
    return type(outcome).__name__


def _label(outcome: Outcome) -> str:
    """A short, bounded label for events and metrics: ``"503"`` or ``"ConnectError"``."""
    if isinstance(outcome, requests.Response):
        return str(outcome.status_code)
    return type(outcome).__name__
