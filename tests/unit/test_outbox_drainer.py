"""Unit tests of the outbox drainer (chatsdk._outbox.drainer): fake clock, fake deliver."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import chatsdk._outbox.drainer as drainer_module
from chatsdk._errors import (
    APIError,
    BadRequestError,
    CircuitBreakerOpenError,
    ConnectError,
    ForbiddenError,
    InvalidResponseError,
    OutboxError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    UnauthorizedError,
    UnprocessableEntityError,
    ValidationError,
)
from chatsdk._http.retry import RetryPolicy
from chatsdk._outbox.drainer import Drainer, is_permanent
from chatsdk._outbox.models import Operation, OutboxEntry
from chatsdk._outbox.outbox import Outbox
from chatsdk._resilience.breaker import CircuitBreaker, CircuitState
from tests.helpers import FakeClock, message_response

T0 = 1_700_000_000.0
NO_JITTER = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter="none")


def body(channel: str, text: str = "hi") -> dict[str, Any]:
    return {"channelId": channel, "text": text, "attachments": [], "parentId": None}


response = message_response


class FakeDeliver:
    """Answers from a script: per call, an exception to raise or None for success."""

    def __init__(self, script: list[BaseException | None] | None = None) -> None:
        self.script = list(script or [])
        self.calls: list[Operation] = []
        self.lock = threading.Lock()

    def __call__(self, op: Operation) -> dict[str, Any]:
        with self.lock:
            self.calls.append(op)
            outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return response(op)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "o.db", clock=clock)
    yield box
    box.close()


def make(outbox: Outbox, deliver: Callable[[Operation], dict[str, Any]], **kw: Any) -> Drainer:
    kw.setdefault("clock", outbox._clock)
    kw.setdefault("retry", NO_JITTER)
    return Drainer(outbox, deliver, **kw)


def run_once(drainer: Drainer) -> tuple[float | None, list[OutboxEntry[Any]]]:
    """One loop step, then process what it dispatched, synchronously."""
    timeout = drainer._step()
    jobs: list[OutboxEntry[Any]] = []
    while not drainer._jobs.empty():
        entry = drainer._jobs.get()
        assert entry is not None
        jobs.append(entry)
    for entry in jobs:
        drainer.process(entry)
        drainer._inflight -= 1
    return timeout, jobs


def put(box: Outbox, channel: str = "c1", text: str = "hi") -> OutboxEntry[Any]:
    return box.enqueue("message", channel, body(channel, text))


# -- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (BadRequestError(400, "invalid_request", "x"), True),
        (APIError(404, "not_found", "x"), True),
        (PayloadTooLargeError(413, "payload_too_large", "x"), True),
        (UnprocessableEntityError(422, "idempotency_key_reused", "x"), True),
        (APIError(405, None, "x"), True),
        (ValidationError("text", "bad"), True),
        (InvalidResponseError(201, None, "truncated"), False),
        (ServerError(503, "unavailable", "x"), False),
        (RateLimitedError(429, "rate_limited", "x"), False),
        (APIError(409, "idempotency_key_in_use", "x"), False),
        (ConnectError("refused"), False),
        (RuntimeError("a bug in someone's deliver"), True),
    ],
)
def test_is_permanent(error: BaseException, permanent: bool) -> None:
    assert is_permanent(error) is permanent


def test_bad_arguments(outbox: Outbox) -> None:
    for kwargs in ({"workers": 0}, {"workers": True}, {"poll_interval": 0}):
        with pytest.raises(ValueError):
            Drainer(outbox, FakeDeliver(), **kwargs)


# -- one step at a time ------------------------------------------------------------------


def test_step_delivers_channel_heads_in_parallel_and_in_order(outbox: Outbox) -> None:
    deliver = FakeDeliver()
    drainer = make(outbox, deliver, workers=2)
    a1, a2, b1, c1 = (
        put(outbox, "a", "1"),
        put(outbox, "a", "2"),
        put(outbox, "b"),
        put(outbox, "c"),
    )
    timeout, jobs = run_once(drainer)
    assert [j.id for j in jobs] == [a1.id, b1.id]
    assert timeout == 0.0  # c's head was due but no worker was free
    _, jobs = run_once(drainer)
    assert [j.id for j in jobs] == [a2.id, c1.id]
    timeout, jobs = run_once(drainer)
    assert jobs == [] and timeout == 1.0  # nothing due: poll the file in a second
    assert [op.body["text"] for op in deliver.calls if op.channel == "a"] == ["1", "2"]
    assert outbox.stats().sent == 4
    assert a1.wait(0).id == f"m-{a1.idempotency_key}"


def test_step_without_free_workers_polls(outbox: Outbox) -> None:
    drainer = make(outbox, FakeDeliver(), workers=1)
    drainer._inflight = 1
    assert drainer._step() == 1.0


def test_transient_error_backs_off_with_the_same_key(outbox: Outbox, clock: FakeClock) -> None:
    deliver = FakeDeliver([ConnectError("refused"), ServerError(503, "unavailable", "x")])
    drainer = make(outbox, deliver, poll_interval=10.0)
    entry = put(outbox)
    run_once(drainer)
    state = outbox.get(entry.id)
    assert state is not None
    assert (state.status, state.attempts, state.next_attempt_at) == ("queued", 1, T0 + 1.0)
    assert state.last_error == "ConnectError: refused"
    timeout, jobs = run_once(drainer)
    assert jobs == [] and timeout == 1.0  # sleeps until the entry is due
    clock.now += 1.0
    run_once(drainer)
    assert outbox.get(entry.id).next_attempt_at == T0 + 1.0 + 2.0  # type: ignore[union-attr]
    clock.now += 2.0
    run_once(drainer)
    assert outbox.get(entry.id).status == "sent"  # type: ignore[union-attr]
    assert {op.idempotency_key for op in deliver.calls} == {entry.idempotency_key}


def test_retry_after_is_honoured(outbox: Outbox) -> None:
    limited = RateLimitedError(429, "rate_limited", "slow down")
    limited.retry_after = 30.0
    drainer = make(outbox, FakeDeliver([limited]))
    entry = put(outbox)
    run_once(drainer)
    assert outbox.get(entry.id).next_attempt_at == T0 + 30.0  # type: ignore[union-attr]


def test_invalid_2xx_body_is_resent_under_the_same_key(outbox: Outbox, clock: FakeClock) -> None:
    deliver = FakeDeliver([InvalidResponseError(201, None, "truncated body")])
    drainer = make(outbox, deliver)
    entry = put(outbox)
    run_once(drainer)
    clock.now += 60
    run_once(drainer)
    assert outbox.get(entry.id).status == "sent"  # type: ignore[union-attr]
    assert [op.idempotency_key for op in deliver.calls] == [entry.idempotency_key] * 2


def test_foreign_exception_dead_letters_the_entry_with_its_traceback(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: retried for 23 h, blocking its channel. A bug is not cured by resending.
    drainer = make(outbox, FakeDeliver([RuntimeError("oops")]))
    entry, after = put(outbox, "a", "1"), put(outbox, "a", "2")
    with caplog.at_level(logging.WARNING, "chatsdk"):
        run_once(drainer)
        run_once(drainer)
    assert outbox.get(entry.id).status == "failed"  # type: ignore[union-attr]
    assert outbox.get(after.id).status == "sent"  # type: ignore[union-attr]
    record = next(r for r in caplog.records if "failed for good" in r.getMessage())
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    with pytest.raises(OutboxError, match="RuntimeError"):
        entry.wait(0)


def test_a_503_retry_after_reschedules_the_entry_that_late(
    outbox: Outbox, clock: FakeClock
) -> None:
    # Before: ServerError had no retry_after and the entry was due again within 10 s.
    unavailable = ServerError(503, "unavailable", "maintenance")
    unavailable.retry_after = 600.0
    # (A Retry-After is honoured up to the policy's max_retry_after: issue 12, row 10.)
    policy = attrs.evolve(NO_JITTER, max_retry_after=900.0)
    drainer = make(outbox, FakeDeliver([unavailable]), retry=policy)
    entry = put(outbox)
    run_once(drainer)
    row = outbox.get(entry.id)
    assert row is not None and row.status == "queued"
    assert row.next_attempt_at >= clock() + 600.0


def test_poison_message_is_dead_lettered_and_the_channel_moves_on(outbox: Outbox) -> None:
    deliver = FakeDeliver([BadRequestError(400, "invalid_request", "text: bad")])
    drainer = make(outbox, deliver)
    poison, after = put(outbox, "a", "1"), put(outbox, "a", "2")
    run_once(drainer)
    run_once(drainer)
    assert outbox.get(poison.id).status == "failed"  # type: ignore[union-attr]
    assert outbox.get(after.id).status == "sent"  # type: ignore[union-attr]
    with pytest.raises(BadRequestError):
        poison.wait(0)


def test_auth_error_stops_draining_until_resume(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    deliver = FakeDeliver([UnauthorizedError(401, "unauthorized", "bad key")])
    drainer = make(outbox, deliver)
    entry = put(outbox)
    with caplog.at_level(logging.ERROR, "chatsdk"):
        run_once(drainer)
    assert "draining stopped" in caplog.text and isinstance(drainer.auth_error, UnauthorizedError)
    state = outbox.get(entry.id)
    assert state is not None and (state.status, state.attempts) == ("queued", 0)
    assert run_once(drainer) == (None, [])  # stopped: sleeps until resumed
    assert drainer.flush(5) is False  # cannot make progress: does not wait the 5 s
    drainer.resume()
    assert getattr(drainer, "auth_error") is None  # noqa: B009 - a property mypy would narrow
    run_once(drainer)
    assert outbox.get(entry.id).status == "sent"  # type: ignore[union-attr]


def test_forbidden_also_stops(outbox: Outbox) -> None:
    drainer = make(outbox, FakeDeliver([ForbiddenError(403, "forbidden", "no")]))
    put(outbox)
    run_once(drainer)
    assert isinstance(drainer.auth_error, ForbiddenError)


# -- a worker keeps to its channel -------------------------------------------------------


def work_through(drainer: Drainer) -> None:
    """One loop step, then a worker's whole run over what it dispatched, synchronously."""
    drainer._step()
    drainer._jobs.put(None)  # the worker returns once its streaks are over
    drainer._work()


def test_worker_keeps_to_its_channel_then_takes_the_most_overdue_head(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drainer_module, "STREAK", 3)
    deliver = FakeDeliver()
    drainer = make(outbox, deliver, workers=1)
    for channel, text in ("a1", "b1", "a2", "b2", "a3", "a4", "a5"):
        put(outbox, channel, text)  # one fake-clock instant: due order is queue order
    work_through(drainer)
    # a's first three in a row, then b's head (due before a4), then b until it is empty.
    assert [op.channel + op.body["text"] for op in deliver.calls] == ["a1", "a2", "a3", "b1", "b2"]
    assert drainer._inflight == 0 and drainer._wake.is_set()  # back in the pool
    work_through(drainer)
    assert [op.channel + op.body["text"] for op in deliver.calls][5:] == ["a4", "a5"]
    assert outbox.stats().sent == 7


def test_poison_message_fails_and_the_worker_goes_on_with_its_channel(outbox: Outbox) -> None:
    deliver = FakeDeliver([BadRequestError(400, "invalid_request", "text: bad")])
    drainer = make(outbox, deliver, workers=1)
    poison, after = put(outbox, "a", "1"), put(outbox, "a", "2")
    work_through(drainer)
    assert [op.body["text"] for op in deliver.calls] == ["1", "2"]
    assert outbox.get(poison.id).status == "failed"  # type: ignore[union-attr]
    assert outbox.get(after.id).status == "sent"  # type: ignore[union-attr]


@pytest.mark.parametrize("why", ["paused", "stopping", "auth"])
def test_worker_claims_nothing_more_for_a_drainer_that_should_not_send(
    outbox: Outbox, why: str
) -> None:
    deliver = FakeDeliver()
    drainer = make(outbox, deliver, workers=1)
    first, second = put(outbox, "a", "1"), put(outbox, "a", "2")
    drainer._step()
    if why == "paused":
        drainer._paused_until = 1e12
    elif why == "stopping":
        drainer._stopping = True
    else:
        drainer._auth_error = UnauthorizedError(401, "unauthorized", "bad key")
    drainer._jobs.put(None)
    drainer._work()
    assert outbox.get(first.id).status == "sent"  # type: ignore[union-attr]
    assert outbox.get(second.id).status == "queued"  # type: ignore[union-attr]
    assert len(deliver.calls) == 1


def test_stop_ends_a_flush_waiting_in_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "chatsdk._outbox.outbox._POLL", 600.0
    )  # no polling rescues a missed wake-up
    box = Outbox(tmp_path / "t.db")
    drainer = Drainer(box, FakeDeliver(), workers=1)  # never started: nothing drains
    box.enqueue("message", "c1", body("c1"))
    results: list[bool] = []
    waiting = threading.Thread(target=lambda: results.append(drainer.flush(600)))
    waiting.start()
    assert drainer.stop(5)
    waiting.join(60)
    assert results == [False]
    box.close()


# -- the circuit breaker -----------------------------------------------------------------


def test_open_circuit_pauses_this_process_without_touching_the_file(outbox: Outbox) -> None:
    now = [100.0]
    breaker = CircuitBreaker("rest:test", recovery_timeout=2.0, clock=lambda: now[0])
    breaker.force_open()
    watched: list[Operation] = []

    def breaker_for(op: Operation) -> CircuitBreaker:
        watched.append(op)
        return breaker

    deliver = FakeDeliver([CircuitBreakerOpenError("rest:test", 2.0)] * 2)
    drainer = make(outbox, deliver, breaker_for=breaker_for)
    entry = put(outbox)
    run_once(drainer)
    state = outbox.get(entry.id)
    assert state is not None and (state.status, state.attempts, state.next_attempt_at) == (
        "queued",
        0,
        T0,
    )
    assert 1.9 < drainer.paused_for <= 2.0
    timeout, jobs = run_once(drainer)
    assert jobs == [] and timeout is not None and 1.9 < timeout <= 2.0
    # The breaker closing wakes the drainer at once and cuts transient backoffs short.
    drainer._paused_until = 0.0
    run_once(drainer)  # a second open-circuit answer: the breaker is watched only once
    assert len(breaker._listeners) == 1 and len(watched) == 2
    breaker.reset()
    assert drainer.paused_for == 0.0 and drainer._expedite and drainer._wake.is_set()
    run_once(drainer)
    assert outbox.get(entry.id).status == "sent"  # type: ignore[union-attr]


def test_breaker_events(outbox: Outbox) -> None:
    drainer = make(outbox, FakeDeliver())
    drainer._paused_until = 1e12
    drainer._on_breaker(None, CircuitState.CLOSED, CircuitState.OPEN)
    assert drainer.paused_for > 0
    drainer._on_breaker(None, CircuitState.OPEN, CircuitState.HALF_OPEN)
    assert drainer.paused_for == 0.0 and not drainer._expedite


def test_half_open_without_a_probe_slot_pauses_briefly(outbox: Outbox) -> None:
    deliver = FakeDeliver([CircuitBreakerOpenError("rest:test", 0.0)])
    drainer = make(outbox, deliver)  # no breaker_for: nothing to watch
    put(outbox)
    run_once(drainer)
    assert 0 < drainer.paused_for <= drainer_module._MIN_PAUSE


def test_expedite_and_sweep_happen_in_the_loop(outbox: Outbox, clock: FakeClock) -> None:
    drainer = make(outbox, FakeDeliver([ConnectError("down")]))
    entry = put(outbox)
    run_once(drainer)
    assert outbox.get(entry.id).next_attempt_at == T0 + 1.0  # type: ignore[union-attr]
    drainer.notify(expedite=True)
    _, jobs = run_once(drainer)
    assert [j.id for j in jobs] == [entry.id]
    assert drainer._next_sweep > 0


# -- threads -----------------------------------------------------------------------------


def test_threads_deliver_flush_and_stop(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "t.db")
    deliver = FakeDeliver()
    drainer = Drainer(box, deliver, workers=3)
    drainer.start()
    drainer.start()  # idempotent
    for i in range(30):
        box.enqueue("message", f"c{i % 5}", body(f"c{i % 5}", str(i)))
    assert drainer.flush(30)
    assert box.stats().sent == 30
    for channel in (f"c{i}" for i in range(5)):
        texts = [op.body["text"] for op in deliver.calls if op.channel == channel]
        assert texts == sorted(texts, key=int)
    assert drainer.stop(10)
    drainer.start()  # stopped for good
    assert not any(t.is_alive() for t in drainer._threads)
    box.close()


def test_flush_times_out_while_entries_are_stuck(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "t.db")
    release = threading.Event()

    def slow(op: Operation) -> dict[str, Any]:
        release.wait(30)
        return response(op)

    drainer = Drainer(box, slow, workers=1)
    drainer.start()
    entry = box.enqueue("message", "c1", body("c1"))
    assert drainer.flush(0.05) is False
    assert not drainer.stop(0.01)  # the delivery in flight outlives a short stop
    release.set()
    assert entry.wait(30).channel_id == "c1"
    assert drainer.stop(30)
    box.close()


def test_outcome_not_recorded_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "t.db")
    done = threading.Event()

    def deliver_then_close(op: Operation) -> dict[str, Any]:
        box.close()  # the outbox goes away under the worker
        done.set()
        return response(op)

    drainer = Drainer(box, deliver_then_close, workers=1)
    with caplog.at_level(logging.WARNING, "chatsdk"):
        drainer.start()
        box.enqueue("message", "c1", body("c1"))
        assert done.wait(30)
        assert drainer.stop(30)  # the loop ends by itself: the outbox is closed
    assert "outcome not recorded" in caplog.text


def test_loop_survives_an_outbox_error(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    drainer = make(outbox, FakeDeliver(), poll_interval=0.01)
    calls: list[int] = []

    def flaky_claim(_limit: int) -> tuple[list[OutboxEntry[Any]], float | None]:
        calls.append(1)
        if len(calls) == 1:
            raise OutboxError("disk I/O error")
        drainer._stopping = True
        return [], None

    monkeypatch.setattr(outbox, "claim", flaky_claim)
    with caplog.at_level(logging.WARNING, "chatsdk"):
        drainer._loop()
    assert len(calls) == 2 and "disk I/O error" in caplog.text


def test_loop_ends_when_the_outbox_is_closed(outbox: Outbox) -> None:
    drainer = make(outbox, FakeDeliver())
    outbox.close()
    drainer._loop()  # returns (the test would hang on the timeout otherwise)


def test_forked_child_restarts_its_drainer_lazily(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "t.db")
    drainer = Drainer(box, FakeDeliver(), workers=1)
    drainer.start()
    # In a real child the parent's threads do not exist: end them here to stand in for that.
    assert drainer.stop(30)
    parent_threads = drainer._threads
    drainer._stopping = False
    drainer._after_fork()  # what the at-fork hook runs in the child
    assert drainer._threads == [] and not drainer._running_here
    entry = box.enqueue("message", "c1", body("c1"))  # notify() restarts it
    assert drainer._threads and drainer._threads[0] is not parent_threads[0]
    assert entry.wait(30)
    assert drainer.stop(30)
    box.close()


def test_notify_before_start_does_not_start(outbox: Outbox) -> None:
    drainer = make(outbox, FakeDeliver())
    drainer.notify()
    assert drainer._threads == []
    assert drainer.stop(1)


def test_stop_gives_back_claims_no_worker_started(outbox: Outbox) -> None:
    """SIGTERM for a drain worker: what is claimed but not started goes back, uncounted."""
    first = outbox.enqueue("message", "c1", {"channelId": "c1", "text": "a"})
    second = outbox.enqueue("message", "c2", {"channelId": "c2", "text": "b"})
    drainer = make(outbox, FakeDeliver())
    drainer._step()  # claims both heads; no worker threads run to take them
    assert drainer._inflight == 2 and outbox.stats().sending == 2
    drainer._jobs.put(None)  # a stop sentinel already queued is skipped over
    real_release = outbox.release

    def release_then_fail(entry: OutboxEntry[Any]) -> None:
        if entry.id == second.id:
            raise OutboxError("database is unreachable")
        real_release(entry)

    outbox.release = release_then_fail  # type: ignore[method-assign]
    assert drainer.stop(1.0)
    assert drainer._inflight == 0
    got = outbox.get(first.id)
    assert got is not None and (got.status, got.attempts) == ("queued", 0)
    lost = outbox.get(second.id)  # not given back: its lease runs out instead
    assert lost is not None and lost.status == "sending" and lost.lease_token not in outbox._held
