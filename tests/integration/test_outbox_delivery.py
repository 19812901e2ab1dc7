"""The outbox with ChatClient against the reference server: outages, poison messages,
flush/close timeouts, refused keys, and a later process finishing an earlier one's work."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatsdk._client import ChatClient
from chatsdk._errors import BadRequestError, ConfigurationError, ValidationError
from chatsdk._http.retry import RetryPolicy
from chatsdk._models import Message
from chatsdk._outbox.models import Operation
from chatsdk._outbox.outbox import Outbox
from chatsdk._resilience.breaker import BreakerPolicy, CircuitState
from chatsdk.testing import ReferenceServer

KEY = "test-key"


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,), forbidden_keys=("forbidden-key",)) as srv:
        yield srv


def texts(server: ReferenceServer, channel: str) -> list[str]:
    return [m["text"] for m in server.messages(channel)]


def test_queue_message_returns_committed_entry_and_wait_gives_the_message(
    server: ReferenceServer, tmp_path: Path
) -> None:
    with ChatClient(server.url, KEY, outbox=tmp_path / "o.db") as client:
        entry = client.queue_message("general", "hello", attachments=[{"type": "link", "url": "u"}])
        assert entry.status == "queued" and entry.operation.body["attachments"][0]["url"] == "u"
        message = entry.wait(10)
        assert isinstance(message, Message) and message.text == "hello"
        reply = client.queue_message("general", "re", parent_id=message.id).wait(10)
        assert reply.parent_id == message.id
        reaction = client.queue_reaction(message.id, "+1", idempotency_key="react-1").wait(10)
        assert reaction.reaction == "+1"
        assert server.reactions(message.id)[0]["reaction"] == "+1"
        assert client.outbox is not None and client.outbox.stats().sent == 3
    assert client.outbox.closed  # the client opened it, the client closed it


def test_queue_validates_before_any_io(server: ReferenceServer, tmp_path: Path) -> None:
    with ChatClient(server.url, KEY, outbox=tmp_path / "o.db") as client:
        for bad in (
            lambda: client.queue_message("bad channel!", "x"),
            lambda: client.queue_message("c", "   "),
            lambda: client.queue_message("c", "x", idempotency_key="has space"),
            lambda: client.queue_reaction("m1", ""),
        ):
            with pytest.raises(ValidationError):
                bad()
        assert client.outbox is not None and client.outbox.stats().pending == 0
    with ChatClient(server.url, KEY) as plain:
        assert plain.outbox is None and plain.flush(0)
        with pytest.raises(ConfigurationError, match="no outbox"):
            plain.queue_message("c", "x")
    assert server.counters()["creates"] == 0


def test_poison_message_fails_without_blocking_other_channels(
    server: ReferenceServer, tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "o.db")
    with ChatClient(server.url, KEY, outbox=box) as client:
        # Body checks run in queue_message; a body from elsewhere may still break the
        # contract (here: empty text): the server answers 400 for good.
        poison = box.enqueue(
            "message", "a", {"channelId": "a", "text": " ", "attachments": [], "parentId": None}
        )
        after = client.queue_message("a", "a-after")
        others = [client.queue_message(f"b{i}", f"b{i}") for i in range(3)]
        assert client.flush(20)
        with pytest.raises(BadRequestError) as info:
            poison.wait(0)
        assert info.value.status == 400 and info.value.idempotency_key == poison.idempotency_key
        assert after.wait(0).text == "a-after"
        assert [e.wait(0).text for e in others] == ["b0", "b1", "b2"]
        assert texts(server, "a") == ["a-after"]
        stats = box.stats()
        assert (stats.failed, stats.sent) == (1, 4)
        # The dead letter stays listed for inspection, retry or purge.
        failed = box.entries(status="failed")
        assert [e.id for e in failed] == [poison.id]
    assert not box.closed  # the caller's outbox stays open
    box.close()


def test_close_flushes_for_at_most_close_timeout_and_the_next_client_finishes(
    server: ReferenceServer, tmp_path: Path
) -> None:
    path = tmp_path / "o.db"
    fast_fail = RetryPolicy(max_attempts=1)
    client = ChatClient(server.url, KEY, outbox=path, close_timeout=0.5, retry=fast_fail)
    server.stop()  # down until the test starts it again: no race with a timed outage
    entries = [client.queue_message("cron", f"job {i}") for i in range(5)]
    flushed = client.flush(0.2)
    assert not flushed and (flushed.pending, flushed.path) == (5, str(path))
    closed = client.close()  # returns although the server is still down
    assert not closed and closed.pending == 5
    assert client.close() is closed  # idempotent
    with Outbox(path) as box:
        # close() gave up after close_timeout instead of waiting for the server: the
        # entries are left on disk, nothing lost.
        assert box.stats().pending == 5
    server.start()
    # The next run (a cron job) delivers what the earlier one left behind.
    with ChatClient(server.url, KEY, outbox=path) as later:
        assert later.flush(20)
    assert texts(server, "cron") == [f"job {i}" for i in range(5)]
    with Outbox(path) as box:  # delivered under the keys chosen at enqueue time
        assert [e.idempotency_key for e in box.entries()] == [e.idempotency_key for e in entries]


@pytest.mark.parametrize("key", ["wrong-key", "forbidden-key"])
def test_refused_key_stops_draining_and_leaves_entries_queued(
    server: ReferenceServer, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    with caplog.at_level(logging.ERROR, "chatsdk"):
        bad = ChatClient(server.url, key, outbox=path, close_timeout=0.2)
        for i in range(3):
            bad.queue_message("c", f"m{i}")
        assert bad.flush(10).pending == 3  # returns as soon as draining stopped
        refused = bad.outbox_auth_error
        assert refused is not None and getattr(refused, "status", None) in (401, 403)
        bad.close()
    assert "draining stopped" in caplog.text and key not in caplog.text
    with Outbox(path) as box:
        stats = box.stats()
        assert (stats.queued, stats.failed) == (3, 0)
    with ChatClient(server.url, KEY, outbox=path) as good:
        assert good.flush(20)
        assert good.outbox_auth_error is None
    assert texts(server, "c") == ["m0", "m1", "m2"]


@pytest.mark.slow
def test_outage_of_10s_all_delivered_within_5s_after_recovery(
    server: ReferenceServer, tmp_path: Path
) -> None:
    """A 10 s outage mid-drain, breaker recovery_timeout 2 s: done < 5 s after the server is back."""
    delivered = threading.Semaphore(0)

    class CountingClient(ChatClient):
        def _deliver(self, op: Operation) -> dict[str, Any]:
            response = super()._deliver(op)
            delivered.release()
            return response

    client = CountingClient(
        server.url,
        KEY,
        outbox=tmp_path / "o.db",
        breaker=BreakerPolicy(recovery_timeout=2.0),
        retry=RetryPolicy(max_attempts=3, base_delay=0.05),
    )
    opened = threading.Event()
    client.session.add_breaker_listener(
        lambda _b, _old, new: opened.set() if new is CircuitState.OPEN else None
    )
    for i in range(300):
        client.queue_message(f"ch{i % 10}", f"m{i}")
    for _ in range(50):  # in the middle of the drain
        assert delivered.acquire(timeout=30)
    back = server.outage(10.0)
    assert opened.wait(10)  # the breaker noticed
    assert back.wait(20)
    recovered = time.monotonic()
    assert client.flush(15)
    took = time.monotonic() - recovered
    print(f"drained {took:.2f}s after the server came back")
    box = client.outbox
    assert box is not None
    stats = box.stats()
    client.close()
    assert (stats.sent, stats.failed, stats.expired) == (300, 0, 0)
    for c in range(10):
        assert texts(server, f"ch{c}") == [f"m{i}" for i in range(c, 300, 10)]
    assert took < 5.0, f"took {took:.2f}s after the server came back"
