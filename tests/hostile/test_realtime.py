"""The realtime client against hostile WebSocket servers (issue 12, rows 14-16).

The servers are tests/hostile/ws_servers.py (raw sockets), not the reference server. A hang
is the failure: every wait has a generous timeout and no assert bounds wall-clock time.
"""

from __future__ import annotations

import base64
import gc
import itertools
import json
import logging
import os
import pathlib
import random
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from chatsdk import ConfigurationError
from chatsdk._realtime.client import RealtimeClient
from chatsdk._realtime.subscription import Subscription
from tests.helpers import Collector, realtime_clients, realtime_threads, wait_until
from tests.hostile.ws_servers import (
    OP_CONT,
    OP_TEXT,
    HostileWSServer,
    Peer,
    centrifugo,
    connect_proxy,
    fresh_subscribe,
)

WAIT = 60.0  # seconds before a wait is declared a hang


def open_fds() -> int:
    """File descriptors open in this process (after collecting garbage: sockets other tests
    dropped must not close in the middle of a count)."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def make_client() -> Iterator[Callable[..., RealtimeClient]]:
    defaults = {"token": "t", "min_reconnect_delay": 0.05, "max_reconnect_delay": 0.2}
    with realtime_clients(defaults) as make:
        yield make


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
        assert wait_until(
            lambda: "did not complete within 1s" in (client.stats().last_error or ""), WAIT
        ), client.stats().last_error
        stats = client.stats()
        assert stats.connects == 0 and stats.attempts >= 3
        client.close()
        assert realtime_threads() == []
        assert server.wait_all_closed(WAIT)  # the client closed every attempt's socket
        assert open_fds() <= before  # fewer when other tests' leftovers closed meanwhile


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
        assert open_fds() <= before  # fewer when other tests' leftovers closed meanwhile
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


# -- row 15: a message size limit, checked from the frame header -----------------------------

BIG = 300 * 1024 * 1024
CHUNK = b"a" * (1024 * 1024)


def huge_frame(peer: Peer) -> None:
    """After the connect reply: one text frame announcing 300 MB, then its payload."""
    peer.send(peer.frame_header(BIG))
    for _ in range(BIG // len(CHUNK)):
        peer.send(CHUNK)


def endless_fragments(peer: Peer) -> None:
    """After the connect reply: a text message in 64 KiB fragments that never ends (300 MB)."""
    fragment = CHUNK[: 64 * 1024]
    peer.send_frame(fragment, OP_TEXT, fin=False)
    for _ in range(BIG // len(fragment)):
        peer.send_frame(fragment, OP_CONT, fin=False)


# Run in a subprocess so that its peak RSS (VmHWM) is the client's alone.
RSS_SCRIPT = """
import json, sys, threading
from chatsdk._realtime.client import RealtimeClient
from chatsdk._realtime.subscription import Subscription

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

client = RealtimeClient(sys.argv[1], token="t", min_reconnect_delay=0.05,
                        max_reconnect_delay=0.2, restart_spread=0.05)
baseline = hwm()
client.connect()
tick = threading.Event()
for _ in range(1200):  # 60 s
    stats = client.stats()
    if stats.last_close_code == 1009 and stats.connects >= 2:
        break
    tick.wait(0.05)
client.close()
print(json.dumps({"baseline": baseline, "peak": hwm(), "code": client.last_close_code,
                  "reason": client.last_close_reason, "connects": client.stats().connects}))
"""


@pytest.mark.parametrize("misbehave", [huge_frame, endless_fragments], ids=["frame", "fragments"])
def test_oversized_messages_are_refused_without_reading_them(
    misbehave: Callable[[Peer], None],
) -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with HostileWSServer(centrifugo(on_connected=misbehave)) as server:
        result = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, server.url],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=root,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["code"] == 1009, report
    assert "over the 4194304-byte limit" in report["reason"]
    assert report["connects"] >= 2  # it reconnected (and was refused again)
    assert report["peak"] - report["baseline"] < 50 * 1024 * 1024, report


@pytest.mark.parametrize("misbehave", [huge_frame, endless_fragments], ids=["frame", "fragments"])
def test_oversized_message_closes_with_a_logged_reason_and_reconnects(
    make_client: Callable[..., RealtimeClient],
    misbehave: Callable[[Peer], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="chatsdk")
    with HostileWSServer(centrifugo(on_connected=misbehave)) as server:
        client = make_client(server.url, max_message_bytes=256 * 1024)
        client.connect()
        assert server.wait_peers(2, WAIT)
        assert wait_until(lambda: client.stats().connects >= 2, WAIT)
        assert client.last_close_code == 1009
        # Never more than the limit and a socket buffer was taken in from the first one.
        assert server.peers[0].sent < BIG
    warnings = [r for r in caplog.records if "1009" in r.getMessage()]
    assert warnings and warnings[0].levelno == logging.WARNING
    assert warnings[0].name.startswith("chatsdk.")
    assert "over the 262144-byte limit" in warnings[0].getMessage()


def test_messages_up_to_the_limit_are_delivered(
    make_client: Callable[..., RealtimeClient],
) -> None:
    def publish_big(peer: Peer) -> None:
        pub = {"push": {"channel": "chat:1", "pub": {"data": {"t": "x" * 200_000}, "offset": 1}}}
        for command in peer.commands():
            if "subscribe" in command:
                peer.send_json({"id": command["id"], "subscribe": fresh_subscribe(peer, {})})
                body = json.dumps(pub).encode()
                half = len(body) // 2  # fragmented, within the limit in total
                peer.send_frame(body[:half], OP_TEXT, fin=False)
                peer.send_frame(body[half:], OP_CONT, fin=True)
            else:
                peer.send_json({"id": command["id"], "connect": {"client": "c"}})

    def handle(peer: Peer) -> None:
        peer.accept_upgrade()
        publish_big(peer)

    got = Collector()
    with HostileWSServer(handle) as server:
        client = make_client(server.url, max_message_bytes=256 * 1024)
        client.connect()
        client.subscribe("chat:1", got)
        assert got.wait_count(1, WAIT)
        assert len(got.items[0].data["t"]) == 200_000
        assert client.stats().connects == 1


def test_max_message_bytes_is_validated() -> None:
    for bad in (0, -1, 1.5, True, "4"):
        with pytest.raises(ConfigurationError, match="max_message_bytes"):
            RealtimeClient("ws://127.0.0.1:9/", max_message_bytes=bad)


# -- row 16: resubscribes the server provokes back off like reconnects ------------------------


class MaxRandom(random.Random):
    """Jitter at the top of its range: the backoff's shortest-lived worst case is its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


#: With the jitter at the top of its range (MaxRandom) and ``min_reconnect_delay=0.1``, the
#: waits between retried subscribes: 0.1 + U(0, 0.1 * 2**step) = 0.2, 0.3, 0.5, 0.9 s...
BACKOFF = [0.2, 0.3, 0.5, 0.9]


def assert_backs_off(stamps: list[float], floors: list[float]) -> None:
    """Wait for ``len(floors)`` gaps between subscribes (the server's receipt times in
    ``stamps``); each gap is at least its floor (less 5% for timer grain). Before the fix
    of row 16 a server answering with gaps had 113 subscribes in 5 s: gaps of ~0."""
    assert wait_until(lambda: len(stamps) > len(floors), WAIT)
    gaps = [b - a for a, b in itertools.pairwise(stamps[: len(floors) + 1])]
    assert all(gap >= floor * 0.95 for gap, floor in zip(gaps, floors, strict=True)), gaps


def gap_after(offset: int) -> list[dict[str, Any]]:
    return [{"data": {}, "offset": offset + 2}]  # offset + 1 is never there


def always_recovered_with_a_gap(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
    offset = params.get("offset", 0)
    return {
        "recoverable": True,
        "epoch": "e1",
        "offset": offset,
        "recovered": True,
        "was_recovering": bool(params.get("recover")),
        "publications": gap_after(offset),
    }


def never_recovered_with_a_gap(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "recoverable": True,
        "epoch": "e1",
        "offset": 7,
        "recovered": False,
        "was_recovering": bool(params.get("recover")),
        "publications": gap_after(7),
    }


@pytest.mark.parametrize(
    "on_subscribe",
    [always_recovered_with_a_gap, never_recovered_with_a_gap],
    ids=["recovered-gap", "not-recovered-gap"],
)
def test_resubscribes_after_gaps_back_off(
    make_client: Callable[..., RealtimeClient], on_subscribe: Callable[..., dict[str, Any]]
) -> None:
    stamps: list[float] = []

    def record(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        stamps.append(time.monotonic())
        return on_subscribe(peer, params)

    with HostileWSServer(centrifugo(on_subscribe=record)) as server:
        client = make_client(
            server.url, min_reconnect_delay=0.1, max_reconnect_delay=10.0, random=MaxRandom()
        )
        client.connect()
        client.subscribe("chat:1", Collector())
        assert_backs_off(stamps, [0.0, *BACKOFF])  # the first resubscribe is immediate
        assert len(server.peers) == 1  # resubscribed on the same connection


def test_retried_subscribe_errors_back_off(make_client: Callable[..., RealtimeClient]) -> None:
    stamps: list[float] = []

    def handle(peer: Peer) -> None:
        peer.accept_upgrade()
        for command in peer.commands():
            if "connect" in command:
                peer.send_json({"id": command["id"], "connect": {"client": "c"}})
            elif "subscribe" in command:
                stamps.append(time.monotonic())
                error = {"code": 100, "message": "internal", "temporary": True}
                peer.send_json({"id": command["id"], "error": error})

    with HostileWSServer(handle) as server:
        client = make_client(
            server.url, min_reconnect_delay=0.1, max_reconnect_delay=10.0, random=MaxRandom()
        )
        client.connect()
        client.subscribe("chat:1", Collector())
        assert_backs_off(stamps, BACKOFF)


def test_the_resubscribe_backoff_starts_over_after_a_stretch_without_gaps() -> None:
    sub = Subscription("chat:1", lambda _pub: None)
    assert [sub.next_retry_step(t, 5.0) for t in (0.0, 1.0, 2.0)] == [0, 1, 2]
    sub.subscribed_cleanly(3.0)
    assert sub.next_retry_step(4.0, 5.0) == 3  # a gap 1 s after a clean subscribe: no reset
    sub.subscribed_cleanly(10.0)
    sub.subscribed_cleanly(12.0)  # still the same clean stretch, from 10 s
    assert sub.next_retry_step(15.0, 5.0) == 0  # 5 s in one piece: the backoff starts over


def test_already_subscribed_answers_back_off(make_client: Callable[..., RealtimeClient]) -> None:
    stamps: list[float] = []

    def handle(peer: Peer) -> None:
        peer.accept_upgrade()
        for command in peer.commands():
            if "connect" in command:
                peer.send_json({"id": command["id"], "connect": {"client": "c"}})
            elif "subscribe" in command:
                stamps.append(time.monotonic())
                error = {"code": 105, "message": "already subscribed"}
                peer.send_json({"id": command["id"], "error": error})
            else:
                peer.send_json({"id": command["id"], "unsubscribe": {}})

    with HostileWSServer(handle) as server:
        client = make_client(
            server.url, min_reconnect_delay=0.1, max_reconnect_delay=10.0, random=MaxRandom()
        )
        client.connect()
        client.subscribe("chat:1", Collector())
        assert_backs_off(stamps, [0.0, *BACKOFF])  # unsubscribed, then subscribed again


# -- the handshake follows redirects within the same deadline ---------------------------------


def test_a_redirected_handshake_reaches_the_target(
    make_client: Callable[..., RealtimeClient],
) -> None:
    with HostileWSServer(centrifugo()) as target:

        def redirect(peer: Peer) -> None:
            peer.read_request()
            peer.send(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target.url}\r\n\r\n".encode())

        with HostileWSServer(redirect) as server:
            client = make_client(server.url)
            client.connect()
            assert client.wait_connected(WAIT)
            assert len(server.peers) == 1 and len(target.peers) == 1


def test_a_redirect_loop_fails_the_attempt(make_client: Callable[..., RealtimeClient]) -> None:
    def redirect_to_self(peer: Peer) -> None:
        peer.read_request()
        location = f"ws://127.0.0.1:{peer.server.port}/connection/websocket"
        peer.send(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\n\r\n".encode())

    with HostileWSServer(redirect_to_self) as server:
        client = make_client(server.url)
        client.connect()
        assert wait_until(lambda: "redirects" in client.stats().last_error, WAIT)
        assert client.stats().connects == 0


# -- TLS and proxies: the paths of the bounded handshake that end well or are refused --------


def test_wss_connects_with_the_ca_bundle_from_the_environment(
    make_client: Callable[..., RealtimeClient],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    got = Collector()

    def publish(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "recoverable": True,
            "epoch": "e1",
            "offset": 0,
            "publications": [{"data": {"n": 1}, "offset": 1}],
        }

    with HostileWSServer(centrifugo(on_subscribe=publish), tls=server_context) as server:
        monkeypatch.setenv("WEBSOCKET_CLIENT_CA_BUNDLE", str(bundle))
        client = make_client(server.url)
        client.connect()
        client.subscribe("chat:1", got)
        assert got.wait_count(1, WAIT)
        monkeypatch.delenv("WEBSOCKET_CLIENT_CA_BUNDLE")
        other = make_client(server.url, timeout=2.0)  # the system's CAs: not ours
        other.connect()
        assert wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in other.stats().last_error, WAIT)


def test_a_reset_before_the_tls_handshake_leaks_no_socket(
    make_client: Callable[..., RealtimeClient],
) -> None:
    def reset(peer: Peer) -> None:
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with HostileWSServer(reset) as server:
        before = open_fds()
        client = make_client(
            server.url.replace("ws", "wss", 1), min_reconnect_delay=0.01, max_reconnect_delay=0.02
        )
        client.connect()
        assert server.wait_peers(20, WAIT)
        client.close()
        assert server.wait_all_closed(WAIT)
        gc.collect()  # an orphaned TLS socket would warn here (warnings are errors)
        assert open_fds() <= before  # fewer when other tests' leftovers closed meanwhile


def proxy_env(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy" if url.startswith("socks") else "http_proxy", url)


def test_proxy_credentials_are_sent_and_a_refusal_fails_the_attempt(
    make_client: Callable[..., RealtimeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    heads: list[bytes] = []

    def refuse(peer: Peer) -> None:
        while b"\r\n\r\n" not in peer._buf:
            peer._fill(len(peer._buf) + 1)
        heads.append(peer._buf)
        peer.send(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")

    with HostileWSServer(refuse) as proxy:
        proxy_env(monkeypatch, f"http://u%40x:p%3Aw@127.0.0.1:{proxy.port}")
        client = make_client("ws://127.0.0.1:9/connection/websocket")
        client.connect()
        assert wait_until(lambda: "407" in client.stats().last_error, WAIT)
    expected = base64.b64encode(b"u@x:p:w").decode()
    assert f"Proxy-Authorization: Basic {expected}".encode() in heads[0]


def test_an_unsupported_proxy_scheme_fails_the_attempt(
    make_client: Callable[..., RealtimeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_env(monkeypatch, "socks5://127.0.0.1:9")
    client = make_client("wss://127.0.0.1:9/connection/websocket")
    client.connect()
    assert wait_until(lambda: "unsupported proxy" in client.stats().last_error, WAIT)
