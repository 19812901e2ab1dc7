"""The PostgreSQL outbox against a real server and the reference chat server.

- Transactional enqueue: a rollback never delivers; a commit followed by ``kill -9`` of the
  enqueuing process before any drain is delivered by another process; 1,000 commits from 8
  threads arrive exactly once.
- ``chatsdk outbox drain --forever``: SIGTERM ends it with exit 0, nothing lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import psycopg
import pytest

from chatsdk import ChatClient
from chatsdk._outbox.outbox import Outbox
from chatsdk.testing import ReferenceServer
from tests.helpers import wait_until

KEY = "test-key"


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,)) as srv:
        yield srv


@pytest.fixture
def url(postgres_url: str, pg_schema: str) -> str:
    sep = "&" if "?" in postgres_url else "?"
    return f"{postgres_url}{sep}schema={pg_schema}"


def child_env() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {**os.environ, "PYTHONPATH": root}


def test_rollback_is_never_delivered(server: ReferenceServer, url: str, postgres_url: str) -> None:
    outbox = Outbox(url)
    with psycopg.connect(postgres_url) as conn:  # not autocommit: a transaction is open
        conn.execute("CREATE TEMP TABLE orders (id int)")
        conn.execute("INSERT INTO orders VALUES (1)")
        entry = outbox.enqueue("message", "c1", {"channelId": "c1", "text": "x"}, connection=conn)
        assert outbox.get(entry.id) is None  # invisible outside the caller's transaction
        conn.rollback()
    with ChatClient(server.url, KEY, outbox=outbox) as chat:
        assert chat.flush(10)
    assert outbox.stats().pending == 0 and outbox.get(entry.id) is None
    assert server.all_messages() == []
    outbox.close()


KILLED = textwrap.dedent(
    """
    import os, sys, psycopg
    from chatsdk._outbox.outbox import Outbox
    url, dsn = sys.argv[1], sys.argv[2]
    outbox = Outbox(url)
    with psycopg.connect(dsn) as conn:
        outbox.enqueue(
            "message", "c1", {"channelId": "c1", "text": "order 42"},
            idempotency_key="order-42", connection=conn,
        )
        conn.commit()
    os.write(1, b"committed\\n")
    os.kill(os.getpid(), 19)  # SIGSTOP: wait to be killed, never drain
    """
)


def test_commit_then_kill_9_is_delivered_by_another_process(
    server: ReferenceServer, url: str, postgres_url: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, url, postgres_url],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None and proc.stdout.readline() == "committed\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    with ChatClient(server.url, KEY, outbox=url) as chat:
        assert chat.flush(20)
    assert [m["text"] for m in server.all_messages()] == ["order 42"]


def test_1000_commits_from_8_threads_arrive_exactly_once(
    server: ReferenceServer, url: str, postgres_url: str
) -> None:
    outbox = Outbox(url)
    errors: list[BaseException] = []

    def commit_orders(t: int) -> None:
        try:
            with psycopg.connect(postgres_url) as conn:
                for i in range(125):
                    with conn.transaction():
                        text = f"t{t}-{i}"
                        body = {"channelId": f"ch{t}", "text": text}
                        outbox.enqueue("message", f"ch{t}", body, connection=conn)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with ChatClient(server.url, KEY, outbox=outbox) as chat:
        threads = [threading.Thread(target=commit_orders, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert chat.flush(60)
    texts = [m["text"] for m in server.all_messages()]
    assert len(texts) == len(set(texts)) == 1000
    for t in range(8):  # in order per channel
        got = [int(m["text"].split("-")[1]) for m in server.messages(f"ch{t}")]
        assert got == list(range(125))
    outbox.close()


def test_drain_forever_stops_on_sigterm_with_exit_0(server: ReferenceServer, url: str) -> None:
    with Outbox(url) as outbox:
        for i in range(20):
            outbox.enqueue("message", "c1", {"channelId": "c1", "text": f"m{i}"})
    env = {**child_env(), "CHATSDK_URL": server.url, "CHATSDK_API_KEY": KEY}
    env["CHATSDK_OUTBOX"] = url
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsdk", "outbox", "drain", "--forever"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: len(server.all_messages()) == 20, 30)
        with Outbox(url) as outbox:  # a later entry is found through NOTIFY
            outbox.enqueue("message", "c1", {"channelId": "c1", "text": "late"})
        assert wait_until(lambda: len(server.all_messages()) == 21, 30)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # a failed wait: end the worker and close its pipes
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert [m["text"] for m in server.all_messages()] == [f"m{i}" for i in range(20)] + ["late"]
