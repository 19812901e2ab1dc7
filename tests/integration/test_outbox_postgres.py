"""The PostgreSQL outbox against a real server and the reference chat server.

- Transactional enqueue: a rollback never delivers; a commit followed by ``kill -9`` of the
  enqueuing process before any drain is delivered by another process; 1,000 commits from 8
  threads arrive exactly once.
- ``chatsdk outbox drain --forever``: SIGTERM ends it with exit 0, nothing lost.
- The PostgreSQL server stopped and started again mid-drain (a restart, a failover): nothing
  lost, nothing sent twice; ``queue_message`` raises ``OutboxError`` at once while it is down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from chatsdk import ChatClient, OutboxUnavailableError
from chatsdk._outbox.outbox import Outbox
from chatsdk.integrations import _commands
from chatsdk.testing import FaultPlan, ReferenceServer
from tests import postgres
from tests.helpers import require, wait_until

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


@pytest.fixture
def own_pg() -> Iterator[postgres.PostgresCluster]:
    # A server of its own: this test stops and starts it.
    require(
        postgres.find_binary("initdb") is not None,
        "PostgreSQL server binaries (initdb, pg_ctl) are not installed",
    )
    with postgres.cluster() as pg:
        yield pg


def test_server_restarts_mid_drain_lose_nothing_and_send_nothing_twice(
    own_pg: postgres.PostgresCluster,
) -> None:
    channels, per_channel = 10, 40
    # Latency so the restarts land mid-drain; lost responses so resends happen all along.
    faults = FaultPlan(delay=1.0, delay_range=(0.01, 0.03), drop_after=0.02)
    with ReferenceServer(api_keys=(KEY,), faults=faults) as server:
        with Outbox(own_pg.url()) as outbox:
            for i in range(per_channel):
                for c in range(channels):
                    outbox.enqueue("message", f"ch{c}", {"channelId": f"ch{c}", "text": f"{c}-{i}"})

        def delivered() -> int:
            return len(server.all_messages())

        outbox = Outbox(own_pg.url(), lease_seconds=2)
        with ChatClient(server.url, KEY, outbox=outbox) as chat:
            for round_ in (1, 2):
                goal = 100 * round_
                assert wait_until(lambda: delivered() >= goal, 60), delivered()  # noqa: B023
                own_pg.down()
                down_at = delivered()
                with pytest.raises(OutboxUnavailableError):  # told, not queued into nowhere
                    chat.queue_message("ch0", f"while down {round_}")
                time.sleep(1.0)  # deliveries in flight end; their outcomes cannot be written
                own_pg.up()
            assert down_at < channels * per_channel, "the drain was over before the restarts"
            assert chat.flush(120)
            time.sleep(2 * outbox.lease_seconds)  # anything resent late would show up now
        outbox.close()
        assert delivered() == channels * per_channel
        for c in range(channels):  # each exactly once, in order
            texts = [m["text"] for m in server.messages(f"ch{c}")]
            assert texts == [f"{c}-{i}" for i in range(per_channel)]


def test_the_framework_drain_worker_rides_out_a_database_restart(
    own_pg: postgres.PostgresCluster,
) -> None:
    # Django's chatsdk_drain and Flask's chatsdk drain, as a worker, against a fleet's
    # PostgreSQL outbox. Seen before: the worker's loop read the outbox every second and
    # died with OutboxUnavailableError at the first look while the server was restarting.
    with ReferenceServer(api_keys=(KEY,)) as server:
        with Outbox(own_pg.url()) as outbox:
            for i in range(10):
                outbox.enqueue("message", "c1", {"channelId": "c1", "text": f"before {i}"})
        stop = threading.Event()
        codes: list[int] = []
        out: list[str] = []
        err: list[str] = []

        def run() -> None:
            codes.append(
                _commands.drain(
                    lambda: ChatClient(server.url, KEY, outbox=own_pg.url()),
                    lambda: Outbox(own_pg.url()),
                    once=False,
                    out=out.append,
                    err=err.append,
                    stop=stop,
                )
            )

        worker = threading.Thread(target=run)
        worker.start()
        assert wait_until(lambda: len(server.all_messages()) == 10, 60)
        own_pg.down()
        time.sleep(3.0)  # a few of the worker's ticks while the server is down
        own_pg.up()
        with Outbox(own_pg.url()) as outbox:  # queued after the restart: the worker sends it
            outbox.enqueue("message", "c1", {"channelId": "c1", "text": "after"})
        assert wait_until(lambda: len(server.all_messages()) == 11, 60), (codes, err)
        stop.set()
        worker.join(60)
        assert not worker.is_alive()
        assert codes == [0], err
        assert out == ["sent 11, failed 0, pending 0"]
        texts = [m["text"] for m in server.messages("c1")]
        assert texts == [f"before {i}" for i in range(10)] + ["after"]
