"""A hypothesis state machine: CircuitBreaker against a small reference model.

The model keeps every CLOSED outcome in a plain list and recomputes the window from scratch
(the last ``window_size`` outcomes younger than ``window`` seconds), so it shares none of the
breaker's bookkeeping (deque, pruning, counters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chatsdk._errors import CircuitBreakerOpenError
from chatsdk._resilience.breaker import CircuitBreaker, CircuitState, Permit
from tests.helpers import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


@dataclass
class Model:
    """What the breaker should do, written as plainly as possible."""

    failure_threshold: int
    failure_rate: float
    window: float
    window_size: int
    recovery_timeout: float
    success_threshold: int
    half_open_max_calls: int
    failed_operations: int
    state: CircuitState = CLOSED
    generation: int = 0
    outcomes: list[tuple[float, bool]] = field(default_factory=list)
    open_until: float = 0.0
    open_failures: int = 0
    probes: int = 0
    probe_successes: int = 0
    changes: list[tuple[CircuitState, CircuitState]] = field(default_factory=list)

    def recent(self, now: float) -> list[bool]:
        fresh = [failed for t, failed in self.outcomes if t > now - self.window]
        return fresh[-self.window_size :]

    def move(self, new: CircuitState) -> None:
        if new is not self.state:
            self.changes.append((self.state, new))
        self.state = new
        self.generation += 1
        self.probes = 0
        self.probe_successes = 0
        self.outcomes = []

    def open(self, now: float, failures: int, hold: float | None) -> None:
        self.open_until = now + max(self.recovery_timeout, hold or 0.0)
        self.open_failures = failures
        self.move(OPEN)

    def tick(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self.move(HALF_OPEN)

    def acquire(self, now: float) -> bool:
        self.tick(now)
        if self.state is CLOSED:
            return True
        if self.state is HALF_OPEN and self.probes < self.half_open_max_calls:
            self.probes += 1
            return True
        return False

    def settle(self, generation: int, outcome: str, hold: float | None, now: float) -> None:
        self.tick(now)
        if generation != self.generation:
            if outcome == "failure" and hold is not None and self.state is OPEN:
                self.open_until = max(self.open_until, now + hold)
            return
        if self.state is CLOSED:
            if outcome == "neutral":
                return
            self.outcomes.append((now, outcome == "failure"))
            recent = self.recent(now)
            failures = sum(recent)
            if (
                outcome == "failure"
                and failures >= self.failure_threshold
                and failures / len(recent) >= self.failure_rate
                # every permit here is its own operation: distinct operations == failures
                and failures >= self.failed_operations
            ):
                self.open(now, failures, hold)
            return
        assert self.state is HALF_OPEN
        self.probes -= 1
        if outcome == "failure":
            self.open(now, 1, hold)
        elif outcome == "success":
            self.probe_successes += 1
            if self.probe_successes >= self.success_threshold:
                self.move(CLOSED)

    def snapshot(self, now: float) -> tuple[CircuitState, int, int, float]:
        self.tick(now)
        if self.state is CLOSED:
            recent = self.recent(now)
            return (CLOSED, sum(recent), len(recent) - sum(recent), 0.0)
        if self.state is OPEN:
            return (OPEN, self.open_failures, 0, self.open_until - now)
        return (HALF_OPEN, 0, self.probe_successes, 0.0)


@dataclass
class Held:
    permit: Permit
    generation: int


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(100.0)
        self.held: list[Held] = []
        self.settled: list[Held] = []
        self.seen: list[tuple[CircuitState, CircuitState]] = []

    @initialize(
        window_size=st.integers(1, 6),
        data=st.data(),
        failure_rate=st.sampled_from([0.3, 0.5, 0.75, 0.9, 1.0]),
        window=st.sampled_from([3.0, 10.0, 120.0]),
        recovery_timeout=st.sampled_from([0.0, 2.0, 5.0]),
        success_threshold=st.integers(1, 3),
        half_open_max_calls=st.integers(1, 3),
        failed_operations=st.integers(1, 3),
    )
    def setup(
        self,
        window_size: int,
        data: st.DataObject,
        failure_rate: float,
        window: float,
        recovery_timeout: float,
        success_threshold: int,
        half_open_max_calls: int,
        failed_operations: int,
    ) -> None:
        failure_threshold = data.draw(st.integers(1, window_size))
        params = {
            "failure_threshold": failure_threshold,
            "failure_rate": failure_rate,
            "window": window,
            "window_size": window_size,
            "recovery_timeout": recovery_timeout,
            "success_threshold": success_threshold,
            "half_open_max_calls": half_open_max_calls,
            "failed_operations": failed_operations,
        }
        self.model = Model(**params)  # type: ignore[arg-type]
        self.breaker = CircuitBreaker("machine", clock=self.clock, **params)  # type: ignore[arg-type]
        self.breaker.add_listener(lambda b, old, new: self.seen.append((old, new)))

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 11.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def acquire(self) -> None:
        allowed = self.model.acquire(self.clock.now)
        try:
            permit = self.breaker.acquire()
        except CircuitBreakerOpenError as exc:
            assert not allowed, "breaker rejected a call the model allows"
            assert exc.name == "machine"
            expected = self.model.open_until - self.clock.now if self.model.state is OPEN else 0.0
            assert exc.retry_after == expected
        else:
            assert allowed, "breaker allowed a call the model rejects"
            assert permit.probe == (self.model.state is HALF_OPEN)
            assert permit.generation == self.model.generation
            self.held.append(Held(permit, self.model.generation))

    def _settle(self, index: int, outcome: str, hold: float | None = None) -> None:
        held = self.held.pop(index % len(self.held))
        self.model.settle(held.generation, outcome, hold, self.clock.now)
        if outcome == "success":
            held.permit.success()
        elif outcome == "failure":
            held.permit.failure(hold_open_for=hold)
        else:
            held.permit.release()
        self.settled.append(held)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 10))
    def success(self, index: int) -> None:
        self._settle(index, "success")

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 10), hold=st.none() | st.sampled_from([0.0, 1.0, 8.0]))
    def failure(self, index: int, hold: float | None) -> None:
        self._settle(index, "failure", hold)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 10))
    def neutral(self, index: int) -> None:
        self._settle(index, "neutral")

    @precondition(lambda self: self.settled)
    @rule(index=st.integers(0, 10), outcome=st.sampled_from(["success", "failure", "neutral"]))
    def settle_again_does_nothing(self, index: int, outcome: str) -> None:
        permit = self.settled[index % len(self.settled)].permit
        getattr(permit, "release" if outcome == "neutral" else outcome)()

    @rule()
    def reset(self) -> None:
        self.model.tick(self.clock.now)
        self.model.move(CLOSED)
        self.breaker.reset()

    @rule()
    def force_open(self) -> None:
        self.model.tick(self.clock.now)
        self.model.open(self.clock.now, 0, None)
        self.breaker.force_open()

    @invariant()
    def snapshot_matches_model(self) -> None:
        expected = self.model.snapshot(self.clock.now)
        snap = self.breaker.snapshot()
        assert (snap.state, snap.failure_count, snap.success_count, snap.retry_after) == expected

    @invariant()
    def snapshot_is_sane(self) -> None:
        snap = self.breaker.snapshot()
        assert 0 <= snap.failure_count <= self.model.window_size
        assert snap.success_count >= 0
        assert (snap.retry_after > 0) == (snap.state is OPEN)
        if snap.state is CLOSED:
            assert snap.success_count + snap.failure_count <= self.model.window_size
        elif snap.state is HALF_OPEN:
            assert snap.success_count < self.model.success_threshold
            assert snap.failure_count == 0
        else:
            assert snap.success_count == 0
        assert len(self.breaker._outcomes) <= self.model.window_size

    @invariant()
    def listeners_saw_every_change(self) -> None:
        self.model.tick(self.clock.now)
        self.breaker.state  # noqa: B018 - reading the state may announce a lazy HALF_OPEN
        assert self.seen == self.model.changes
        for (_, new), (old, _) in zip(self.seen, self.seen[1:], strict=False):
            assert new is old


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
