"""CircuitBreaker, Permit and BoundedRegistry: the rules of issue 4, with a fake clock."""

# mypy narrows `breaker.state` after `assert breaker.state is X` as if the property could not
# change between reads; these tests change it on purpose.
# mypy: disable-error-code="comparison-overlap,unreachable"

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from chatsdk._errors import CircuitBreakerOpenError
from chatsdk._resilience.breaker import (
    BreakerPolicy,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitState,
    Permit,
)
from chatsdk._resilience.hosts import BoundedRegistry
from tests.helpers import FakeClock

WAIT = 10.0  # seconds a test waits on an event before declaring a hang


class Boom(Exception):
    """A failure raised by the protected call."""


class NotMyFault(Exception):
    """An exception that says nothing about the host (is_failure returns False)."""


def fail() -> None:
    raise Boom("host down")


def ok() -> str:
    return "ok"


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("rest:http://host:80", clock=clock)


def trip(breaker: CircuitBreaker, times: int = 5) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            breaker.call(fail)


def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(60.0)
    assert breaker.state is CircuitState.HALF_OPEN


# -- the original design's cases --------------------------------------------------------------


def test_starts_closed(breaker: CircuitBreaker) -> None:
    assert breaker.state is CircuitState.CLOSED
    assert breaker.retry_after == 0.0
    assert breaker.snapshot() == BreakerSnapshot(
        state=CircuitState.CLOSED, failure_count=0, success_count=0, retry_after=0.0
    )
    assert breaker.call(ok) == "ok"
    assert breaker.call(lambda a, *, b: a + b, 1, b=2) == 3


def test_opens_after_threshold_then_fails_fast_without_calling(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    trip(breaker, 4)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot().failure_count == 4
    trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN

    calls: list[int] = []
    clock.advance(10.0)
    with pytest.raises(CircuitBreakerOpenError) as info:
        breaker.call(calls.append, 1)
    assert calls == []
    assert info.value.name == "rest:http://host:80"
    assert info.value.retry_after == pytest.approx(50.0)
    with pytest.raises(CircuitBreakerOpenError):
        breaker.acquire()
    assert breaker.snapshot() == BreakerSnapshot(
        state=CircuitState.OPEN, failure_count=5, success_count=0, retry_after=50.0
    )
    assert breaker.retry_after == pytest.approx(50.0)


def test_half_open_after_recovery_timeout(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(59.999)
    assert breaker.state is CircuitState.OPEN
    clock.advance(0.001)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.retry_after == 0.0
    assert breaker.snapshot() == BreakerSnapshot(
        state=CircuitState.HALF_OPEN, failure_count=0, success_count=0, retry_after=0.0
    )


def test_closes_after_success_threshold(breaker: CircuitBreaker, clock: FakeClock) -> None:
    half_open(breaker, clock)
    assert breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.snapshot().success_count == 1
    assert breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.CLOSED
    # A fresh window: the failures that opened it are forgotten.
    assert breaker.snapshot().failure_count == 0
    trip(breaker, 4)
    assert breaker.state is CircuitState.CLOSED


def test_half_open_failure_reopens_and_restarts_timer(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    half_open(breaker, clock)
    breaker.call(ok)
    clock.advance(5.0)
    with pytest.raises(Boom):
        breaker.call(fail)
    snap = breaker.snapshot()
    assert snap.state is CircuitState.OPEN
    assert snap.retry_after == 60.0
    assert snap.failure_count == 1
    clock.advance(59.0)
    assert breaker.state is CircuitState.OPEN
    clock.advance(1.0)
    assert breaker.state is CircuitState.HALF_OPEN
    # The success before the failure does not carry over.
    assert breaker.snapshot().success_count == 0


def test_manual_reset(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot().failure_count == 0
    trip(breaker, 4)
    breaker.reset()
    assert breaker.snapshot().failure_count == 0
    trip(breaker, 4)
    assert breaker.state is CircuitState.CLOSED


def test_force_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.force_open()
    snap = breaker.snapshot()
    assert snap == BreakerSnapshot(
        state=CircuitState.OPEN, failure_count=0, success_count=0, retry_after=60.0
    )
    with pytest.raises(CircuitBreakerOpenError):
        breaker.call(ok)
    clock.advance(30.0)
    breaker.force_open()  # restarts the timer
    assert breaker.retry_after == 60.0
    clock.advance(60.0)
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.force_open()
    assert breaker.state is CircuitState.OPEN


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 21},  # > window_size
        {"failure_threshold": 6, "window_size": 5},
        {"failure_threshold": 0},
        {"failure_threshold": 2.0},
        {"failure_threshold": True},
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"window": 0.0},
        {"window_size": 0},
        {"recovery_timeout": -1.0},
        {"success_threshold": 0},
        {"half_open_max_calls": 0},
    ],
)
def test_invalid_arguments_are_value_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", **kwargs)


def test_name_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        CircuitBreaker(b"x")  # type: ignore[arg-type]


def test_from_policy(clock: FakeClock) -> None:
    policy = BreakerPolicy(failure_threshold=2, window_size=4, recovery_timeout=5.0)
    breaker = CircuitBreaker.from_policy("p", policy, clock=clock, is_failure=lambda e: False)
    assert breaker.policy == policy
    assert breaker.name == "p"
    trip(breaker, 3)  # is_failure says no: nothing counts
    assert breaker.state is CircuitState.CLOSED
    assert CircuitBreaker("q").policy == BreakerPolicy()


def test_snapshot_is_frozen(breaker: CircuitBreaker) -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        breaker.snapshot().state = CircuitState.OPEN  # type: ignore[misc]


# -- the opening rule -------------------------------------------------------------------------


def test_quiet_host_opens_after_failure_threshold(clock: FakeClock) -> None:
    breaker = CircuitBreaker("quiet", clock=clock)
    for n in range(1, 6):
        clock.advance(20.0)  # one call every 20 s: the window never fills
        with pytest.raises(Boom):
            breaker.call(fail)
        assert breaker.state is (CircuitState.OPEN if n == 5 else CircuitState.CLOSED)


def test_busy_host_going_down_opens_within_18_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker("busy", clock=clock)
    for _ in range(500):
        clock.advance(0.01)
        breaker.call(ok)
    failures = 0
    while breaker.state is CircuitState.CLOSED:
        clock.advance(0.01)
        failures += 1
        with pytest.raises(Boom):
            breaker.call(fail)
    assert failures == 18


def test_thirty_percent_random_failures_never_open(clock: FakeClock) -> None:
    rng = random.Random(20240604)
    breaker = CircuitBreaker("flaky", clock=clock)
    failures = 0
    for _ in range(10_000):
        clock.advance(0.05)  # 20 calls per second
        permit = breaker.acquire()  # raises if the circuit ever opened
        if rng.random() < 0.3:
            failures += 1
            permit.failure()
        else:
            permit.success()
    assert 2800 < failures < 3200
    assert breaker.state is CircuitState.CLOSED


def test_failure_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    breaker = CircuitBreaker("mixed", clock=clock)
    for _ in range(2):
        breaker.call(ok)
    trip(breaker, 17)  # 17 of 19 < 90%
    assert breaker.state is CircuitState.CLOSED
    trip(breaker, 1)  # 18 of 20
    assert breaker.state is CircuitState.OPEN


def test_outcomes_older_than_window_are_forgotten(clock: FakeClock) -> None:
    breaker = CircuitBreaker("old", clock=clock)
    trip(breaker, 4)
    clock.advance(120.0)
    assert breaker.snapshot().failure_count == 0
    trip(breaker, 1)
    assert breaker.state is CircuitState.CLOSED
    clock.advance(119.0)
    trip(breaker, 4)
    assert breaker.state is CircuitState.OPEN


def test_window_keeps_at_most_window_size_outcomes(clock: FakeClock) -> None:
    breaker = CircuitBreaker("bounded", window_size=10, failure_threshold=5, clock=clock)
    for _ in range(1000):
        breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.success_count, snap.failure_count) == (10, 0)
    assert len(breaker._outcomes) == 10


def test_failures_of_one_operation_never_open(clock: FakeClock) -> None:
    # One call whose retries all fail is a blip: the original design counts failed calls.
    breaker = CircuitBreaker("ops", clock=clock)
    for _ in range(10):
        breaker.acquire(operation="send-1").failure()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot().failure_count == 10
    breaker.acquire(operation="send-2").failure()
    assert breaker.state is CircuitState.OPEN


def test_failed_operations_is_configurable(clock: FakeClock) -> None:
    breaker = CircuitBreaker("ops", failed_operations=3, clock=clock)
    for op in ("a", "a", "a", "b", "b"):
        breaker.acquire(operation=op).failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.acquire(operation="c").failure()
    assert breaker.state is CircuitState.OPEN


def test_successes_never_open(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "s", failure_threshold=1, failure_rate=0.01, failed_operations=1, clock=clock
    )
    breaker.call(ok)
    assert breaker.state is CircuitState.CLOSED
    trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN


# -- what counts ----------------------------------------------------------------------------


def test_is_failure_decides_what_counts(clock: FakeClock) -> None:
    breaker = CircuitBreaker("f", is_failure=lambda e: isinstance(e, Boom), clock=clock)
    for _ in range(10):
        with pytest.raises(NotMyFault):
            breaker.call(_raise, NotMyFault())
    assert breaker.snapshot() == BreakerSnapshot(
        state=CircuitState.CLOSED, failure_count=0, success_count=0, retry_after=0.0
    )
    trip(breaker)
    assert breaker.state is CircuitState.OPEN


def _raise(exc: BaseException) -> None:
    raise exc


def test_neutral_exception_frees_the_probe_slot(clock: FakeClock) -> None:
    breaker = CircuitBreaker("n", is_failure=lambda e: isinstance(e, Boom), clock=clock)
    half_open(breaker, clock)
    with pytest.raises(NotMyFault):
        breaker.call(_raise, NotMyFault())
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.call(ok)  # the slot is free again
    breaker.call(ok)
    assert breaker.state is CircuitState.CLOSED


def test_base_exception_releases_the_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    half_open(breaker, clock)
    with pytest.raises(KeyboardInterrupt):
        breaker.call(_raise, KeyboardInterrupt())
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.acquire().release()


def test_is_failure_raising_releases_and_propagates(clock: FakeClock) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("classifier bug")

    breaker = CircuitBreaker("b", is_failure=broken, clock=clock)
    for _ in range(5):
        breaker.acquire().failure()
    clock.advance(60.0)
    with pytest.raises(RuntimeError, match="classifier bug") as info:
        breaker.call(fail)
    assert isinstance(info.value.__context__, Boom)
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.acquire()  # the slot was freed


def test_permit_first_outcome_wins(breaker: CircuitBreaker) -> None:
    permit = breaker.acquire()
    assert not permit.probe
    permit.success()
    permit.failure()
    permit.release()
    permit.failure(hold_open_for=5.0)
    assert breaker.snapshot().success_count == 1
    assert breaker.snapshot().failure_count == 0
    assert "done=True" in repr(permit)


def test_release_in_closed_counts_nothing(breaker: CircuitBreaker) -> None:
    breaker.acquire().release()
    assert breaker.snapshot().success_count == breaker.snapshot().failure_count == 0


# -- HALF_OPEN and probes -----------------------------------------------------------------------


def test_half_open_rejects_beyond_max_calls(breaker: CircuitBreaker, clock: FakeClock) -> None:
    half_open(breaker, clock)
    probe = breaker.acquire()
    assert probe.probe
    with pytest.raises(CircuitBreakerOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == 0.0
    probe.release()
    second = breaker.acquire()
    second.success()
    breaker.acquire().success()
    assert breaker.state is CircuitState.CLOSED


def test_late_success_after_reopen_cannot_close(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "late", half_open_max_calls=2, success_threshold=1, recovery_timeout=10.0, clock=clock
    )
    trip(breaker)
    clock.advance(10.0)
    slow = breaker.acquire()
    fast = breaker.acquire()
    fast.failure()  # reopens
    assert breaker.state is CircuitState.OPEN
    slow.success()  # started before the reopen: ignored
    assert breaker.state is CircuitState.OPEN
    clock.advance(10.0)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.snapshot().success_count == 0


def test_late_success_from_closed_does_not_count_as_probe(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.acquire()  # taken while CLOSED
    trip(breaker)
    clock.advance(60.0)
    assert breaker.state is CircuitState.HALF_OPEN
    slow.success()
    assert breaker.snapshot().success_count == 0
    assert breaker.state is CircuitState.HALF_OPEN
    slow_failure = breaker.acquire()
    breaker.reset()
    slow_failure.failure()  # from a HALF_OPEN generation: ignored by the new CLOSED one
    assert breaker.snapshot().failure_count == 0


def test_late_failure_in_half_open_does_not_reopen(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.acquire()
    trip(breaker)
    clock.advance(60.0)
    slow.failure(hold_open_for=500.0)
    assert breaker.state is CircuitState.HALF_OPEN


# -- hold_open_for (Retry-After) ------------------------------------------------------------


def test_hold_open_for_longer_than_recovery_timeout(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    trip(breaker, 4)
    breaker.acquire().failure(hold_open_for=300.0)
    assert breaker.retry_after == 300.0
    clock.advance(299.0)
    assert breaker.state is CircuitState.OPEN
    clock.advance(1.0)
    assert breaker.state is CircuitState.HALF_OPEN


def test_hold_open_for_shorter_than_recovery_timeout_is_ignored(
    breaker: CircuitBreaker,
) -> None:
    trip(breaker, 4)
    breaker.acquire().failure(hold_open_for=1.0)
    assert breaker.retry_after == 60.0


def test_hold_open_for_without_opening_changes_nothing(breaker: CircuitBreaker) -> None:
    breaker.acquire().failure(hold_open_for=300.0)
    assert breaker.state is CircuitState.CLOSED
    trip(breaker, 4)
    assert breaker.retry_after == 60.0


def test_probe_failure_with_hold_open_for(breaker: CircuitBreaker, clock: FakeClock) -> None:
    half_open(breaker, clock)
    breaker.acquire().failure(hold_open_for=120.0)
    assert breaker.retry_after == 120.0


def test_late_failure_with_hold_open_for_extends_open(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.acquire()
    slower = breaker.acquire()
    trip(breaker)
    clock.advance(10.0)
    slow.failure()  # old news: no effect
    assert breaker.retry_after == 50.0
    slower.failure(hold_open_for=120.0)  # but the server's Retry-After still holds
    assert breaker.retry_after == 120.0
    assert breaker.snapshot().failure_count == 5


@pytest.mark.parametrize("hold", [-1.0, float("nan"), float("inf")])
def test_invalid_hold_open_for(breaker: CircuitBreaker, hold: float) -> None:
    permit = breaker.acquire()
    with pytest.raises(ValueError, match="hold_open_for"):
        permit.failure(hold_open_for=hold)
    permit.success()  # the permit is still usable
    assert breaker.snapshot().success_count == 1


# -- listeners and logging ------------------------------------------------------------------


def test_listeners_see_every_change_outside_the_lock(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    seen: list[tuple[CircuitState, CircuitState]] = []

    def listener(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        assert b is breaker
        assert not b._lock.locked()
        b.snapshot()  # would deadlock if the lock were held
        seen.append((old, new))

    breaker.add_listener(listener)
    half_open(breaker, clock)
    breaker.call(ok)
    breaker.call(ok)
    breaker.force_open()
    breaker.force_open()  # OPEN -> OPEN is not a change
    breaker.reset()
    breaker.reset()
    assert seen == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),
    ]


def test_lazy_half_open_then_reset_announces_both(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    seen: list[tuple[CircuitState, CircuitState]] = []
    breaker.add_listener(lambda b, old, new: seen.append((old, new)))
    breaker.force_open()
    clock.advance(60.0)
    breaker.reset()  # nobody looked in between: the lazy HALF_OPEN is announced first
    assert seen == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_listener_exceptions_are_logged_not_raised(
    breaker: CircuitBreaker, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[CircuitState] = []

    def broken(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(lambda b, old, new: calls.append(new))
    with caplog.at_level(logging.ERROR, logger="chatsdk.breaker"):
        breaker.force_open()
    assert calls == [CircuitState.OPEN]
    assert breaker.state is CircuitState.OPEN
    assert any("listener" in r.getMessage() and r.exc_info for r in caplog.records)


def test_open_and_close_logged_at_warning(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="chatsdk.breaker"):
        half_open(breaker, clock)
        breaker.call(ok)
        breaker.call(ok)
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        ("chatsdk.breaker", logging.WARNING, "circuit rest:http://host:80 opened (was closed)"),
        (
            "chatsdk.breaker",
            logging.INFO,
            "circuit rest:http://host:80 half-open: letting probes through",
        ),
        ("chatsdk.breaker", logging.WARNING, "circuit rest:http://host:80 closed (was half_open)"),
    ]


def test_repr(breaker: CircuitBreaker) -> None:
    assert repr(breaker) == "<CircuitBreaker 'rest:http://host:80' closed>"
    assert repr(breaker.acquire()).startswith("<Permit 'rest:http://host:80' generation=0")


# -- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_calls", [1, 3])
def test_32_threads_against_half_open_run_exactly_max_probes(
    clock: FakeClock, max_calls: int
) -> None:
    breaker = CircuitBreaker("race", half_open_max_calls=max_calls, clock=clock)
    half_open(breaker, clock)
    threads_n = 32
    start = threading.Barrier(threads_n)
    finish = threading.Event()
    done = threading.Condition()
    entered: list[int] = []
    rejected: list[int] = []
    decided = 0
    running = 0
    max_running = 0

    def probe(i: int) -> None:
        nonlocal decided, running, max_running
        with done:
            entered.append(i)
            decided += 1
            running += 1
            max_running = max(max_running, running)
            done.notify_all()
        try:
            assert finish.wait(WAIT)
        finally:
            with done:
                running -= 1

    def worker(i: int) -> None:
        nonlocal decided
        start.wait(WAIT)
        try:
            breaker.call(probe, i)
        except CircuitBreakerOpenError:
            with done:
                rejected.append(i)
                decided += 1
                done.notify_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    with done:
        assert done.wait_for(lambda: decided == threads_n, timeout=WAIT)
    finish.set()
    for t in threads:
        t.join(WAIT)
    assert len(entered) == max_running == max_calls
    assert len(rejected) == threads_n - max_calls
    assert not any(t.is_alive() for t in threads)
    # success_threshold=2: one probe leaves it HALF_OPEN, three close it.
    expected = CircuitState.CLOSED if max_calls >= 2 else CircuitState.HALF_OPEN
    assert breaker.state is expected


def test_concurrent_calls_keep_consistent_counts(clock: FakeClock) -> None:
    breaker = CircuitBreaker("many", window_size=20, failure_threshold=20, clock=clock)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        start.wait(WAIT)
        try:
            for _ in range(500):
                permit = breaker.acquire()
                (permit.success if rng.random() < 0.5 else permit.failure)()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == []
    snap = breaker.snapshot()
    assert snap.state is CircuitState.CLOSED
    assert snap.success_count + snap.failure_count == 20


# -- BoundedRegistry ------------------------------------------------------------------------


def make_registry(
    max_size: int, evictable: Callable[[list[str]], bool] | None = None
) -> tuple[BoundedRegistry[list[str]], list[str]]:
    created: list[str] = []

    def factory(name: str) -> list[str]:
        created.append(name)
        return [name]

    if evictable is None:
        return BoundedRegistry(factory, max_size=max_size), created
    return BoundedRegistry(factory, max_size=max_size, evictable=evictable), created


def test_registry_creates_once_and_returns_the_same_object() -> None:
    registry, created = make_registry(4)
    first = registry.get("a")
    assert registry.get("a") is first
    assert created == ["a"]
    assert registry.items() == [("a", ["a"])]
    assert len(registry) == 1


def test_registry_evicts_least_recently_used() -> None:
    registry, created = make_registry(3)
    for name in "abc":
        registry.get(name)
    registry.get("a")  # b is now the least recently used
    registry.get("d")
    assert [name for name, _ in registry.items()] == ["c", "a", "d"]
    registry.get("b")  # created again
    assert created == ["a", "b", "c", "d", "b"]
    assert [name for name, _ in registry.items()] == ["a", "d", "b"]


def test_registry_keeps_entries_that_are_not_evictable() -> None:
    pinned = {"a", "b"}
    registry, _ = make_registry(2, evictable=lambda v: v[0] not in pinned)
    registry.get("a")
    registry.get("b")
    registry.get("c")  # nothing else evictable: the new entry stays, past max_size
    assert [name for name, _ in registry.items()] == ["a", "b", "c"]
    registry.get("d")  # c is evictable now
    assert [name for name, _ in registry.items()] == ["a", "b", "d"]
    pinned.clear()
    registry.get("e")  # three over the limit
    assert [name for name, _ in registry.items()] == ["d", "e"]


def test_registry_of_breakers_evicts_only_closed_ones(clock: FakeClock) -> None:
    registry: BoundedRegistry[CircuitBreaker] = BoundedRegistry(
        lambda name: CircuitBreaker(name, clock=clock),
        max_size=1,
        evictable=lambda b: b.state is CircuitState.CLOSED,
    )
    registry.get("rest:http://down:80").force_open()
    registry.get("rest:http://up:80")
    registry.get("rest:http://other:80")
    assert [name for name, _ in registry.items()] == [
        "rest:http://down:80",
        "rest:http://other:80",
    ]


@pytest.mark.parametrize("max_size", [0, -1, 1.5, True])
def test_registry_rejects_bad_max_size(max_size: Any) -> None:
    with pytest.raises(ValueError, match="max_size"):
        BoundedRegistry(lambda name: name, max_size=max_size)


def test_registry_is_thread_safe() -> None:
    registry, created = make_registry(1000)
    start = threading.Barrier(16)
    results: list[list[str]] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait(WAIT)
        for i in range(200):
            value = registry.get(f"host{i % 50}")
            with lock:
                results.append(value)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(created) == sorted(f"host{i}" for i in range(50))
    assert len(results) == 16 * 200
    by_name = dict(registry.items())
    assert all(value is by_name[value[0]] for value in results)


def test_permit_type_is_exported() -> None:
    assert isinstance(CircuitBreaker("x").acquire(), Permit)
