"""Per-host circuit breaker: fail fast while a host is known bad, probe it to see it recover.

States::

    CLOSED --(enough failures in the window)--> OPEN --(recovery_timeout)--> HALF_OPEN
    HALF_OPEN --(success_threshold successes in a row)--> CLOSED
    HALF_OPEN --(any failure)--> OPEN (timer restarted)

CLOSED keeps the outcomes of the last ``window`` seconds (at most the last ``window_size``)
and opens when at least ``failure_threshold`` of them are failures, failures make up at
least ``failure_rate`` of them, *and* the failures come from at least ``failed_operations``
different operations (the attempts of one call are one operation: one call whose retries all
fail is a blip, not an outage). With the defaults, one ``send_message`` whose five attempts
fail leaves a quiet host's circuit closed and a second failing call opens it; a busy host that
goes down opens within 18 failures; a host answering 70% of calls on a terrible network stays
closed so that its callers' retries still get through.

Each attempt takes a :class:`Permit` and reports one outcome on it. Every state change bumps
a generation counter; an outcome reported on a permit from an older generation is ignored, so
a slow call that started before the circuit reopened cannot close it again.

One lock guards the state. It is never held while the protected call runs, nor while
listeners run (they are called after the lock is released, in the order of the changes).
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import attrs

from chatsdk._errors import CircuitBreakerOpenError
from chatsdk._validation import non_negative, positive

__all__ = [
    "BreakerPolicy",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitState",
    "Permit",
]

log = logging.getLogger("chatsdk.breaker")

R = TypeVar("R")

Clock = Callable[[], float]
Listener = Callable[["CircuitBreaker", "CircuitState", "CircuitState"], None]
_Change = tuple["CircuitState", "CircuitState"]


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
        failed_operations: different operations the window's failures must come from.
    """

    failure_threshold: int = attrs.field(default=5)
    failure_rate: float = attrs.field(default=0.9)
    window: float = attrs.field(default=120.0, validator=positive)
    window_size: int = attrs.field(default=20)
    recovery_timeout: float = attrs.field(default=60.0, validator=non_negative)
    success_threshold: int = attrs.field(default=2)
    half_open_max_calls: int = attrs.field(default=1)
    failed_operations: int = attrs.field(default=2)

    @failure_threshold.validator
    @failed_operations.validator
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


class CircuitState(enum.Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen(kw_only=True)
class BreakerSnapshot:
    """A consistent view of a breaker at one instant.

    Attributes:
        state: the state at that instant.
        failure_count: CLOSED: failures in the window; OPEN: failures in the window when it
            opened (0 after :meth:`CircuitBreaker.force_open`, 1 after a failed probe);
            HALF_OPEN: 0.
        success_count: CLOSED: successes in the window; HALF_OPEN: consecutive probe
            successes so far; OPEN: 0.
        retry_after: seconds until a probe is allowed (0.0 unless OPEN).
    """

    state: CircuitState
    failure_count: int
    success_count: int
    retry_after: float


class Permit:
    """Leave to make one attempt through a :class:`CircuitBreaker`; report its outcome here.

    Only the first of :meth:`success`, :meth:`failure` and :meth:`release` counts; later
    calls do nothing, so ``release()`` in a ``finally`` block is always safe.
    """

    __slots__ = ("_breaker", "_done", "generation", "operation", "probe")

    def __init__(
        self, breaker: CircuitBreaker, generation: int, *, probe: bool, operation: Hashable
    ) -> None:
        self._breaker = breaker
        self._done = False
        #: the operation the attempt belongs to (failures are counted per operation).
        self.operation = operation
        #: the breaker's generation when the permit was taken.
        self.generation = generation
        #: whether the permit holds one of HALF_OPEN's probe slots.
        self.probe = probe

    def success(self) -> None:
        """Record that the host answered."""
        self._breaker._settle(self, _SUCCESS, None)

    def failure(self, *, hold_open_for: float | None = None) -> None:
        """Record that the attempt failed because of the host.

        Args:
            hold_open_for: when this failure opens (or reopens) the circuit, keep it OPEN at
                least this many seconds (a ``Retry-After`` longer than ``recovery_timeout``).

        Raises:
            ValueError: ``hold_open_for`` is negative or not finite.
        """
        if hold_open_for is not None and not (math.isfinite(hold_open_for) and hold_open_for >= 0):
            raise ValueError(f"hold_open_for must be a finite number >= 0, got {hold_open_for!r}")
        self._breaker._settle(self, _FAILURE, hold_open_for)

    def release(self) -> None:
        """Give the permit back without an outcome (e.g. a 429); frees a probe slot."""
        self._breaker._settle(self, _NEUTRAL, None)

    def __repr__(self) -> str:
        return (
            f"<Permit {self._breaker.name!r} generation={self.generation} "
            f"probe={self.probe} done={self._done}>"
        )


_SUCCESS = "success"
_FAILURE = "failure"
_NEUTRAL = "neutral"


def _every_exception(_exc: BaseException) -> bool:
    return True


class CircuitBreaker:
    """A thread-safe circuit breaker for one host (or any other dependency).

    Args:
        name: shown in errors and logs (``rest:https://chat.example:443``).
        failure_threshold: failures in the window needed to open.
        failure_rate: share of failures among the window's outcomes needed to open.
        window: seconds an outcome stays in the window.
        window_size: at most this many recent outcomes are kept.
        recovery_timeout: seconds OPEN before probes are let through.
        success_threshold: consecutive probe successes that close the circuit.
        half_open_max_calls: probes allowed at once while HALF_OPEN.
        failed_operations: different operations the window's failures must come from.
        is_failure: decides whether an exception raised inside :meth:`call` is a failure
            (default: every exception is); one that is not counts as nothing.
        clock: monotonic clock in seconds (injectable for tests).

    Raises:
        ValueError: an argument is out of range (the rules of
            :class:`chatsdk.BreakerPolicy`), e.g. ``failure_threshold > window_size``.
        TypeError: ``name`` is not a string.

    Example:
        >>> breaker = CircuitBreaker("rest:https://chat.example:443")
        >>> breaker.call(lambda: 42)
        42
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        failure_rate: float = 0.9,
        window: float = 120.0,
        window_size: int = 20,
        recovery_timeout: float = 60.0,
        success_threshold: int = 2,
        half_open_max_calls: int = 1,
        failed_operations: int = 2,
        is_failure: Callable[[BaseException], bool] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        # BreakerPolicy holds the validation rules; building one validates every number.
        self._policy = BreakerPolicy(
            failure_threshold=failure_threshold,
            failure_rate=failure_rate,
            window=window,
            window_size=window_size,
            recovery_timeout=recovery_timeout,
            success_threshold=success_threshold,
            half_open_max_calls=half_open_max_calls,
            failed_operations=failed_operations,
        )
        self.name = name
        self._is_failure = is_failure if is_failure is not None else _every_exception
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._state = CircuitState.CLOSED
        self._generation = 0
        # (timestamp, failed, operation) of recent CLOSED outcomes; bounded by window_size.
        self._outcomes: collections.deque[tuple[float, bool, Hashable]] = collections.deque(
            maxlen=self._policy.window_size
        )
        self._open_until = 0.0
        self._open_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0

    @classmethod
    def from_policy(
        cls,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock = time.monotonic,
        is_failure: Callable[[BaseException], bool] | None = None,
    ) -> CircuitBreaker:
        """Build a breaker from a :class:`chatsdk.BreakerPolicy`."""
        return cls(name, **attrs.asdict(policy), is_failure=is_failure, clock=clock)

    @property
    def policy(self) -> BreakerPolicy:
        """The numbers this breaker runs with."""
        return self._policy

    @property
    def state(self) -> CircuitState:
        """The current state (OPEN turns HALF_OPEN here once ``recovery_timeout`` is up)."""
        with self._lock:
            changes = self._tick(self._clock())
            state = self._state
        self._announce(changes)
        return state

    @property
    def retry_after(self) -> float:
        """Seconds until a probe is allowed (0.0 unless OPEN)."""
        return self.snapshot().retry_after

    def snapshot(self) -> BreakerSnapshot:
        """Return the state and counters as of now, read under the lock."""
        with self._lock:
            now = self._clock()
            changes = self._tick(now)
            if self._state is CircuitState.CLOSED:
                failures = sum(1 for _, failed, _op in self._outcomes if failed)
                snap = BreakerSnapshot(
                    state=self._state,
                    failure_count=failures,
                    success_count=len(self._outcomes) - failures,
                    retry_after=0.0,
                )
            elif self._state is CircuitState.OPEN:
                snap = BreakerSnapshot(
                    state=self._state,
                    failure_count=self._open_failures,
                    success_count=0,
                    retry_after=self._open_until - now,
                )
            else:
                snap = BreakerSnapshot(
                    state=self._state,
                    failure_count=0,
                    success_count=self._probe_successes,
                    retry_after=0.0,
                )
        self._announce(changes)
        return snap

    def acquire(self, operation: Hashable | None = None) -> Permit:
        """Take a permit for one attempt; report its outcome on the permit.

        Args:
            operation: a token naming the operation (logical call) the attempt belongs to,
                equal for all of its attempts; None makes the attempt its own operation.

        Raises:
            CircuitBreakerOpenError: the circuit is OPEN, or HALF_OPEN with every probe slot
                taken; nothing should be sent.
        """
        with self._lock:
            now = self._clock()
            changes = self._tick(now)
            permit: Permit | None = None
            retry_after = 0.0
            if operation is None:
                operation = object()
            if self._state is CircuitState.CLOSED:
                permit = Permit(self, self._generation, probe=False, operation=operation)
            elif self._state is CircuitState.OPEN:
                retry_after = self._open_until - now
            elif self._probes_in_flight < self._policy.half_open_max_calls:
                self._probes_in_flight += 1
                permit = Permit(self, self._generation, probe=True, operation=operation)
        self._announce(changes)
        if permit is None:
            raise CircuitBreakerOpenError(self.name, retry_after)
        return permit

    def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run ``fn(*args, **kwargs)`` under the breaker.

        Returns:
            What ``fn`` returns (recorded as a success).

        Raises:
            CircuitBreakerOpenError: the circuit rejected the call; ``fn`` was not called.
            BaseException: whatever ``fn`` raised (a failure when ``is_failure`` says so).
        """
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            try:
                if self._is_failure(exc):
                    permit.failure()
            finally:
                # No-op after failure(); frees the slot for a neutral exception, and when
                # is_failure itself raises.
                permit.release()
            raise
        except BaseException:
            # KeyboardInterrupt and friends say nothing about the host.
            permit.release()
            raise
        permit.success()
        return result

    def reset(self) -> None:
        """Close the circuit and forget every recorded outcome."""
        with self._lock:
            changes = self._tick(self._clock())
            self._outcomes.clear()
            changes += self._transition(CircuitState.CLOSED)
        self._announce(changes)

    def force_open(self) -> None:
        """Open the circuit now; probes are let through after ``recovery_timeout`` as usual."""
        with self._lock:
            now = self._clock()
            changes = self._tick(now)
            changes += self._open(now, failures=0, hold_open_for=None)
        self._announce(changes)

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(breaker, old_state, new_state)`` after every state change.

        Listeners run on the thread that caused the change, after the lock is released;
        an exception raised by a listener is logged and swallowed.
        """
        with self._lock:
            self._listeners.append(callback)

    @property
    def listeners(self) -> list[Listener]:
        """The registered state-change listeners, in registration order (a copy)."""
        return list(self._listeners)

    def __repr__(self) -> str:
        snap = self.snapshot()
        return f"<CircuitBreaker {self.name!r} {snap.state.value}>"

    # -- internals; every method below runs with self._lock held, except _announce --------

    def _settle(self, permit: Permit, outcome: str, hold_open_for: float | None) -> None:
        with self._lock:
            if permit._done:
                return
            permit._done = True
            now = self._clock()
            changes = self._tick(now)
            if permit.generation == self._generation:
                changes += self._record(permit, outcome, now, hold_open_for)
            elif (
                outcome == _FAILURE
                and hold_open_for is not None
                and self._state is CircuitState.OPEN
            ):
                # Old news for the counters, but the server's Retry-After still holds.
                self._open_until = max(self._open_until, now + hold_open_for)
        self._announce(changes)

    def _record(
        self, permit: Permit, outcome: str, now: float, hold_open_for: float | None
    ) -> list[_Change]:
        if self._state is CircuitState.CLOSED:
            if outcome == _NEUTRAL:
                return []
            self._outcomes.append((now, outcome == _FAILURE, permit.operation))
            self._prune(now)
            if outcome != _FAILURE:  # only a failure can open: skip the count on success
                return []
            failed = [op for _, failed, op in self._outcomes if failed]
            failures = len(failed)
            if (
                failures >= self._policy.failure_threshold
                and failures / len(self._outcomes) >= self._policy.failure_rate
                and len(set(failed)) >= self._policy.failed_operations
            ):
                return self._open(now, failures=failures, hold_open_for=hold_open_for)
            return []
        # HALF_OPEN: a permit of this generation in OPEN is impossible (OPEN hands out none,
        # and leaving HALF_OPEN bumps the generation).
        self._probes_in_flight -= 1
        if outcome == _FAILURE:
            return self._open(now, failures=1, hold_open_for=hold_open_for)
        if outcome == _SUCCESS:
            self._probe_successes += 1
            if self._probe_successes >= self._policy.success_threshold:
                self._outcomes.clear()
                return self._transition(CircuitState.CLOSED)
        return []

    def _prune(self, now: float) -> None:
        horizon = now - self._policy.window
        while self._outcomes and self._outcomes[0][0] <= horizon:
            self._outcomes.popleft()

    def _open(self, now: float, *, failures: int, hold_open_for: float | None) -> list[_Change]:
        hold = self._policy.recovery_timeout
        if hold_open_for is not None:
            hold = max(hold, hold_open_for)
        self._open_until = now + hold
        self._open_failures = failures
        self._outcomes.clear()
        return self._transition(CircuitState.OPEN)

    def _tick(self, now: float) -> list[_Change]:
        if self._state is CircuitState.OPEN and now >= self._open_until:
            return self._transition(CircuitState.HALF_OPEN)
        if self._state is CircuitState.CLOSED:
            self._prune(now)
        return []

    def _transition(self, new: CircuitState) -> list[_Change]:
        old = self._state
        # Every transition (even OPEN -> OPEN on force_open) invalidates outstanding permits.
        self._generation += 1
        self._state = new
        self._probes_in_flight = 0
        self._probe_successes = 0
        return [] if old is new else [(old, new)]

    def _announce(self, changes: list[_Change]) -> None:
        if not changes:
            return
        with self._lock:
            listeners = list(self._listeners)
        for old, new in changes:
            if new is CircuitState.OPEN:
                log.warning("circuit %s opened (was %s)", self.name, old.value)
            elif new is CircuitState.CLOSED:
                log.warning("circuit %s closed (was %s)", self.name, old.value)
            else:
                log.info("circuit %s half-open: letting probes through", self.name)
            for listener in listeners:
                try:
                    listener(self, old, new)
                except Exception:
                    log.exception("circuit %s: state listener %r failed", self.name, listener)
