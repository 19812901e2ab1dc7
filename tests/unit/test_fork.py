"""Unit tests of the one at-fork hook (chatsdk._fork) and of what each object resets.

The hook's three functions run here on a private Registry (the process's own one would
reset every live object of the test session); real forks are in tests/integration.
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from chatsdk import _fork
from chatsdk._http.idempotency import Deduplicator
from chatsdk._http.session import ChatSession
from chatsdk._outbox.outbox import Outbox
from chatsdk._realtime.client import RealtimeClient, RealtimeState
from chatsdk._resilience.breaker import CircuitBreaker, CircuitState


class Thing:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def before(self) -> None:
        self.log.append(f"before {self.name}")

    def parent(self) -> None:
        self.log.append(f"parent {self.name}")

    def child(self) -> None:
        self.log.append(f"child {self.name}")


def register(registry: _fork.Registry, thing: Thing, order: int) -> Thing:
    return registry.register(thing, order, Thing.before, Thing.parent, Thing.child)


def test_quiesce_in_order_release_in_reverse_reset_every_object() -> None:
    registry = _fork.Registry()
    calls: list[str] = []
    sqlite, client, outbox = Thing("sqlite", calls), Thing("client", calls), Thing("outbox", calls)
    register(registry, sqlite, _fork.ORDER_SQLITE)
    register(registry, client, _fork.ORDER_CLIENT)
    register(registry, outbox, _fork.ORDER_OUTBOX)
    registry.before_fork()
    registry.after_in_parent()
    registry.before_fork()
    registry.after_in_child()
    assert calls == [
        "before client",
        "before sqlite",
        "before outbox",
        "parent outbox",
        "parent sqlite",
        "parent client",
        "before client",
        "before sqlite",
        "before outbox",
        "child client",
        "child sqlite",
        "child outbox",
    ]
    assert registry._lock.acquire(blocking=False)  # the child's lock is a fresh one


def test_registration_never_keeps_an_object_alive() -> None:
    registry = _fork.Registry()
    calls: list[str] = []
    register(registry, Thing("gone", calls), 0)
    gc.collect()
    assert len(registry) == 0 and registry._entries == {}
    registry.before_fork()
    registry.after_in_parent()
    assert calls == []


def test_a_failing_callback_never_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    registry = _fork.Registry()
    calls: list[str] = []

    def boom(_obj: object) -> None:
        raise RuntimeError("boom")

    bad = Thing("bad", calls)
    good = Thing("good", calls)
    registry.register(bad, 0, boom, Thing.parent, boom)
    register(registry, good, 1)
    registry.register(Thing("quiet", calls), 2)  # no callbacks at all
    with caplog.at_level(logging.ERROR, "chatsdk"):
        registry.before_fork()
        registry.after_in_parent()
        registry.before_fork()
        registry.after_in_child()
    # bad's quiesce failed: it is not released in the parent, but still reset in the child.
    assert calls == ["before good", "parent good", "before good", "child good"]
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [f.split()[1] for f in failures] == ["quiescing", "quiescing", "resetting"]


def test_install_is_guarded_where_register_at_fork_is_missing() -> None:
    class WindowsOS:
        pass

    assert _fork.install(WindowsOS()) is False

    class PosixOS:
        hooks: dict[str, Any] = {}

        def register_at_fork(self, **hooks: Any) -> None:
            self.hooks.update(hooks)

    posix = PosixOS()
    registry = _fork.Registry()
    assert _fork.install(posix, registry) is True
    assert posix.hooks == {
        "before": registry.before_fork,
        "after_in_parent": registry.after_in_parent,
        "after_in_child": registry.after_in_child,
    }


def test_import_chatsdk_works_without_register_at_fork(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = (
        # What Windows lacks, removed after the standard library modules that need it.
        "import os, random, sqlite3, uuid, socket, requests, tenacity, websocket, attrs;"
        " del os.register_at_fork; import chatsdk, chatsdk._fork;"
        " c = chatsdk.ChatClient('http://127.0.0.1:9', 'k', outbox=os.environ['BOX']);"
        " c.queue_message('c1', 'hi'); print(c.outbox.pending_count()); c.close_timeout = 0;"
        " c.close()"
    )
    env = {**os.environ, "BOX": str(tmp_path / "w.db")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


# -- what each object resets in the child ------------------------------------------------


def test_deduplicator_forgets_the_parents_flights() -> None:
    dedup = Deduplicator(1.0)
    in_flight = threading.Event()
    finish = threading.Event()

    def parent_send(_key: str) -> Any:
        in_flight.set()
        finish.wait(30)
        raise RuntimeError("parent's")

    body = {"channelId": "c", "text": "x"}
    errors: list[BaseException] = []

    def parent_thread() -> None:
        try:
            dedup.run("message", body, "k1", parent_send)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=parent_thread)
    thread.start()
    assert in_flight.wait(30)
    dedup._lock.acquire()  # as if a parent thread held it at the instant of the fork
    dedup._after_fork()
    sent: list[str] = []

    class Result:
        replayed = False

    def child_send(key: str) -> Result:
        sent.append(key)
        return Result()

    # The child sends itself (the key still makes the server answer once): no wait for ever.
    assert isinstance(dedup.run("message", body, "k1", child_send), Result)
    assert sent == ["k1"]
    finish.set()
    thread.join(30)
    assert [str(e) for e in errors] == ["parent's"]


def test_session_keeps_breaker_listeners_across_fork() -> None:
    session = ChatSession("http://127.0.0.1:9", "k")
    seen: list[tuple[str, CircuitState]] = []
    session.add_breaker_listener(lambda b, _old, new: seen.append(("session", new)))
    breaker = session.breaker_for()
    assert breaker is not None
    breaker.add_listener(lambda b, _old, new: seen.append(("breaker", new)))
    parent_pool = session.adapter.poolmanager
    breaker.force_open()
    assert seen == [("session", CircuitState.OPEN), ("breaker", CircuitState.OPEN)]
    seen.clear()
    session.adapter.reset_after_fork()
    assert session.adapter.poolmanager is not parent_pool
    child_breaker = session.breaker_for()
    assert isinstance(child_breaker, CircuitBreaker) and child_breaker is not breaker
    assert child_breaker.state is CircuitState.CLOSED  # no probe of a parent thread held
    child_breaker.force_open()
    assert sorted(seen) == [("breaker", CircuitState.OPEN), ("session", CircuitState.OPEN)]
    session.close()


def test_session_without_circuit_breaking_resets_after_fork() -> None:
    session = ChatSession("http://127.0.0.1:9", "k", breaker=False)
    assert session.breaker_for() is None  # a host known, with no breaker
    session.adapter.reset_after_fork()
    assert session.breaker_for() is None and len(session.adapter.hosts._hosts) == 1
    session.close()


def test_realtime_client_is_honest_in_the_child_and_reconnects_on_first_use() -> None:
    client = RealtimeClient("ws://127.0.0.1:9/connection/websocket", token="t")
    started: list[str] = []
    client.connect = lambda: started.append("connect")  # type: ignore[method-assign]
    client._running, client._state = True, RealtimeState.CONNECTED  # as in the parent
    client._lock.acquire()  # a parent thread held it at the instant of the fork
    client._after_fork()
    assert client.state is RealtimeState.DISCONNECTED and client._thread is None
    assert client._context.lock is client._lock and client._lock.acquire(blocking=False)
    client._lock.release()
    client.wait_connected(0)
    client.wait_connected(0)
    assert started == ["connect"]  # once: the first use restarts it


def test_realtime_client_closed_in_the_parent_stays_closed(tmp_path: Path) -> None:
    client = RealtimeClient("ws://127.0.0.1:9/connection/websocket", token="t")
    client.close()
    client._after_fork()
    assert client.state is RealtimeState.CLOSED and not client._resume_in_child


def test_drainer_restarts_by_pid_without_the_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from chatsdk._outbox.drainer import Drainer

    box = Outbox(tmp_path / "o.db")
    drainer = Drainer(box, lambda op: {}, workers=1)
    drainer.start()
    assert drainer.stop(30)  # in a real child the parent's threads do not exist
    parent_threads = list(drainer._threads)
    drainer._stopping = False
    real = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real + 1)
    drainer.notify()  # first use in the "child": a fresh start, by pid
    assert drainer._pid == real + 1 and drainer._threads
    assert not set(drainer._threads) & set(parent_threads)
    assert drainer.stop(30)
    box.close()


def test_outbox_forgets_the_parents_claims(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.enqueue("message", "c1", {"channelId": "c1", "text": "x"})
    box.claim(1)
    assert box._held
    box._quiesce()
    box._reset()
    assert box._held == set() and box._lock.acquire(blocking=False)
    box.close()
