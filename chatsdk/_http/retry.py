"""How chatsdk retries: the policy, the one classification table, backoff and ``Retry-After``.

Every decision about an outcome of an attempt (a response, or an error raised instead of
one) is made by :func:`classify`, which reads one table:

============  ===================================  =====  ============  =========  ==========
outcome       error the caller gets                retry  host failure  permanent  processed
============  ===================================  =====  ============  =========  ==========
2xx           (none)                               no     no            no         yes
400           BadRequestError                      no     no            yes        yes
401 / 403     UnauthorizedError / ForbiddenError   no     no            no [1]_    yes
404           NotFoundError                        no     no            yes        yes
408           RequestTimeoutError                  yes    yes           no         yes
409           ConflictError                        no     no            yes        yes
409 in use    IdempotencyKeyInUseError             yes    no            no         yes
413 / 422     PayloadTooLarge / Unprocessable      no     no            yes        yes
429           RateLimitedError                     yes    neutral       no         no
500 502 504   ServerError                          yes    yes           no         yes
503           ServerError                          yes    yes [2]_      no         no
other 5xx     ServerError                          no     no            yes        yes
other 4xx     APIError                             no     no            yes        yes
connect/read  ConnectError / TransportTimeoutError yes    yes           no         if sent
TLS verify    TLSCertificateError                  no     neutral       no         no
local config  ConfigurationError                   no     neutral       no         no
circuit open  CircuitBreakerOpenError              no     neutral       no         no
other errors  (the error itself)                   no     neutral       yes        yes
============  ===================================  =====  ============  =========  ==========

``retry`` is the default: a :class:`RetryPolicy`'s ``retry_statuses`` replaces the statuses
column. An outcome whose request may have been processed is retried only when the request is
idempotent by method or carries an ``Idempotency-Key``. ``permanent`` is the outbox's verdict:
the entry is dead-lettered instead of rescheduled. ``neutral`` outcomes say nothing about the
host (the breaker's permit is released).

.. [1] the outbox stops draining until the key is fixed, instead of failing each entry.
.. [2] held open for the response's ``Retry-After``, capped at
   ``max(recovery_timeout, max_retry_after)``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import attrs
import requests
import tenacity

from chatsdk._errors import (
    APIError,
    BadRequestError,
    ChatSDKError,
    CircuitBreakerOpenError,
    ConfigurationError,
    ConflictError,
    ForbiddenError,
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InvalidResponseError,
    NotFoundError,
    OutboxError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TLSCertificateError,
    TransportError,
    UnauthorizedError,
    UnprocessableEntityError,
    decode_json,
    error_fields,
)
from chatsdk._validation import no_limit_if_infinite, non_negative, optional_positive, statuses

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "IDEMPOTENT_METHODS",
    "Jitter",
    "RetryPolicy",
    "Verdict",
    "calculate_backoff",
    "classify",
    "error_class",
    "error_for_response",
    "parse_retry_after",
    "retry_call",
    "should_retry",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

Jitter = Literal["full", "equal", "additive", "none"]

_JITTERS = ("full", "equal", "additive", "none")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How one operation is retried.

    Attributes:
        max_attempts: HTTP sends per operation, the first included (>= 1).
        base_delay: backoff before the first retry, in seconds.
        max_delay: cap on one backoff, in seconds.
        jitter: ``"full"`` U(0, d); ``"equal"`` d/2 + U(0, d/2); ``"additive"`` d + U(0, d/2)
            (the original design's); ``"none"`` d.
        retry_statuses: statuses worth another attempt.
        respect_retry_after: treat ``Retry-After`` as the minimum wait.
        max_retry_after: a ``Retry-After`` above this stops retrying (the error carries it).
        deadline: seconds for the whole operation, waits included (default 20 s, inside
            gunicorn's 30 s worker timeout); ``None`` (or infinity) for no deadline.
        budget_capacity: size of the per-host retry budget (tokens; one retry costs one);
            ``None`` turns the budget off.
        budget_refund: tokens a successful attempt puts back into the budget.
    """

    max_attempts: int = attrs.field(default=5)
    base_delay: float = attrs.field(default=0.1, validator=non_negative)
    max_delay: float = attrs.field(default=10.0, validator=non_negative)
    jitter: Jitter = attrs.field(default="full")
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({408, 429, 500, 502, 503, 504}), validator=statuses
    )
    respect_retry_after: bool = True
    max_retry_after: float = attrs.field(default=60.0, validator=non_negative)
    deadline: float | None = attrs.field(
        default=20.0, converter=no_limit_if_infinite, validator=optional_positive
    )
    budget_capacity: float | None = attrs.field(default=20.0, validator=optional_positive)
    budget_refund: float = attrs.field(default=1.0, validator=non_negative)

    @max_attempts.validator
    def _check_attempts(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if value not in _JITTERS:
            raise ValueError(f"jitter must be one of {', '.join(_JITTERS)}; got {value!r}")


DEFAULT_RETRY_POLICY = RetryPolicy()


#: Methods API.md defines as idempotent by meaning: safe to resend after a lost response.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})

#: The 409 code that means "the first request with this key is still running": retry it.
KEY_IN_USE = "idempotency_key_in_use"

BreakerOutcome = Literal["success", "failure", "neutral"]


@attrs.frozen
class Verdict:
    """What one outcome of an attempt means, as read from the classification table.

    Attributes:
        error: the exception class the caller gets (None for a success).
        retry: another attempt is worth making (attempts, deadline and budget permitting);
            already False for a request that may have been processed and is not safe to resend.
        breaker: what the outcome tells the host's circuit breaker.
        permanent: resending can never succeed: the outbox dead-letters the entry.
        processed: the server may have acted on the request.
        hold_open: a failure that opens the circuit keeps it open for the response's
            ``Retry-After`` (capped; see the table's notes).
    """

    error: type[BaseException] | None
    retry: bool
    breaker: BreakerOutcome
    permanent: bool
    processed: bool = True
    hold_open: bool = False


def _row(
    error: type[BaseException] | None,
    *,
    retry: bool = False,
    breaker: BreakerOutcome = "success",
    permanent: bool = False,
    processed: bool = True,
    hold_open: bool = False,
) -> Verdict:
    return Verdict(error, retry, breaker, permanent, processed, hold_open)


_SUCCESS = _row(None)
#: status -> verdict; ``retry`` here is the default, replaced by ``RetryPolicy.retry_statuses``.
_STATUSES: dict[int, Verdict] = {
    400: _row(BadRequestError, permanent=True),
    401: _row(UnauthorizedError),
    403: _row(ForbiddenError),
    404: _row(NotFoundError, permanent=True),
    408: _row(RequestTimeoutError, retry=True, breaker="failure"),
    409: _row(ConflictError, permanent=True),
    413: _row(PayloadTooLargeError, permanent=True),
    422: _row(UnprocessableEntityError, permanent=True),
    429: _row(RateLimitedError, retry=True, breaker="neutral", processed=False),
    500: _row(ServerError, retry=True, breaker="failure"),
    502: _row(ServerError, retry=True, breaker="failure"),
    503: _row(ServerError, retry=True, breaker="failure", processed=False, hold_open=True),
    504: _row(ServerError, retry=True, breaker="failure"),
}
#: (status, error code) -> verdict, consulted before the status alone.
_CODES: dict[tuple[int, str], Verdict] = {
    # The first request with this key is still running: this one was not processed.
    (409, KEY_IN_USE): _row(IdempotencyKeyInUseError, retry=True, processed=False),
    (422, "idempotency_key_reused"): _row(IdempotencyKeyReusedError, permanent=True),
}
_OTHER_5XX = _row(ServerError, permanent=True)
_OTHER_4XX = _row(APIError, permanent=True)
#: error class -> verdict for errors raised instead of a response (most specific first).
_ERRORS: tuple[tuple[type[BaseException], Verdict], ...] = (
    (CircuitBreakerOpenError, _row(CircuitBreakerOpenError, breaker="neutral", processed=False)),
    (TLSCertificateError, _row(TLSCertificateError, breaker="neutral", processed=False)),
    (TransportError, _row(TransportError, retry=True, breaker="failure")),
    (ConfigurationError, _row(ConfigurationError, breaker="neutral", processed=False)),
    # A 2xx whose body is off the contract: resent under the same key, the server replays.
    (InvalidResponseError, _row(InvalidResponseError)),
    # The outbox's own failures say nothing about the message.
    (OutboxError, _row(OutboxError, breaker="neutral")),
)
_FOREIGN = _row(None, breaker="neutral", permanent=True)


def error_class(status: int, code: str | None = None) -> type[APIError]:
    """The :class:`~chatsdk.APIError` subclass a response with this status and code raises."""
    verdict = _CODES.get((status, code or "")) or _status_row(status)
    assert verdict.error is not None and issubclass(verdict.error, APIError)
    return verdict.error


def _status_row(status: int) -> Verdict:
    if status < 400:
        return _SUCCESS
    return _STATUSES.get(status) or (_OTHER_5XX if status >= 500 else _OTHER_4XX)


def classify(
    outcome: requests.Response | BaseException,
    policy: RetryPolicy | None = None,
    *,
    method: str | None = None,
    idempotency_key: str | None = None,
) -> Verdict:
    """Classify one outcome of an attempt: the only place such decisions are made.

    Args:
        outcome: the response, or the exception raised instead of one (an :class:`APIError`
            is classified by its status and code).
        policy: whose ``retry_statuses`` decide which statuses are retried (default policy).
        method: the request's method; read from the outcome's request when not given.
        idempotency_key: the request's key; read from the outcome's request when not given.

    Returns:
        The verdict. ``retry`` is False for an outcome that may have been processed unless
        the request is idempotent by method or keyed; a request that is not known at all
        counts as not safe to resend.
    """
    policy = policy or DEFAULT_RETRY_POLICY
    status: int | None = None
    request: Any
    if isinstance(outcome, requests.Response):
        status, code, request = outcome.status_code, _code_of(outcome), outcome.request
    elif isinstance(outcome, APIError) and not isinstance(outcome, InvalidResponseError):
        status, code, request = outcome.status, outcome.code, outcome.request
    else:
        request = getattr(outcome, "request", None)
    if status is None:
        verdict = _error_row(outcome)  # type: ignore[arg-type]
    else:
        verdict = _CODES.get((status, code or "")) or _status_row(status)
        if verdict.error is not None and verdict.error is not IdempotencyKeyInUseError:
            # The policy's statuses replace the table's retry column; what it retries is not
            # permanent.
            retried = status in policy.retry_statuses
            verdict = attrs.evolve(
                verdict, retry=retried, permanent=verdict.permanent and not retried
            )
    if (
        verdict.retry
        and verdict.processed
        and not _safe_to_resend(request, method, idempotency_key)
    ):
        verdict = attrs.evolve(verdict, retry=False)
    return verdict


def _error_row(error: BaseException) -> Verdict:
    for cls, verdict in _ERRORS:
        if isinstance(error, cls):
            if isinstance(error, TransportError) and not error.request_sent:
                return attrs.evolve(verdict, processed=False)
            return verdict
    if isinstance(error, ChatSDKError):
        return _row(type(error), breaker="neutral", permanent=True)
    return _FOREIGN


def _safe_to_resend(request: Any, method: str | None, key: str | None) -> bool:
    headers = getattr(request, "headers", None) or {}
    method = method or getattr(request, "method", None)
    key = key or headers.get("Idempotency-Key")
    return key is not None or (method is not None and method.upper() in IDEMPOTENT_METHODS)


def _code_of(response: requests.Response) -> str | None:
    """The ``error.code`` of a 409/422 body (the only statuses whose code changes a verdict)."""
    if response.status_code not in (409, 422):
        return None
    try:
        body = decode_json(response)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def error_for_response(response: requests.Response) -> APIError:
    """The :class:`~chatsdk.APIError` for an error response, its class read from the table.

    The body is decoded by :func:`chatsdk._errors.error_fields` (which copes with bodies off
    the contract); ``retry_after`` is the response's ``Retry-After``, or None.
    """
    code, message, body = error_fields(response)
    cls = error_class(response.status_code, code)
    exc = cls(
        response.status_code, code, message, body=body, response=response, request=response.request
    )
    exc.retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return exc


def should_retry(
    error: BaseException,
    attempt_number: int,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    *,
    method: str | None = None,
    idempotency_key: str | None = None,
) -> bool:
    """Decide whether an operation that failed with ``error`` gets another attempt.

    Args:
        error: the exception the last attempt raised.
        attempt_number: attempts already made (1 after the first failure).
        policy: the retry policy.
        method: the request's method, when ``error`` does not carry its request.
        idempotency_key: the request's key, when ``error`` does not carry its request.

    Returns:
        False once ``attempt_number >= policy.max_attempts``; otherwise what :func:`classify`
        says: True for a retryable status (``retry_statuses``, a 409
        ``idempotency_key_in_use``) and for connection failures and timeouts, except when the
        request may have been processed and is neither idempotent nor keyed; False for every
        other error, the SDK's or not.
    """
    if attempt_number >= policy.max_attempts:
        return False
    return classify(error, policy, method=method, idempotency_key=idempotency_key).retry


def calculate_backoff(
    attempt_index: int,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    *,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt_index + 1``.

    ``d = min(max_delay, base_delay * 2**attempt_index)``, then the policy's jitter:
    ``"full"`` U(0, d), ``"equal"`` d/2 + U(0, d/2), ``"additive"`` d + U(0, d/2), ``"none"`` d.
    ``rand`` returns a float in [0, 1); inject it for deterministic tests.
    """
    if attempt_index < 0:
        raise ValueError(f"attempt_index must be >= 0, got {attempt_index}")
    # Cap the exponent so huge indexes cannot overflow a float.
    delay = min(policy.max_delay, policy.base_delay * 2.0 ** min(attempt_index, 64))
    if policy.jitter == "full":
        return delay * rand()
    if policy.jitter == "equal":
        return delay / 2 + delay / 2 * rand()
    if policy.jitter == "additive":
        return delay + delay / 2 * rand()
    return delay


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3).

    Returns seconds to wait (0.0 for a date in the past), or None when the header is absent,
    negative or garbage: such a value is ignored rather than trusted.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or seconds < 0 or math.isinf(seconds):
            return None
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    current = now or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - current).total_seconds())


def retry_after_of(error: BaseException) -> float | None:
    """The server's requested wait carried by an error, if any."""
    value = getattr(error, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


def retry_call(
    fn: Callable[[], T],
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Call ``fn()`` until it returns or :func:`should_retry` says no.

    Waits :func:`calculate_backoff` between attempts, at least the error's ``retry_after``
    when the policy respects it; a ``retry_after`` above ``max_retry_after`` stops retrying.
    Raises the last real exception (never a tenacity ``RetryError``), with ``.attempts`` set
    when it is a :class:`~chatsdk.ChatSDKError`.
    """

    def retryable(state: tenacity.RetryCallState) -> bool:
        assert state.outcome is not None
        error = state.outcome.exception()
        if error is None or not should_retry(error, state.attempt_number, policy):
            return False
        wait = retry_after_of(error)
        too_long = wait is not None and wait > policy.max_retry_after
        return not (policy.respect_retry_after and too_long)

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        error = state.outcome.exception()
        assert error is not None
        return backoff_for(error, state.attempt_number - 1, policy, rand)

    retrying = tenacity.Retrying(
        retry=retryable, wait=wait, sleep=sleep, reraise=True, before_sleep=_log_retry
    )
    try:
        return retrying(fn)
    except ChatSDKError as exc:
        exc.attempts = retrying.statistics["attempt_number"]
        raise


def backoff_for(
    error: BaseException | None,
    attempt_index: int,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
    retry_after: float | None = None,
) -> float:
    """The wait before the next attempt: the backoff, raised to the server's ``Retry-After``."""
    delay = calculate_backoff(attempt_index, policy, rand=rand)
    wait = (
        retry_after
        if retry_after is not None
        else (retry_after_of(error) if error is not None else None)
    )
    if policy.respect_retry_after and wait is not None:
        delay = max(delay, wait)
    return delay


def _log_retry(state: tenacity.RetryCallState) -> None:
    assert state.outcome is not None and state.next_action is not None
    log.info(
        "retrying call: attempt %d failed (%s); next in %.3fs",
        state.attempt_number,
        type(state.outcome.exception()).__name__,
        state.next_action.sleep,
    )
