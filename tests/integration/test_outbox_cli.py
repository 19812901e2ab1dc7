"""``chatsdk outbox`` against real files and the reference server, run as a subprocess."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsdk._errors import BadRequestError
from chatsdk._outbox.outbox import Outbox
from chatsdk.cli._progress import progress_bar
from chatsdk.testing import ReferenceServer
from tests.integration.cli_helpers import KEY, base_env, chatsdk, config_env
from tests.postgres import free_port


def body(channel: str, text: str) -> dict[str, object]:
    return {"channelId": channel, "text": text, "attachments": [], "parentId": None}


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,)) as srv:
        yield srv


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """An outbox with one dead letter (channel a) and one queued entry (channel b)."""
    file = tmp_path / "o.db"
    with Outbox(file) as box:
        box.enqueue("message", "a", body("a", "one"))
        box.enqueue("message", "b", body("b", "two"))
        (first, second), _ = box.claim(2)
        box.fail(first, BadRequestError(400, "invalid_request", "text: too long"))
        box.release(second)
    return file


@pytest.fixture
def env(server: ReferenceServer, tmp_path: Path, path: Path) -> dict[str, str]:
    return config_env(server.url, tmp_path, CHATSDK_OUTBOX=str(path))


def test_status_exits_65_on_dead_letters_and_says_why(env: dict[str, str]) -> None:
    result = chatsdk("outbox", "status", env=env)
    assert result.code == 65, result
    assert "queued   1" in result.out and "failed   1" in result.out
    assert "oldest pending:" in result.out
    assert "1 dead-lettered entries (1 failed, 0 expired)" in result.err
    as_json = chatsdk("outbox", "status", "--json", env=env)
    assert as_json.code == 65
    data = json.loads(as_json.out)
    assert (data["queued"], data["failed"]) == (1, 1) and data["oldest_pending_age"] >= 0


def test_status_max_age_exits_75_for_an_old_pending_entry(tmp_path: Path) -> None:
    file = tmp_path / "old.db"
    with Outbox(file, clock=lambda: time.time() - 600) as box:  # queued ten minutes ago
        box.enqueue("message", "a", body("a", "old"))
    env = base_env(CHATSDK_OUTBOX=str(file))
    assert chatsdk("outbox", "status", env=env).code == 0
    assert chatsdk("outbox", "status", "--max-age", "3600", env=env).code == 0
    result = chatsdk("outbox", "status", "--max-age", "60", env=env)
    assert result.code == 75, result
    assert "oldest pending entry is 60" in result.err  # 600 s and what the test took
    assert "s old, more than --max-age 60s" in result.err


def test_status_is_0_when_all_is_well(tmp_path: Path) -> None:
    file = tmp_path / "fresh.db"
    with Outbox(file) as box:
        box.enqueue("message", "a", body("a", "fresh"))
    result = chatsdk("outbox", "--path", str(file), "status", "--max-age", "60", env=base_env())
    assert (result.code, result.err) == (0, "")


def test_list_text_and_json(env: dict[str, str], path: Path) -> None:
    result = chatsdk("outbox", "list", env=env)
    assert result.code == 0
    assert len(result.lines) == 3 and "HTTP 400 invalid_request: text: too long" in result.lines[1]
    queued = chatsdk(
        "outbox", "--outbox", str(path), "list", "--status", "queued", "--json", env=base_env()
    )
    (line,) = queued.lines
    assert json.loads(line)["channel"] == "b"


def test_retry_and_purge(env: dict[str, str]) -> None:
    result = chatsdk("outbox", "retry", "1", env=env)
    assert result.code == 0 and "entry 1 queued again" in result.out
    again = chatsdk("outbox", "retry", "1", env=env)  # queued now: not retryable
    assert again.code == 65 and "cannot retry" in again.err
    missing = chatsdk("outbox", "retry", "99", env=env)
    assert missing.code == 65 and "no outbox entry 99" in missing.err
    purged = chatsdk("outbox", "purge", "--status", "failed", "--status", "sent", env=env)
    assert purged.code == 0 and "purged 0 entries" in purged.out


def test_missing_path_exits_78(tmp_path: Path) -> None:
    result = chatsdk("outbox", "status", env=base_env())
    assert result.code == 78 and "--path" in result.err
    result = chatsdk("outbox", "--path", str(tmp_path / "nope.db"), "status", env=base_env())
    assert result.code == 78 and "no such file" in result.err


@pytest.mark.parametrize("argv", [["status"], ["drain", "--forever"]])
def test_an_unreachable_outbox_database_exits_69(
    server: ReferenceServer, tmp_path: Path, argv: list[str]
) -> None:
    # Seen before: 78 ("configuration missing or unusable"), which tells a supervisor not to
    # try again; the database being down (a restart, a failover) is worth another try.
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = chatsdk("outbox", "--path", url, *argv, env=config_env(server.url, tmp_path))
    assert result.code == 69, result.err
    assert "database unreachable" in result.err


def test_drain_exits_65_when_entries_failed_for_good(
    server: ReferenceServer, env: dict[str, str], path: Path
) -> None:
    with Outbox(path) as box:  # a second dead letter made during this drain
        box.enqueue("message", "c", body("c", "x" * 4001))
    result = chatsdk("outbox", "drain", "--timeout", "20", env=env)
    assert result.code == 65, result
    assert "sent 1, failed 1, pending 0" in result.out
    assert "1 entries failed for good" in result.err
    assert [m["text"] for m in server.messages("b")] == ["two"]


def test_drain_delivers_and_exits_0(server: ReferenceServer, tmp_path: Path) -> None:
    file = tmp_path / "q.db"
    with Outbox(file) as box:
        for i in range(5):
            box.enqueue("message", "q", body("q", f"m{i}"))
    env = config_env(server.url, tmp_path, CHATSDK_OUTBOX=str(file))
    result = chatsdk("outbox", "drain", "--json", env=env)
    assert result.code == 0, result
    assert json.loads(result.out) == {"sent": 5, "failed": 0, "pending": 0}
    assert [m["text"] for m in server.messages("q")] == [f"m{i}" for i in range(5)]
    assert result.err == ""  # no progress bar off a terminal


def test_drain_refused_key_exits_77_and_keeps_the_entries(
    server: ReferenceServer, tmp_path: Path, path: Path
) -> None:
    env = config_env(server.url, tmp_path, key="sk-wrong-2b7c9d", CHATSDK_OUTBOX=str(path))
    result = chatsdk("outbox", "drain", env=env, secrets=("sk-wrong-2b7c9d",))
    assert result.code == 77, result
    assert "key was refused" in result.err and "1 entries stay queued" in result.err


def test_drain_with_the_server_down_exits_69(server: ReferenceServer, env: dict[str, str]) -> None:
    server.stop()
    result = chatsdk("outbox", "drain", "--timeout", "3", env=env)
    assert result.code == 69, result
    assert "pending 1" in result.out and "unavailable" in result.err


def test_drain_out_of_time_before_any_attempt_exits_75(
    server: ReferenceServer, env: dict[str, str]
) -> None:
    server.outage(30)  # connections hang up: nothing is delivered in 0 s
    result = chatsdk("outbox", "drain", "--timeout", "0", env=env)
    assert result.code == 75, result
    assert "still queued" in result.err


def test_progress_bar_is_tqdm_on_a_terminal_and_silent_elsewhere() -> None:
    stream = io.StringIO()
    bar = progress_bar(4, "draining", stream=stream, force=True, unit="msg")
    bar.n = 3
    bar.refresh()
    bar.close()
    assert "draining:  75%" in stream.getvalue() and "3/4" in stream.getvalue()
    quiet = io.StringIO()
    bar = progress_bar(4, "draining", stream=quiet)
    bar.n = 4
    bar.refresh()
    bar.close()
    assert quiet.getvalue() == ""
