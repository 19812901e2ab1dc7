"""Retry classification, backoff, ``Retry-After`` parsing, and RetryPolicy -> tenacity pieces.

The functions here have exact meanings that the transport, the outbox and callers share:
:func:`should_retry` classifies, :func:`calculate_backoff` spaces attempts out, and
:func:`retry_call` runs a plain callable under a policy with tenacity.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import attrs
import tenacity

from chatsdk._errors import APIError, ChatSDKError, TransportError
from chatsdk._validation import non_negative, optional_positive, statuses

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "Jitter",
    "RetryPolicy",
    "IDEMPOTENT_METHODS",
    "calculate_backoff",
    "is_retryable_status",
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
        deadline: seconds for the whole operation, waits included; ``None`` for no deadline.
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
    deadline: float | None = attrs.field(default=None, validator=optional_positive)
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


def is_retryable_status(status: int, code: str | None, policy: RetryPolicy) -> bool:
    """True when a response with this status (and error code) is worth another attempt."""
    return status in policy.retry_statuses or (status == 409 and code == KEY_IN_USE)


def should_retry(
    error: BaseException, attempt_number: int, policy: RetryPolicy = DEFAULT_RETRY_POLICY
) -> bool:
    """Decide whether an operation that failed with ``error`` gets another attempt.

    Args:
        error: the exception the last attempt raised.
        attempt_number: attempts already made (1 after the first failure).
        policy: the retry policy.

    Returns:
        False once ``attempt_number >= policy.max_attempts``; otherwise True for
        :class:`~chatsdk.APIError` whose status is in ``retry_statuses`` (or a 409
        ``idempotency_key_in_use``) and for every :class:`~chatsdk.TransportError`; False
        for every other error, the SDK's or not.
    """
    if attempt_number >= policy.max_attempts:
        return False
    if isinstance(error, TransportError):
        return True
    if isinstance(error, APIError):
        return is_retryable_status(error.status, error.code, policy)
    return False


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
