"""Frozen policy objects: how chatsdk retries and when it gives up on a host.

Policies hold numbers only (no I/O, no mutable state); runtime objects (the adapter, the
breakers, the retry budget) read them. Make variants with :func:`attrs.evolve`.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["DEFAULT_RETRY_POLICY", "BreakerPolicy", "Jitter", "RetryPolicy"]

Jitter = Literal["full", "equal", "additive", "none"]

_JITTERS = ("full", "equal", "additive", "none")


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _optional_positive(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 or None, got {value!r}")


def _statuses(_inst: object, attribute: attrs.Attribute[frozenset[int]], value: object) -> None:
    if not isinstance(value, frozenset) or not all(
        isinstance(s, int) and 100 <= s <= 599 for s in value
    ):
        raise ValueError(f"{attribute.name} must be a frozenset of HTTP status codes")


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
    base_delay: float = attrs.field(default=0.1, validator=_non_negative)
    max_delay: float = attrs.field(default=10.0, validator=_non_negative)
    jitter: Jitter = attrs.field(default="full")
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({408, 429, 500, 502, 503, 504}), validator=_statuses
    )
    respect_retry_after: bool = True
    max_retry_after: float = attrs.field(default=60.0, validator=_non_negative)
    deadline: float | None = attrs.field(default=None, validator=_optional_positive)
    budget_capacity: float | None = attrs.field(default=20.0, validator=_optional_positive)
    budget_refund: float = attrs.field(default=1.0, validator=_non_negative)

    @max_attempts.validator
    def _check_attempts(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if value not in _JITTERS:
            raise ValueError(f"jitter must be one of {', '.join(_JITTERS)}; got {value!r}")


DEFAULT_RETRY_POLICY = RetryPolicy()


@attrs.frozen(kw_only=True)
class BreakerPolicy:
    """When a host's circuit opens and how it recovers (see :class:`chatsdk.CircuitBreaker`).

    Attributes:
        failure_threshold: failures in the window needed to open.
        failure_rate: share of failures among the window's outcomes needed to open.
        window: seconds an outcome stays in the window.
        window_size: at most this many recent outcomes are considered.
        recovery_timeout: seconds OPEN before probes are let through.
        success_threshold: consecutive probe successes that close the circuit.
        half_open_max_calls: probes allowed at once while HALF_OPEN.
    """

    failure_threshold: int = attrs.field(default=5)
    failure_rate: float = attrs.field(default=0.9)
    window: float = attrs.field(default=120.0, validator=_positive)
    window_size: int = attrs.field(default=20)
    recovery_timeout: float = attrs.field(default=60.0, validator=_non_negative)
    success_threshold: int = attrs.field(default=2)
    half_open_max_calls: int = attrs.field(default=1)

    @failure_threshold.validator
    @window_size.validator
    @success_threshold.validator
    @half_open_max_calls.validator
    def _check_count(self, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")

    @failure_rate.validator
    def _check_rate(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.failure_threshold > self.window_size:
            raise ValueError(
                f"failure_threshold ({self.failure_threshold}) cannot exceed "
                f"window_size ({self.window_size})"
            )
