"""The outbox under hostile conditions (issue 12, rows 10, 17 and 18).

- row 10: a server answering 429 with ``Retry-After: 99999999`` (a purpose-made server in
  :mod:`tests.hostile.outbox_servers`, not the reference server);
- row 17: the wall clock stepped back 1 h or forward 24 h while the outbox drains
  (injected wall and monotonic clocks, on SQLite and PostgreSQL);
- row 18: an existing outbox file (and its ``-wal``/``-shm``) readable by other users.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import chatsdk._outbox.outbox as outbox_module
import chatsdk._outbox.sqlite as sqlite_module
from chatsdk import ChatClient, RetryPolicy
from chatsdk._errors import OutboxError
from chatsdk._outbox.drainer import Drainer
from chatsdk._outbox.models import Operation
from chatsdk._outbox.outbox import Outbox
from tests.helpers import FakeClock, message_response, wait_until
from tests.hostile.outbox_servers import rate_limit_server
from tests.processes import require_module

TEXT = "body-text-7f3a9c"
BODY = {"channelId": "c1", "text": TEXT, "attachments": [], "parentId": None}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- row 10: Retry-After: 99999999 --------------------------------------------------------


def test_huge_retry_after_is_capped_by_max_retry_after_and_the_entry_delivered_later(
    tmp_path: Path,
) -> None:
    cap = 30.0
    clock = FakeClock(time.time())
    box = Outbox(tmp_path / "outbox.db", clock=clock)
    policy = RetryPolicy(max_retry_after=cap)
    with (
        rate_limit_server("99999999") as server,
        ChatClient(server.url, "test-key", retry=policy, outbox=box) as chat,
    ):
        entry = chat.queue_message("c1", TEXT)

        def rescheduled() -> bool:
            current = box.get(entry.id)
            return current is not None and current.status == "queued" and current.attempts >= 1

        assert wait_until(rescheduled, timeout=30)
        current = box.get(entry.id)
        assert current is not None
        assert current.last_error is not None and "429" in current.last_error
        # Rescheduled within the policy's cap, not 10**8 s (3 years) ahead.
        assert current.next_attempt_at <= clock.now + cap
        assert server.requests == [(429, entry.idempotency_key)]

        server.recover()
        clock.advance(cap)
        assert chat.flush(timeout=30)
        delivered = box.get(entry.id)
        assert delivered is not None and delivered.status == "sent"
        assert entry.wait(timeout=5).text == TEXT
        # Resent under the same key once the wait was over.
        assert server.requests == [(429, entry.idempotency_key), (201, entry.idempotency_key)]
    box.close()


# -- row 17: the wall clock steps while the outbox drains ---------------------------------

T0 = 1_796_000_000.0
HOUR, DAY = 3600.0, 86400.0


class Clocks:
    """An injected wall clock and monotonic clock: time passes on both, a step on the wall only."""

    def __init__(self) -> None:
        self.wall = FakeClock(T0)
        self.monotonic = FakeClock(500.0)

    def wait(self, seconds: float) -> None:
        """Time really passes."""
        self.wall.advance(seconds)
        self.monotonic.advance(seconds)

    def step(self, seconds: float) -> None:
        """The wall clock is stepped (NTP, a restored VM, ``date -s``); no time passes."""
        self.wall.advance(seconds)


@pytest.fixture(params=["sqlite", "postgresql", "django-sqlite", "django-postgresql"])
def make_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Outbox]]:
    """Outbox(clocks, **kwargs) on this test's store: a file, a PostgreSQL schema of its own,
    or the Django database store on a database alias of its own (SQLite or PostgreSQL)."""
    made: list[Outbox] = []
    target: Any = tmp_path / "outbox.db"
    extra: dict[str, Any] = {}
    backend = str(request.param)
    if backend == "postgresql" or backend == "django-postgresql":
        target = request.getfixturevalue("postgres_url")
        extra = {"schema": request.getfixturevalue("pg_schema")}
    with contextlib.ExitStack() as stack:
        if backend.startswith("django"):
            require_module("django")  # fails under CI=true instead of skipping
            require_module("pytest_django")
            from chatsdk.integrations.django._store import DjangoStore
            from tests.django_db import migrated_alias

            pg = {"postgres_url": target, **extra} if extra else {}
            blocker = request.getfixturevalue("django_db_blocker")
            vendor = backend.removeprefix("django-")
            alias = stack.enter_context(migrated_alias(vendor, tmp_path, blocker, **pg))

        def make(clocks: Clocks, **kwargs: Any) -> Outbox:
            times = {"clock": clocks.wall, "monotonic": clocks.monotonic}
            if backend.startswith("django"):
                box = Outbox(DjangoStore(alias), **times, **kwargs)
            else:
                box = Outbox(target, **times, **extra, **kwargs)
            made.append(box)
            return box

        yield make
        for box in made:
            box.close()


class Server:
    """A deliver() that creates the message, and runs ``during`` in the first delivery."""

    def __init__(self, during: Callable[[], None]) -> None:
        self.during: Callable[[], None] | None = during
        self.texts: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, op: Operation) -> dict[str, Any]:
        with self.lock:
            during, self.during = self.during, None
            self.texts.append(op.body["text"])
        if during is not None:
            during()
        return message_response(op)


def drain_five(box: Outbox, during: Callable[[], None]) -> tuple[bool, Server]:
    """Queue 5 entries on one channel, drain them with ``during`` run in the first delivery."""
    server = Server(during)
    for n in range(5):
        box.enqueue("message", "c1", {**BODY, "text": f"{TEXT}-{n}"})
    drainer = Drainer(box, server)
    try:
        drainer.start()
        drained = drainer.flush(timeout=30)  # a hang (a stall of the entries) is the failure
    finally:
        drainer.stop(timeout=10)
    return drained, server


@pytest.mark.parametrize("step", [-HOUR, DAY], ids=["back-1h", "forward-24h"])
def test_a_wall_clock_step_while_draining_neither_stalls_nor_expires_entries(
    make_outbox: Callable[..., Outbox], step: float, caplog: pytest.LogCaptureFixture
) -> None:
    clocks = Clocks()
    box = make_outbox(clocks)
    with caplog.at_level(logging.WARNING, logger="chatsdk"):
        drained, server = drain_five(box, lambda: clocks.step(step))
    assert drained is True
    assert server.texts == [f"{TEXT}-{n}" for n in range(5)]  # in order, each once
    stats = box.stats()
    assert (stats.sent, stats.expired, stats.pending) == (5, 0, 0)
    assert any("stepped" in r.getMessage() for r in caplog.records)


def test_stored_times_move_by_the_step_and_stay_the_entries_true_age(
    make_outbox: Callable[..., Outbox],
) -> None:
    clocks = Clocks()
    box = make_outbox(clocks, max_age=HOUR)
    entry = box.enqueue("message", "c1", BODY)
    clocks.wait(10)
    clocks.step(DAY)
    clocks.wait(5)
    assert box.entries("expired") == []  # 15 s old, not a day
    moved = box.get(entry.id)
    assert moved is not None and moved.status == "queued"
    assert moved.created_at == T0 + DAY  # its enqueue time on the wall clock as it now reads
    assert box.stats().oldest_pending_age == 15.0
    clocks.wait(HOUR)  # and then it really waits
    assert [e.id for e in box.entries("expired")] == [entry.id]


def test_two_processes_that_see_the_same_step_move_an_entry_once(
    make_outbox: Callable[..., Outbox],
) -> None:
    clocks = Clocks()
    other = Clocks()
    other.wall = clocks.wall  # one host's wall clock; each process its own monotonic reading
    a, b = make_outbox(clocks), make_outbox(other)
    entry = a.enqueue("message", "c1", BODY)
    [claimed], _ = b.claim(1)  # b holds it too (it is delivering it)
    assert claimed.id == entry.id
    clocks.step(-HOUR)
    a.stats()  # a sees the step first and moves the entry
    b.renew_leases()  # b sees it too: the entry moved already, b leaves it
    moved = a.get(entry.id)
    assert moved is not None and moved.created_at == T0 - HOUR
    assert moved.lease_expires_at is not None and moved.lease_expires_at == T0 - HOUR + 30.0


def test_a_step_not_handled_because_the_store_failed_is_handled_at_the_next_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_DEADLINE", 0.2)  # the lock is held on purpose
    clocks = Clocks()
    box = Outbox(tmp_path / "outbox.db", clock=clocks.wall, monotonic=clocks.monotonic)
    entry = box.enqueue("message", "c1", BODY)
    holder = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        clocks.step(-HOUR)
        with pytest.raises(OutboxError):
            box.expedite()
        holder.execute("ROLLBACK")
        clocks.wait(1)
        box.expedite()  # the step is seen again, and handled
    finally:
        holder.close()
    moved = box.get(entry.id)
    assert moved is not None and moved.created_at == T0 - HOUR
    box.close()


def test_only_the_newest_entries_times_are_remembered(
    make_outbox: Callable[..., Outbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "KNOWN_MAX", 2)  # instead of 10,000
    clocks = Clocks()
    box = make_outbox(clocks)
    oldest, *newest = [box.enqueue("message", "c1", {**BODY, "text": str(n)}) for n in range(3)]
    clocks.step(-HOUR)
    box.expedite()
    times = {e.id: e.created_at for e in box.entries()}
    assert times == {oldest.id: T0, newest[0].id: T0 - HOUR, newest[1].id: T0 - HOUR}


def test_flush_is_false_when_entries_really_expired(make_outbox: Callable[..., Outbox]) -> None:
    clocks = Clocks()
    box = make_outbox(clocks, max_age=HOUR)
    for n in range(5):
        box.enqueue("message", "c1", {**BODY, "text": f"{TEXT}-{n}"})
    # The network was away longer than max_age: both clocks agree that the time passed.
    # (Before: flush() said True, nothing being pending any more.)
    clocks.wait(HOUR + 1)
    server = Server(lambda: None)
    drainer = Drainer(box, server)
    try:
        drainer.start()
        result = drainer.flush_result(timeout=30)
    finally:
        drainer.stop(timeout=10)
    assert not result
    assert (result.pending, result.expired) == (0, 5)
    assert server.texts == []
    assert box.stats().expired == 5
    # Reported once: a later flush with nothing new expired is a success again.
    assert drainer.flush(timeout=5) is True
    assert box.drained(0) and box.wait_idle(0)


def test_chat_flush_is_falsy_when_the_entry_expired_against_a_rate_limiting_server(
    tmp_path: Path,
) -> None:
    clocks = Clocks()
    box = Outbox(tmp_path / "outbox.db", clock=clocks.wall, monotonic=clocks.monotonic)
    with rate_limit_server("5") as server, ChatClient(server.url, "test-key", outbox=box) as chat:
        entry = chat.queue_message("c1", TEXT)
        assert wait_until(lambda: len(server.requests) >= 1, timeout=30)
        clocks.wait(box.max_age + 1)  # rate-limited for a whole day: really too late
        result = chat.flush(timeout=30)
        assert not result
        assert (result.pending, result.expired) == (0, 1)
        expired = box.get(entry.id)
        assert expired is not None and expired.status == "expired"
    box.close()


# -- row 18: an existing file with mode 0644 ---------------------------------------------


def test_existing_world_readable_file_and_side_files_are_tightened_to_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        box.enqueue("message", "c1", BODY)
    # Another tool (a backup restore, a cp without -p) left the file and its WAL/SHM 0644;
    # a reader keeps the side files in place.
    reader = sqlite3.connect(path)
    reader.execute("SELECT count(*) FROM entries").fetchone()
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    for name in files:
        assert name.exists(), name
        os.chmod(name, 0o644)
    try:
        with caplog.at_level(logging.WARNING, logger="chatsdk"), Outbox(path) as box:
            assert [mode(name) for name in files] == [0o600, 0o600, 0o600]
            assert box.pending_count() == 1  # the entries are still there
    finally:
        reader.close()
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert records, "no WARNING about the permissions"
    assert {r.name for r in records} == {"chatsdk._outbox.sqlite"}
    text = "\n".join(r.getMessage() for r in records)
    for name in files:
        assert str(name) in text
    assert "0644" in text and "0600" in text
    assert TEXT not in text  # nothing of the message


def test_tightening_only_happens_when_needed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    with caplog.at_level(logging.WARNING, logger="chatsdk"), Outbox(path):
        pass
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert mode(path) == 0o600


def test_another_users_file_is_left_alone_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    os.chmod(path, 0o644)
    os.chown(path, 65534, -1)
    with caplog.at_level(logging.WARNING, logger="chatsdk"), Outbox(path):
        pass
    assert mode(path) == 0o644
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in record.getMessage() and "65534" in record.getMessage()
