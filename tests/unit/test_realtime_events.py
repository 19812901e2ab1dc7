"""The realtime client's events: state changes, reconnects, failed recoveries (on hooks)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from chatsdk._instrument import (
    Emitter,
    RealtimeReconnecting,
    RealtimeStateChanged,
    RecoveryFailed,
)
from chatsdk._realtime.client import RealtimeClient, RealtimeState
from chatsdk._realtime.subscription import StreamPosition
from tests.helpers import Collector, realtime_clients, wait_until
from tests.unit.realtime_fake import FakeServer
from tests.unit.test_instrument import Recorder
from tests.unit.test_realtime_client import CLIENT_DEFAULTS, WAIT, push

S = RealtimeState


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def make_client() -> Iterator[Callable[..., RealtimeClient]]:
    with realtime_clients(CLIENT_DEFAULTS) as make:
        yield make


def hooked(make: Callable[..., RealtimeClient], url: str) -> tuple[RealtimeClient, Recorder]:
    client = make(url)
    recorder = Recorder()
    client.events = Emitter(recorder)
    return client, recorder


def test_state_changes_reach_hooks_on_the_dispatch_thread(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client, recorder = hooked(make_client, fake.url)
    threads: list[str] = []
    client.events.add(lambda e: threads.append(threading.current_thread().name))
    client.connect()
    assert client.wait_connected(WAIT)
    client.close()
    changes = [(e.old, e.new) for e in recorder.of(RealtimeStateChanged)]
    assert changes == [
        (S.DISCONNECTED, S.CONNECTING),
        (S.CONNECTING, S.CONNECTED),
        (S.CONNECTED, S.CLOSED),
    ]
    assert {e.url for e in recorder.of(RealtimeStateChanged)} == {fake.url}
    assert threads and "chatsdk-realtime" not in threads  # never the socket thread


def test_a_dropped_connection_fires_one_reconnect_event_with_its_close_code(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client, recorder = hooked(make_client, fake.url)
    client.connect()
    assert client.wait_connected(WAIT)
    fake.close(3001, "shutdown")
    assert fake.wait_for(lambda: len(fake.conns) == 2)
    assert client.wait_connected(WAIT)
    assert wait_until(lambda: bool(recorder.of(RealtimeReconnecting)))
    (event,) = recorder.of(RealtimeReconnecting)
    assert (event.attempt, event.close_code, event.url) == (0, 3001, fake.url)
    assert event.delay >= 0


def test_a_refused_handshake_reconnects_without_a_close_code(
    make_client: Callable[..., RealtimeClient],
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client, recorder = hooked(make_client, f"ws://127.0.0.1:{port}/connection/websocket")
    client.connect()
    assert wait_until(lambda: len(recorder.of(RealtimeReconnecting)) >= 2)
    first, second = recorder.of(RealtimeReconnecting)[:2]
    assert (first.attempt, first.close_code) == (1, None)
    assert second.attempt == 2


def test_recovery_failed_fires_one_event(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    fake.subscribe_handler = lambda conn, params: {
        "recoverable": True,
        "epoch": "e2",
        "offset": 7,
        "recovered": False,
        "was_recovering": True,
    }
    client, recorder = hooked(make_client, fake.url)
    got = Collector()
    client.connect()
    sub = client.subscribe("chat:1", got, since=StreamPosition(3, "e1"))
    assert sub.wait_subscribed(WAIT)
    fake.send(push("chat:1", 8))
    assert got.wait_count(1)
    assert wait_until(lambda: bool(recorder.of(RecoveryFailed)))
    assert recorder.of(RecoveryFailed) == [RecoveryFailed(channel="chat:1")]


def test_without_hooks_no_realtime_event_is_queued(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(fake.url)
    assert not client.events.active
    client.connect()
    assert client.wait_connected(WAIT)
    fake.close(3001, "shutdown")
    assert fake.wait_for(lambda: len(fake.conns) == 2)
    assert client.wait_connected(WAIT)
