"""The realtime client against hostile WebSocket servers (issue 12, rows 14-16).

The servers are tests/hostile/ws_servers.py (raw sockets), not the reference server. A hang
is the failure: every wait has a generous timeout and no assert bounds wall-clock time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chatsdk._realtime.client import RealtimeClient
from tests.helpers import realtime_threads, wait_until
from tests.hostile.ws_servers import HostileWSServer, Peer, centrifugo, connect_proxy

WAIT = 60.0  # seconds before a wait is declared a hang


def open_fds() -> int:
    """File descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def make_client() -> Iterator[Callable[..., RealtimeClient]]:
    clients: list[RealtimeClient] = []

    def make(url: str, **options: Any) -> RealtimeClient:
        options.setdefault("token", "t")
        options.setdefault("min_reconnect_delay", 0.05)
        options.setdefault("max_reconnect_delay", 0.2)
        client = RealtimeClient(url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    assert realtime_threads() == []


# -- row 14: the handshake is bounded as a whole ----------------------------------------------


def dribble_upgrade(peer: Peer) -> None:
    """Answer the upgrade request one byte every 0.5 s, a response that never ends."""
    peer.read_request()
    endless = itertools.chain(
        b"HTTP/1.1 101 Switching Protocols\r\n", itertools.cycle(b"X-Slow: a\r\n")
    )
    for byte in endless:
        peer.send(bytes([byte]))
        if peer.wait_gone(0.5):
            return


def dribble_tls(peer: Peer) -> None:
    """Answer a TLS ClientHello with a 16 KiB handshake record, one byte every 0.5 s."""
    peer.wait_gone(5.0)  # the ClientHello
    for byte in itertools.chain(b"\x16\x03\x03\x40\x00", itertools.repeat(2)):
        peer.send(bytes([byte]))
        if peer.wait_gone(0.5):
            return


def huge_headers(peer: Peer) -> None:
    """A valid 101 response with 50 MB of headers before its end."""
    peer.read_request()
    status, rest = peer.upgrade_response().split(b"\r\n", 1)
    peer.send(status + b"\r\n")
    pad = b"X-Pad: " + b"a" * 1015 + b"\r\n"  # 1 KiB a line
    for _ in range(50 * 1024):
        peer.send(pad)
    peer.send(rest)


@pytest.mark.parametrize(
    ("handler", "scheme"), [(dribble_upgrade, "ws"), (dribble_tls, "wss")], ids=["http", "tls"]
)
def test_dribbled_handshake_fails_at_the_connect_timeout_and_reconnects(
    make_client: Callable[..., RealtimeClient], handler: Callable[[Peer], None], scheme: str
) -> None:
    with HostileWSServer(handler) as server:
        before = open_fds()
        client = make_client(server.url.replace("ws", scheme, 1), timeout=1.0)
        client.connect()
        # Each attempt gives up at its deadline; the next one is a new connection.
        assert server.wait_peers(3, WAIT)
        stats = client.stats()
        assert stats.connects == 0 and stats.attempts >= 3
        assert "did not complete within 1s" in stats.last_error
        client.close()
        assert realtime_threads() == []
        assert server.wait_all_closed(WAIT)  # the client closed every attempt's socket
        assert open_fds() == before


def test_close_during_a_dribbled_handshake_leaves_no_thread_or_socket(
    make_client: Callable[..., RealtimeClient],
) -> None:
    with HostileWSServer(dribble_upgrade) as server:
        before = open_fds()
        client = make_client(server.url, timeout=60.0)
        client.connect()
        assert server.wait_peers(1, WAIT)
        assert wait_until(lambda: server.peers[0].sent > 0, WAIT)  # mid-handshake
        client.close()
        assert realtime_threads() == []
        assert server.wait_all_closed(WAIT)
        assert open_fds() == before
        assert len(server.peers) == 1


def test_huge_handshake_headers_are_refused_and_the_client_reconnects(
    make_client: Callable[..., RealtimeClient],
) -> None:
    with HostileWSServer(huge_headers) as server:
        client = make_client(server.url, timeout=WAIT)
        client.connect()
        assert server.wait_peers(2, WAIT)
        assert "handshake response over" in client.stats().last_error
        assert client.stats().connects == 0
        # The client stopped reading early: far less than the 50 MB was ever written.
        assert server.peers[0].sent < 10 * 1024 * 1024


def test_the_handshake_goes_through_an_http_proxy_from_the_environment(
    make_client: Callable[..., RealtimeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    with HostileWSServer(centrifugo()) as server, HostileWSServer(connect_proxy()) as proxy:
        for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        client = make_client(server.url)
        client.connect()
        assert client.wait_connected(WAIT)
        assert proxy.peers[0].request_headers["connect"] == f"127.0.0.1:{server.port}"


def test_a_dribbling_proxy_is_bounded_by_the_connect_timeout(
    make_client: Callable[..., RealtimeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    with HostileWSServer(connect_proxy(dribble=True)) as proxy:
        for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        client = make_client("ws://127.0.0.1:9/connection/websocket", timeout=1.0)
        client.connect()
        assert proxy.wait_peers(2, WAIT)
        assert "did not complete within 1s" in client.stats().last_error
