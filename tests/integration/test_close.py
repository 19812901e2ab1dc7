"""ChatClient.close() and the exit of a process, against the reference server."""

from __future__ import annotations

import gc
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsdk import ChatClient, Outbox, RealtimeState
from chatsdk._shutdown import _clients
from chatsdk.testing import ReferenceServer
from tests.helpers import wait_until

KEY = "test-key"


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,)) as srv:
        yield srv


def test_close_waits_only_for_this_processs_entries(
    server: ReferenceServer, tmp_path: Path
) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as other_process:  # another process's backlog, for a host that is down
        for _ in range(3):
            other_process.enqueue("message", "elsewhere", {"channelId": "elsewhere", "text": "x"})
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE entries SET origin = 'otherhost:1:x', next_attempt_at = 9e12")
    conn.close()
    client = ChatClient(server.url, KEY, outbox=path, close_timeout=30)
    client.queue_message("mine", "one")
    result = client.close()
    # Returned once its own entry was delivered (a truthy result, not the 30 s timeout):
    # the three others stay for their process.
    assert result and result.pending == 0
    assert [m["text"] for m in server.messages("mine")] == ["one"]
    with Outbox(path) as box:
        assert box.stats().queued == 3


def test_close_reports_what_is_left_and_is_idempotent(
    server: ReferenceServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    client = ChatClient(server.url, KEY, outbox=path, close_timeout=0.3)
    back = server.outage(60)
    for i in range(4):
        client.queue_message("c", f"m{i}")
    with caplog.at_level(logging.WARNING, "chatsdk"):
        first = client.close()
    assert not first and (first.pending, first.path) == (4, str(path))
    warning = [r.getMessage() for r in caplog.records if "not delivered yet" in r.getMessage()]
    assert len(warning) == 1 and "4 entries" in warning[0] and str(path) in warning[0]
    assert client.close() is first  # a second call: no error, no second wait
    assert not back.is_set()  # the host was down the whole time


def test_close_closes_its_realtime_clients(server: ReferenceServer) -> None:
    chat = ChatClient(server.url, KEY)
    realtime = chat.realtime()
    realtime.connect()
    assert realtime.wait_connected(10)
    chat.close()
    assert realtime.state is RealtimeState.CLOSED


def test_a_shared_outbox_forgets_closed_clients(server: ReferenceServer, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    refs = []
    for _ in range(5):
        client = ChatClient(server.url, KEY, outbox=box, close_timeout=1)
        client.queue_message("c", "x")
        client.close()
        refs.append(weakref.ref(client))
    del client
    gc.collect()
    assert box._listeners == [] and box._drainers == []
    assert [r() for r in refs] == [None] * 5  # nothing keeps a closed client alive
    assert not box.closed  # the caller's outbox stays open
    assert box.stats().drainer is None
    box.close()


def test_clients_are_closed_at_exit_unless_already_closed(
    server: ReferenceServer, tmp_path: Path
) -> None:
    client = ChatClient(server.url, KEY, outbox=tmp_path / "o.db")
    assert client in set(_clients)
    client.close()
    assert client not in set(_clients)


# -- SIGTERM ---------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import logging, os, signal, sys, threading
    import chatsdk

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    url, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    calls = []
    if mode == "chain":
        signal.signal(signal.SIGTERM, lambda s, f: (calls.append(s), sys.exit(7)))
    elif mode == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    chat = chatsdk.ChatClient(url, "test-key", outbox=path)
    chatsdk.install_signal_handlers()
    for i in range(20):
        chat.queue_message("term", f"{mode}-{i}")
    print("ready", flush=True)
    threading.Event().wait(60 if mode != "ignore" else 3)
    print("survived", flush=True)
    """
)


@pytest.mark.parametrize(("mode", "exit_code"), [("default", -signal.SIGTERM), ("chain", 7)])
def test_sigterm_flushes_then_runs_the_previous_handler(
    server: ReferenceServer, tmp_path: Path, mode: str, exit_code: int
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, server.url, str(tmp_path / "o.db"), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == exit_code, err
    assert "survived" not in out
    texts = sorted(m["text"] for m in server.messages("term"))
    assert texts == sorted(f"{mode}-{i}" for i in range(20))


def test_sigterm_ignored_before_stays_ignored_after_the_flush(
    server: ReferenceServer, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, server.url, str(tmp_path / "o.db"), "ignore"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "survived" in out
    assert wait_until(lambda: len(server.messages("term")) == 20)


def test_install_signal_handlers_outside_the_main_thread_is_refused() -> None:
    import threading

    import chatsdk

    errors: list[BaseException] = []

    def install() -> None:
        try:
            chatsdk.install_signal_handlers()
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(10)
    assert len(errors) == 1
