"""Unit tests of the outbox's process lifecycle: origins and adoption, leases (renewed,
fenced, re-taken), undecodable rows, the file deleted while open, busy waits taken without
the lock, drainer survival and status."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chatsdk._outbox.sqlite as db_module
import chatsdk._outbox.sqlite_store as store_module
from chatsdk._errors import ConnectError, OutboxError, OutboxFileError
from chatsdk._outbox.drainer import Drainer
from chatsdk._outbox.models import Operation, entry_from_row, row_problem
from chatsdk._outbox.outbox import Outbox
from chatsdk._outbox.sqlite import Database
from tests.helpers import FakeClock, wait_until
from tests.unit.test_outbox_drainer import body as _body
from tests.unit.test_outbox_drainer import response

T0 = 1_700_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", clock=clock, lease_seconds=30.0)
    yield box
    box.close()


def body(channel: str = "c1", text: str = "hi") -> dict[str, Any]:
    return _body(channel, text)


def raw(box: Outbox, statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(box.path, isolation_level=None)
    try:
        return conn.execute(statement, args).fetchall()
    finally:
        conn.close()


# -- origins: what close() waits for ------------------------------------------------------


def test_own_pending_counts_only_this_processs_entries(outbox: Outbox) -> None:
    mine = outbox.enqueue("message", "c1", body())
    other = outbox.enqueue("message", "c2", body("c2"))
    raw(outbox, "UPDATE entries SET origin = 'otherhost:1:x' WHERE id = ?", (other.id,))
    assert outbox.pending_count() == 2 and outbox.pending_count(own=True) == 1
    (claimed, *_), _ = outbox.claim(1)
    assert claimed.id == mine.id
    outbox.ack(claimed, response(claimed.operation))
    assert outbox.pending_count(own=True) == 0
    assert outbox.wait_idle(0, own=True) and not outbox.wait_idle(0)


def test_adopt_orphans_takes_dead_and_unknown_origins_only(outbox: Outbox) -> None:
    host = outbox.owner.split(":")[0]
    ids = [outbox.enqueue("message", f"c{i}", body(f"c{i}")).id for i in range(5)]
    origins = [f"{host}:999999999:dead", None, f"{host}:{os.getpid()}:alive", "elsewhere:1:x"]
    for entry_id, origin in zip(ids, origins, strict=False):
        raw(outbox, "UPDATE entries SET origin = ? WHERE id = ?", (origin, entry_id))
    assert outbox.pending_count(own=True) == 1
    assert outbox.adopt_orphans() == 2  # the dead one and the one from before origins
    assert outbox.pending_count(own=True) == 3
    assert outbox.adopt_orphans() == 0


def test_windows_never_probes_pids(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, _sig: killed.append(pid))
    monkeypatch.setattr(store_module, "CAN_PROBE_PIDS", False)
    assert store_module.owner_alive("h:999999999:x", "h")
    assert killed == []  # on Windows os.kill(pid, 0) would have ended the process


# -- leases ----------------------------------------------------------------------------


def test_leases_in_flight_are_renewed(outbox: Outbox, clock: FakeClock) -> None:
    outbox.enqueue("message", "c1", body())
    assert outbox.renew_leases() == 0  # nothing in flight
    (entry,), _ = outbox.claim(1)
    clock.advance(25)
    assert outbox.renew_leases() == 1
    clock.advance(25)  # 50 s after the claim, the lease (30 s) still holds
    other = Outbox(outbox.path, clock=clock)
    raw(outbox, "UPDATE entries SET lease_owner = 'otherhost:1:x'")
    assert other.claim(1) == ([], T0 + 55)
    other.close()
    outbox.forget(entry)
    assert outbox.renew_leases() == 0


def test_own_claim_whose_outcome_was_lost_is_retaken_after_its_lease(
    outbox: Outbox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = outbox.enqueue("message", "c1", body())
    (claimed,), _ = outbox.claim(1)
    real = outbox._store._run

    def disk_full(fn: Any, *, write: bool = True) -> Any:
        raise OutboxError("database or disk is full")

    monkeypatch.setattr(outbox._store, "_run", disk_full)
    with pytest.raises(OutboxError, match="disk is full"):
        outbox.ack(claimed, response(claimed.operation))
    monkeypatch.setattr(outbox._store, "_run", real)
    assert outbox.claim(1) == ([], T0 + 30)  # space is back; the lease still runs
    clock.advance(30)
    (again,), _ = outbox.claim(1)
    assert (again.id, again.attempts) == (entry.id, 2)
    assert again.lease_token != claimed.lease_token
    outbox.ack(again, response(again.operation))
    assert outbox.get(entry.id).status == "sent"  # type: ignore[union-attr]


def test_a_stale_holders_ack_changes_nothing(
    outbox: Outbox, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    entry = outbox.enqueue("message", "c1", body())
    (first,), _ = outbox.claim(1)
    other = Outbox(outbox.path, clock=clock)
    raw(outbox, "UPDATE entries SET lease_owner = 'otherhost:1:x'")  # as if another host
    clock.advance(31)
    (second,), _ = other.claim(1)
    with caplog.at_level(logging.WARNING, "chatsdk"):
        outbox.ack(first, response(first.operation))
    assert "no longer ours" in caplog.text
    now = outbox.get(entry.id)
    assert now is not None and (now.status, now.lease_owner) == ("sending", other.owner)
    other.ack(second, response(second.operation))
    assert outbox.get(entry.id).status == "sent"  # type: ignore[union-attr]
    other.close()


# -- undecodable rows --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "reason"),
    [
        ("message", "{not json", "body is not JSON"),
        ("message", "[1, 2]", "JSON list, not an object"),
        ("bogus", "{}", "unknown kind 'bogus'"),
    ],
)
def test_an_undecodable_row_is_a_dead_letter_with_the_reason(
    outbox: Outbox, kind: str, text: str, reason: str
) -> None:
    bad = outbox.enqueue("message", "c1", body(text="bad"))
    good = [outbox.enqueue("message", "c1", body(text=f"g{i}")) for i in range(3)]
    raw(outbox, "UPDATE entries SET kind = ?, body = ? WHERE id = ?", (kind, text, bad.id))
    delivered: list[int] = []
    claimed, _ = outbox.claim(5)
    assert claimed == []  # the bad head became a dead letter; the channel moves on
    while True:
        claimed, _ = outbox.claim(5)
        if not claimed:
            break
        for entry in claimed:
            delivered.append(entry.id)
            outbox.ack(entry, response(entry.operation))
    assert delivered == [e.id for e in good]
    dead = outbox.get(bad.id)
    assert dead is not None and dead.status == "failed"
    assert dead.last_error is not None and reason in dead.last_error
    with pytest.raises(OutboxError, match="undecodable"):
        dead.result()


def test_listing_shows_an_undecodable_row_instead_of_failing(outbox: Outbox) -> None:
    entry = outbox.enqueue("message", "c1", body())
    raw(outbox, "UPDATE entries SET body = 'oops', error = 'not json' WHERE id = ?", (entry.id,))
    (listed,) = outbox.entries()
    assert listed.operation.body == {"undecodable": "oops"}
    assert listed._error == {"type": "OutboxError", "message": "not json"}
    raw(outbox, "UPDATE entries SET error = '[1]'")
    assert outbox.entries()[0]._error == {"type": "OutboxError", "message": "[1]"}


def test_row_problem_accepts_a_good_row(outbox: Outbox) -> None:
    outbox.enqueue("message", "c1", body())
    (row,) = outbox._store._run(
        lambda c: c.execute(store_module.sql.SELECT).fetchall(), write=False
    )
    assert row_problem(row) is None
    assert entry_from_row(outbox, row).operation.body == body()


# -- the file deleted or replaced while open ---------------------------------------------


def test_outbox_file_deleted_while_open_is_recreated_with_its_pending_entries(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    first = outbox.enqueue("message", "c1", body(text="1"))
    outbox.enqueue("message", "c2", body("c2", text="2"))
    (claimed, *_), _ = outbox.claim(1)
    outbox.ack(claimed, response(claimed.operation))  # sent: not carried over
    os.remove(outbox.path)  # `rm outbox.db`: its -wal and -shm stay behind
    with caplog.at_level(logging.ERROR, "chatsdk"):
        outbox.enqueue("message", "c3", body("c3", text="3"))
    assert "deleted or replaced" in caplog.text and "1 entries still pending" in caplog.text
    assert os.path.exists(outbox.path)
    texts = sorted(e.operation.body["text"] for e in outbox.entries())
    assert texts == ["2", "3"]
    keys = [e.idempotency_key for e in outbox.entries()]
    assert first.idempotency_key not in keys  # the sent one stayed with the deleted file
    # Another process opening the path sees the same entries: they are in the file.
    other = Outbox(outbox.path)
    assert other.pending_count() == 2
    other.close()


def test_outbox_file_replaced_by_a_foreign_file_is_refused(outbox: Outbox) -> None:
    outbox.enqueue("message", "c1", body())
    os.remove(outbox.path)
    Path(outbox.path).write_bytes(b"someone else's file" * 10)
    for _ in range(2):  # refused each time, the entries still safe in the old connection
        with pytest.raises(OutboxFileError):
            outbox.pending_count()
    os.remove(outbox.path)
    assert outbox.pending_count() == 1  # a fresh file, with the entry carried over


def test_a_forked_child_whose_file_changed_checks_it_again(tmp_path: Path) -> None:
    database = Database(tmp_path / "o.db", "normal")
    parent = database._conn
    database.after_fork()
    for suffix in ("", "-wal", "-shm"):
        os.remove(database.path + suffix)
    Path(database.path).write_bytes(b"not an outbox at all" * 10)
    with pytest.raises(OutboxFileError):
        database.run(lambda c: None)
    assert parent is not None
    parent.close()
    database.close()


def test_rescue_that_fails_midway_keeps_the_old_file(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox.enqueue("message", "c1", body())
    os.remove(outbox.path)
    real_open = outbox._store._db._open

    def open_then_break() -> sqlite3.Connection:
        conn = real_open()
        conn.execute("DROP TABLE entries")  # the copy's INSERT fails
        return conn

    monkeypatch.setattr(outbox._store._db, "_open", open_then_break)
    with pytest.raises(OutboxError, match="no such table"):
        outbox.pending_count()
    monkeypatch.undo()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(outbox.path + suffix):
            os.remove(outbox.path + suffix)
    assert outbox.pending_count() == 1


# -- busy waits ----------------------------------------------------------------------------


def test_a_busy_wait_does_not_hold_up_the_processs_other_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "BUSY_DEADLINE", 60.0)
    box = Outbox(tmp_path / "o.db")
    box.enqueue("message", "c1", body())
    holder = sqlite3.connect(box.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    writer_waiting = threading.Event()
    real_sleep = box._store._db._sleep

    def sleep(seconds: float) -> None:
        writer_waiting.set()
        real_sleep(seconds)

    box._store._db._sleep = sleep
    done = threading.Event()

    def write() -> None:
        box.enqueue("message", "c1", body(text="blocked"))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert writer_waiting.wait(10)
    # While the writer waits for the other process, this thread's read goes through.
    assert box.pending_count() == 1 and box.has_pending()
    assert not done.is_set()
    holder.execute("COMMIT")
    writer.join(30)
    assert done.is_set() and box.pending_count() == 2
    holder.close()
    box.close()


# -- the drainer's survival and status ---------------------------------------------------


def test_drainer_thread_survives_an_unexpected_error_in_its_loop(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    drainer = Drainer(outbox, response, workers=1, poll_interval=0.01)
    calls: list[int] = []
    real = outbox.claim

    def buggy_claim(limit: int) -> Any:
        calls.append(limit)
        if len(calls) == 1:
            raise KeyError("a bug")
        return real(limit)

    monkeypatch.setattr(outbox, "claim", buggy_claim)
    with caplog.at_level(logging.ERROR, "chatsdk"):
        drainer.start()
        entry = outbox.enqueue("message", "c1", body())
        assert entry.wait(30).text == "hi"
    assert "unexpected error" in caplog.text and "KeyError" in caplog.text
    assert drainer.status == "running" and outbox.stats().drainer == "running"
    assert drainer.stop(30)
    assert drainer.status == "stopped" and outbox.stats().drainer == "stopped"


def test_worker_survives_an_unexpected_error_and_the_entry_is_retaken(
    outbox: Outbox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    drainer = Drainer(outbox, response, workers=1, clock=clock)
    entry = outbox.enqueue("message", "c1", body())
    (claimed,), _ = outbox.claim(1)
    monkeypatch.setattr(drainer, "process", lambda *_a, **_k: 1 / 0)
    assert drainer._process_one(claimed, None) is None  # logged, not raised
    assert claimed.lease_token not in outbox._held
    monkeypatch.undo()
    clock.advance(31)
    (again,), _ = outbox.claim(1)
    assert again.id == entry.id
    drainer.process(again)
    assert outbox.get(entry.id).status == "sent"  # type: ignore[union-attr]


def test_status_reports_a_dead_thread_and_an_auth_stop(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    drainer = Drainer(outbox, response, workers=1)

    def interrupted() -> None:
        raise SystemExit  # what no exception of chatsdk's does; only the interpreter

    with caplog.at_level(logging.ERROR, "chatsdk"), pytest.raises(SystemExit):
        drainer._guard(interrupted)
    assert drainer.status.startswith("dead: thread") and "ended unexpectedly" in caplog.text
    assert outbox.stats().drainer == drainer.status
    drainer._after_fork()  # a child has no dead threads of its own
    assert drainer.status == "running"
    drainer._auth_error = ConnectError("401")
    assert drainer.status.startswith("stopped: the server refused the API key")
    drainer._auth_error = None
    drainer._paused_until = float("inf")
    assert drainer.status.startswith("paused: circuit open")
    drainer._paused_until = 0.0
    outbox.detach(drainer)
    assert outbox.stats().drainer is None
    drainer._died = None
    drainer._stopping = True
    drainer._guard(lambda: None)  # a thread that ends while stopping is not reported
    assert drainer._died is None and drainer.status == "stopped"


def test_the_loop_renews_leases_of_deliveries_in_flight(outbox: Outbox, clock: FakeClock) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(op: Operation) -> dict[str, Any]:
        started.set()
        release.wait(30)
        return response(op)

    drainer = Drainer(outbox, slow, workers=1, clock=clock, poll_interval=0.01)
    drainer._renew_every = 0.01
    entry = outbox.enqueue("message", "c1", body())
    drainer.start()
    assert started.wait(30)
    first = outbox.get(entry.id)
    assert first is not None and first.lease_expires_at == T0 + 30
    clock.advance(20)
    assert wait_until(lambda: outbox.get(entry.id).lease_expires_at == T0 + 50)  # type: ignore[union-attr]
    release.set()
    assert entry.wait(30).text == "hi"
    assert drainer.stop(30)


def test_flush_own_waits_only_for_this_processs_entries(outbox: Outbox) -> None:
    drainer = Drainer(outbox, response, workers=1)
    other = outbox.enqueue("message", "c1", body())
    raw(outbox, "UPDATE entries SET origin = 'otherhost:1:x', next_attempt_at = ?", (T0 + 9e9,))
    assert drainer.flush(0, own=True)
    assert not drainer.flush(0)
    assert outbox.get(other.id).status == "queued"  # type: ignore[union-attr]
    assert drainer.stop(1)


def test_listeners_can_be_removed(outbox: Outbox) -> None:
    calls: list[str] = []

    def listener() -> None:
        calls.append("x")

    outbox.add_listener(listener)
    outbox.enqueue("message", "c1", body())
    outbox.remove_listener(listener)
    outbox.remove_listener(listener)  # unknown: ignored
    outbox.enqueue("message", "c1", body(text="2"))
    assert calls == ["x"]
