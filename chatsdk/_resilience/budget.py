"""Retry budget: a token bucket that stops retry storms when a host fails for everyone.

The idea of gRPC's retry throttling and the AWS SDKs' retry quota: every retry spends one
token, every successful attempt puts ``refund`` back (never above ``capacity``). While the
host is healthy the bucket stays full and retries go out; when most attempts fail, the bucket
drains and only first attempts are sent, so a total outage costs little more than one request
per operation instead of ``max_attempts``.
"""

from __future__ import annotations

import math
import threading

__all__ = ["RetryBudget"]


class RetryBudget:
    """A thread-safe token bucket for retries, shared by every thread that talks to one host.

    Args:
        capacity: tokens the bucket holds; it starts full. One retry costs one token.
        refund: tokens a successful attempt puts back (capped at ``capacity``).

    Raises:
        ValueError: ``capacity`` is not a finite number > 0, or ``refund`` is not a finite
            number >= 0.

    Example:
        >>> budget = RetryBudget(capacity=2.0, refund=0.5)
        >>> budget.try_spend(), budget.try_spend(), budget.try_spend()
        (True, True, False)
        >>> budget.on_success(); budget.on_success(); budget.try_spend()
        True
    """

    __slots__ = ("_capacity", "_lock", "_refund", "_tokens")

    def __init__(self, capacity: float, refund: float) -> None:
        if isinstance(capacity, bool) or not (
            isinstance(capacity, (int, float)) and math.isfinite(capacity) and capacity > 0
        ):
            raise ValueError(f"capacity must be a finite number > 0, got {capacity!r}")
        if isinstance(refund, bool) or not (
            isinstance(refund, (int, float)) and math.isfinite(refund) and refund >= 0
        ):
            raise ValueError(f"refund must be a finite number >= 0, got {refund!r}")
        self._capacity = float(capacity)
        self._refund = float(refund)
        self._tokens = float(capacity)
        self._lock = threading.Lock()

    @property
    def capacity(self) -> float:
        """Tokens the bucket holds when full."""
        return self._capacity

    @property
    def refund(self) -> float:
        """Tokens one successful attempt puts back."""
        return self._refund

    @property
    def tokens(self) -> float:
        """Tokens left now."""
        with self._lock:
            return self._tokens

    def try_spend(self) -> bool:
        """Take one token for a retry.

        Returns:
            ``True`` when the retry may go out; ``False`` (nothing taken) when fewer than one
            token is left.
        """
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def on_success(self) -> None:
        """Put ``refund`` tokens back after a successful attempt (capped at ``capacity``)."""
        with self._lock:
            self._tokens = min(self._capacity, self._tokens + self._refund)

    def __repr__(self) -> str:
        return f"<RetryBudget {self.tokens:.2f}/{self._capacity:g} refund={self._refund:g}>"
