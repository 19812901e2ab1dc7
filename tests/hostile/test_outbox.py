"""The outbox under hostile conditions (issue 12, rows 10, 17 and 18).

- row 10: a server answering 429 with ``Retry-After: 99999999`` (a purpose-made server in
  :mod:`tests.hostile.outbox_servers`, not the reference server);
- row 17: the wall clock stepped back 1 h or forward 24 h while the outbox drains
  (injected wall and monotonic clocks, on SQLite and PostgreSQL);
- row 18: an existing outbox file (and its ``-wal``/``-shm``) readable by other users.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from chatsdk import ChatClient, RetryPolicy
from chatsdk._outbox.outbox import Outbox
from tests.helpers import FakeClock, wait_until
from tests.hostile.outbox_servers import rate_limit_server

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
