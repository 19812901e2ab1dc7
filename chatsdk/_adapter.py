"""ResilientAdapter: one tenacity retry loop around ``HTTPAdapter.send``.

Each attempt reads the body inside the loop (when not streaming), so a reset while reading is
an attempt failure like any other. urllib3's own retries stay off: this loop is the only one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import tenacity
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from chatsdk._config import DEFAULT_RETRY_POLICY, RetryPolicy
from chatsdk._exceptions import ChatSDKError, TransportError, map_transport_error
from chatsdk._retry import (
    IDEMPOTENT_METHODS,
    backoff_for,
    is_retryable_status,
    parse_retry_after,
    should_retry,
)

__all__ = ["ResilientAdapter", "attempts_of"]

log = logging.getLogger("chatsdk")

#: Statuses that mean "refused before processing": safe to resend even without a key.
_NOT_PROCESSED = frozenset({429, 503})

_TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)

TimeoutArg = float | tuple[float | None, float | None] | None


def attempts_of(response: requests.Response) -> int:
    """HTTP sends the adapter made to obtain ``response`` (1 when it did not count)."""
    return int(getattr(response, "_chatsdk_attempts", 1))


class ResilientAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` that retries under a :class:`RetryPolicy`.

    Args:
        retry: the retry policy (default :data:`chatsdk.DEFAULT_RETRY_POLICY`).
        sleep: called with the seconds to wait between attempts (inject for tests).
        clock: a monotonic clock in seconds, for the deadline (inject for tests).
        rand: a uniform [0, 1) source for jitter (inject for tests).
        **pool_kwargs: ``pool_connections``, ``pool_maxsize``, ``pool_block`` as for requests.
    """

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        **pool_kwargs: Any,
    ) -> None:
        # urllib3 must not retry on its own; read=False re-raises read errors to our loop.
        super().__init__(max_retries=Retry(0, read=False), **pool_kwargs)
        self.retry = retry or DEFAULT_RETRY_POLICY
        self._sleep = sleep
        self._clock = clock
        self._rand = rand

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
        ``.attempts`` and ``.idempotency_key`` set.
        """
        op = _Operation(self, request, timeout)
        retrying = tenacity.Retrying(
            retry=op.decide,
            wait=op.wait,
            sleep=self._sleep,
            before_sleep=op.before_sleep,
        )
        try:
            response: requests.Response = retrying(op.attempt, stream, verify, cert, proxies)
        except ChatSDKError as exc:
            exc.attempts = op.attempts
            exc.idempotency_key = op.key
            raise
        response._chatsdk_attempts = op.attempts  # type: ignore[attr-defined]
        return response


class _Operation:
    """The state of one logical call: its attempts, key, deadline and next wait."""

    def __init__(
        self, adapter: ResilientAdapter, request: requests.PreparedRequest, timeout: TimeoutArg
    ) -> None:
        self.adapter = adapter
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

    def attempt(
        self,
        stream: bool,
        verify: bool | str,
        cert: str | tuple[str, str] | None,
        proxies: Mapping[str, str] | None,
    ) -> requests.Response:
        self.attempts += 1
        try:
            response = HTTPAdapter.send(
                self.adapter,
                self.request,
                stream=stream,
                timeout=self._attempt_timeout(),  # type: ignore[arg-type]
                verify=verify,
                cert=cert,
                proxies=proxies,
            )
            if not stream:
                # Read here, not in Session.send: a reset mid-body must be a retryable failure.
                _ = response.content
        except _TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, self.request) from exc
        return response

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
