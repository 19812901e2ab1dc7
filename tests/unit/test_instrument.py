"""Typed events and hooks (chatsdk._instrument): what each part of the SDK tells its hooks."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from chatsdk import (
    BreakerPolicy,
    ChatClient,
    ChatSession,
    CircuitBreakerOpenError,
    CircuitState,
    Outbox,
    RetryPolicy,
    ServerError,
    _instrument,
)
from chatsdk._errors import ConnectError, UnprocessableEntityError
from chatsdk._instrument import (
    AttemptFinished,
    BreakerStateChanged,
    Emitter,
    OutboxBacklog,
    OutboxDeadLettered,
    OutboxDelivered,
    OutboxEnqueued,
    RecoveryFailed,
    RetryScheduled,
    SDKEvent,
    add_event_hook,
    key_prefix,
    live_outboxes,
    remove_event_hook,
    track_outbox,
)
from chatsdk._outbox.drainer import Drainer
from tests.unit.test_outbox_drainer import FakeDeliver, body, make, run_once
from tests.unit.test_transport import BASE, KEY, MESSAGES, message_json

NO_JITTER = RetryPolicy(base_delay=0.5, max_delay=8.0, jitter="none")


class Recorder:
    """A hook that keeps every event (from any thread)."""

    def __init__(self) -> None:
        self.events: list[SDKEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: SDKEvent) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def outbox(tmp_path: Path, clock) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "o.db", clock=clock)
    yield box
    box.close()


@pytest.fixture
def client(sleep, clock, recorder: Recorder) -> Iterator[ChatClient]:
    session = ChatSession(BASE, KEY, retry=NO_JITTER, sleep=sleep, clock=clock)
    with ChatClient(session=session, on_event=recorder) as chat:
        yield chat


# -- the emitter -------------------------------------------------------------------------


def test_hooks_run_own_first_then_the_parents_then_process_wide() -> None:
    calls: list[str] = []
    process_hook = lambda e: calls.append("process")  # noqa: E731
    add_event_hook(process_hook)
    try:
        parent = Emitter(lambda e: calls.append("parent"))
        child = Emitter([lambda e: calls.append("a"), lambda e: calls.append("b")], parent=parent)
        assert child.active
        child.emit(OutboxBacklog(count=0, path="p"))
        assert calls == ["a", "b", "parent", "process"]
    finally:
        remove_event_hook(process_hook)
    assert not Emitter().active


def test_an_emitter_without_hooks_is_inactive_until_one_is_added() -> None:
    emitter = Emitter()
    assert not emitter.active
    hook = Recorder()
    emitter.add(hook)
    assert emitter.active
    emitter.remove(hook)
    emitter.remove(hook)  # unknown: ignored
    assert not emitter.active


def test_a_raising_hook_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got = Recorder()

    def explode(event: SDKEvent) -> None:
        raise RuntimeError("broken hook")

    emitter = Emitter([explode, got])
    with caplog.at_level(logging.ERROR, logger="chatsdk.instrument"):
        emitter.emit(OutboxBacklog(count=3, path="p"))
    assert len(got.events) == 1
    assert "outbox_backlog" in caplog.text and "broken hook" in caplog.text


def test_hooks_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        Emitter([print, 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="callable"):
        add_event_hook("not a hook")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        ChatClient(BASE, KEY, on_event=[42])  # type: ignore[list-item]


def test_event_names_are_the_documented_ones() -> None:
    names = {cls.name for cls in SDKEvent.__args__}  # type: ignore[attr-defined]
    assert names == {
        "retry",
        "attempt",
        "breaker_state_change",
        "outbox_enqueued",
        "outbox_delivered",
        "outbox_dead_lettered",
        "outbox_backlog",
        "realtime_state_change",
        "realtime_reconnect",
        "recovery_failed",
    }


def test_key_prefix_keeps_eight_characters() -> None:
    assert key_prefix("0123456789abcdef") == "01234567"
    assert key_prefix(None) is None


def test_live_outboxes_forgets_closed_ones_and_counts_a_file_once(tmp_path: Path) -> None:
    first, twin = Outbox(tmp_path / "a.db"), Outbox(tmp_path / "a.db")
    other = Outbox(tmp_path / "b.db")
    for box in (first, twin, other):
        track_outbox(box)
    paths = sorted(box.path for box in live_outboxes())
    assert paths == sorted({first.path, other.path})
    for box in (first, twin, other):
        box.close()
    assert not [box for box in live_outboxes() if box.path.startswith(str(tmp_path))]


# -- the request path --------------------------------------------------------------------


@responses.activate
def test_503_503_201_gives_two_retry_events_and_three_attempts(
    client: ChatClient, recorder: Recorder, sleep
) -> None:
    for status in (503, 503):
        responses.post(MESSAGES, status=status, json={"error": {"code": "unavailable"}})
    responses.post(MESSAGES, status=201, json=message_json())
    client.send_message("general", "hi")
    retries = recorder.of(RetryScheduled)
    assert [(r.attempt, r.reason, r.method, r.path) for r in retries] == [
        (1, "503", "POST", "/api/messages"),
        (2, "503", "POST", "/api/messages"),
    ]
    assert [r.delay for r in retries] == sleep.calls == [0.5, 1.0]
    assert {r.host for r in retries} == {"http://chat.test:80"}
    attempts = recorder.of(AttemptFinished)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "503"), (2, "503"), (3, "201")]
    assert all(a.duration >= 0 for a in attempts)


@responses.activate
def test_transport_errors_are_labelled_by_their_class(
    client: ChatClient, recorder: Recorder
) -> None:
    import requests

    responses.get(f"{BASE}/api/health", body=requests.ConnectionError("refused"))
    responses.get(f"{BASE}/api/health", json={"status": "ok"})
    assert client.health()
    assert [a.outcome for a in recorder.of(AttemptFinished)] == ["ConnectError", "200"]
    assert [r.reason for r in recorder.of(RetryScheduled)] == ["ConnectError"]


@responses.activate
def test_a_hook_that_raises_does_not_fail_the_send(sleep, clock) -> None:
    def explode(event: SDKEvent) -> None:
        raise RuntimeError("hook bug")

    responses.post(MESSAGES, status=503, json={})
    responses.post(MESSAGES, status=201, json=message_json())
    session = ChatSession(BASE, KEY, retry=NO_JITTER, sleep=sleep, clock=clock)
    with ChatClient(session=session, on_event=explode) as chat:
        assert chat.send_message("general", "hi").id == "m1"
    assert len(responses.calls) == 2


@responses.activate
def test_a_breaker_opening_fires_exactly_one_event(clock) -> None:
    recorder = Recorder()
    policy = BreakerPolicy(failure_threshold=2, failed_operations=2, recovery_timeout=30)
    session = ChatSession(BASE, KEY, retry=RetryPolicy(max_attempts=1), breaker=policy, clock=clock)
    responses.post(MESSAGES, status=503, json={})
    with ChatClient(session=session, on_event=recorder) as chat:
        with pytest.raises(ServerError):
            chat.send_message("general", "one")
        assert recorder.of(BreakerStateChanged) == []
        with pytest.raises(ServerError):
            chat.send_message("general", "two")
        for _ in range(3):  # rejected fast: no more changes
            with pytest.raises(CircuitBreakerOpenError):
                chat.send_message("general", "three")
    changes = recorder.of(BreakerStateChanged)
    assert len(changes) == 1
    (change,) = changes
    assert change.breaker == "rest:http://chat.test:80"
    assert (change.old, change.new) == (CircuitState.CLOSED, CircuitState.OPEN)
    assert change.retry_after == pytest.approx(30)
    clock.advance(31)
    assert session.breaker_for().state is CircuitState.HALF_OPEN
    last = recorder.of(BreakerStateChanged)[-1]
    assert (last.new, last.retry_after) == (CircuitState.HALF_OPEN, 0.0)


def test_breaker_events_are_not_built_without_hooks(clock) -> None:
    session = ChatSession(BASE, KEY, clock=clock)
    breaker = session.breaker_for()
    assert breaker is not None
    breaker.force_open()  # no hook: nothing to do, nothing fails
    assert not session.adapter.events.active


def test_breaker_events_keep_flowing_after_a_fork_reset(clock) -> None:
    recorder = Recorder()
    session = ChatSession(BASE, KEY, clock=clock)
    session.adapter.events.add(recorder)
    session.adapter.reset_after_fork()
    breaker = session.breaker_for()
    assert breaker is not None
    breaker.force_open()
    assert [e.new for e in recorder.of(BreakerStateChanged)] == [CircuitState.OPEN]


# -- structured logs ---------------------------------------------------------------------


@responses.activate
def test_retry_log_records_carry_fields_and_never_the_key_or_body(
    client: ChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    responses.post(MESSAGES, status=503, json={})
    responses.post(MESSAGES, status=201, json=message_json())
    key = "k-0123456789abcdef-secret"
    with caplog.at_level(logging.DEBUG, logger="chatsdk"):
        client.send_message("general", "a very private text", idempotency_key=key)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("retrying")]
    fields = {k: getattr(record, k) for k in ("host", "method", "path", "attempt", "key_prefix")}
    assert fields == {
        "host": "http://chat.test:80",
        "method": "POST",
        "path": "/api/messages",
        "attempt": 1,
        "key_prefix": "k-012345",
    }
    for r in caplog.records:
        text = json.dumps({k: str(v) for k, v in vars(r).items()}) + r.getMessage()
        assert key not in text and "a very private text" not in text and KEY not in text


@responses.activate
def test_every_give_up_log_line_carries_the_fields(sleep, clock, caplog) -> None:
    responses.post(MESSAGES, status=503, headers={"Retry-After": "999"}, json={})
    session = ChatSession(BASE, KEY, retry=NO_JITTER, sleep=sleep, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="chatsdk"), ChatClient(session=session) as chat:
        with pytest.raises(ServerError):
            chat.send_message("general", "hi")
    (record,) = [r for r in caplog.records if "not retrying" in r.getMessage()]
    assert record.attempt == 1 and record.host == "http://chat.test:80"


# -- the outbox --------------------------------------------------------------------------


def test_queue_message_fires_enqueued_and_close_fires_backlog(
    tmp_path: Path, recorder: Recorder
) -> None:
    path = tmp_path / "o.db"
    chat = ChatClient(BASE, KEY, outbox=path, close_timeout=0, on_event=recorder)
    chat._drainer.stop()  # type: ignore[union-attr]  # nothing is delivered: keep the backlog
    entry = chat.queue_message("general", "hi")
    reaction = chat.queue_reaction("m1", "+1")
    chat.close()
    enqueued = recorder.of(OutboxEnqueued)
    assert [(e.entry_id, e.kind, e.channel) for e in enqueued] == [
        (entry.id, "message", "general"),
        (reaction.id, "reaction", "reaction/m1"),
    ]
    assert recorder.of(OutboxBacklog) == [OutboxBacklog(count=2, path=str(path))]


def test_close_after_everything_was_delivered_reports_an_empty_backlog(
    tmp_path: Path, recorder: Recorder
) -> None:
    chat = ChatClient(BASE, KEY, outbox=tmp_path / "o.db", close_timeout=0, on_event=recorder)
    chat.close()
    chat.close()  # idempotent: reported once
    assert recorder.of(OutboxBacklog) == [OutboxBacklog(count=0, path=str(tmp_path / "o.db"))]


def test_delivered_and_dead_lettered_events(outbox: Outbox, clock, recorder: Recorder) -> None:
    ok = outbox.enqueue("message", "c1", body("c1"))
    bad = outbox.enqueue("message", "c2", body("c2"))
    deliver = FakeDeliver([None, UnprocessableEntityError(422, "invalid", "nope")])
    drainer = make(outbox, deliver, events=Emitter(recorder))
    clock.advance(2.5)
    run_once(drainer)
    (delivered,) = recorder.of(OutboxDelivered)
    assert (delivered.entry_id, delivered.attempts, delivered.age) == (ok.id, 1, 2.5)
    dead = recorder.of(OutboxDeadLettered)
    assert [(d.entry_id, d.attempts, d.reason) for d in dead] == [
        (bad.id, 1, "UnprocessableEntityError")
    ]
    assert outbox.stats().dead_letters == 1


def test_running_out_of_attempts_is_a_dead_letter_event(
    tmp_path: Path, clock, recorder: Recorder
) -> None:
    box = Outbox(tmp_path / "o.db", clock=clock, max_attempts=2)
    entry = box.enqueue("message", "c1", body("c1"))
    drainer = make(box, FakeDeliver([ConnectError("down"), ConnectError("down")]))
    drainer._events = Emitter(recorder)
    run_once(drainer)
    assert recorder.of(OutboxDeadLettered) == []
    clock.advance(60)
    run_once(drainer)
    (dead,) = recorder.of(OutboxDeadLettered)
    assert (dead.entry_id, dead.attempts, dead.reason) == (entry.id, 2, "ConnectError")
    box.close()


def test_drainer_without_events_builds_none(outbox: Outbox) -> None:
    outbox.enqueue("message", "c1", body("c1"))
    outbox.enqueue("message", "c2", body("c2"))
    drainer: Drainer = make(outbox, FakeDeliver([None, UnprocessableEntityError(422, "x", "y")]))
    assert not drainer._events.active
    run_once(drainer)
    assert outbox.stats().sent == 1 and outbox.stats().failed == 1


def test_drainer_log_records_carry_the_entry_fields(
    outbox: Outbox, clock, caplog: pytest.LogCaptureFixture
) -> None:
    entry = outbox.enqueue("message", "c1", body("c1"), idempotency_key="abcdefgh-secret-tail")
    drainer = make(outbox, FakeDeliver([ConnectError("down")]))
    with caplog.at_level(logging.INFO, logger="chatsdk"):
        run_once(drainer)
    (record,) = [r for r in caplog.records if "next attempt" in r.getMessage()]
    assert (record.entry_id, record.attempt, record.key_prefix) == (entry.id, 1, "abcdefgh")
    assert "secret-tail" not in json.dumps({k: str(v) for k, v in vars(record).items()})


def test_stats_json_has_what_a_monitor_alerts_on(outbox: Outbox, clock) -> None:
    outbox.enqueue("message", "c1", body("c1"))
    clock.advance(12)
    stats = outbox.stats()
    data = stats.to_json()
    assert data["oldest_pending_age"] == 12 and data["dead_letters"] == 0
    assert data["pending"] == 1 and data["queued"] == 1


def test_tracing_off_stores_no_trace_context(outbox: Outbox) -> None:
    assert _instrument.tracer is None
    entry = outbox.enqueue("message", "c1", body("c1"))
    assert entry.trace_context is None
    assert outbox.get(entry.id).trace_context is None  # type: ignore[union-attr]


@responses.activate
def test_the_clients_hooks_get_its_realtime_clients_events(
    client: ChatClient, recorder: Recorder
) -> None:
    responses.post(
        f"{BASE}/api/realtime/token",
        json={"token": "t", "url": "ws://127.0.0.1:1/connection/websocket", "expiresAt": 0},
    )
    realtime = client.realtime()
    assert realtime.events.active
    realtime.events.emit(RecoveryFailed(channel="chat:1"))
    assert recorder.of(RecoveryFailed) == [RecoveryFailed(channel="chat:1")]
    realtime.close()


def test_the_core_imports_neither_prometheus_nor_opentelemetry() -> None:
    import subprocess
    import sys

    code = (
        "import sys, chatsdk; c = chatsdk.ChatClient('http://h', 'k'); c.close(); "
        "bad = [m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("stored", ["{not json", "[1, 2]", '{"traceparent": "00-ab-cd-01"}'])
def test_a_damaged_stored_trace_context_is_dropped_not_fatal(outbox: Outbox, stored: str) -> None:
    import sqlite3

    entry = outbox.enqueue("message", "c1", body("c1"))
    conn = sqlite3.connect(outbox.path)
    conn.execute("UPDATE entries SET trace_context = ? WHERE id = ?", (stored, entry.id))
    conn.commit()
    conn.close()
    read = outbox.get(entry.id)
    assert read is not None
    expected = {"traceparent": "00-ab-cd-01"} if stored.startswith('{"') else None
    assert read.trace_context == expected
