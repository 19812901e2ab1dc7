"""Minimal WebSocket servers on raw sockets, written to misbehave (tests/hostile).

Written from RFC 6455 and /work/shared/REALTIME.md, not from the reference server in
``chatsdk.testing`` (whose behaviour the SDK was tuned to). :class:`HostileWSServer` listens
on loopback, runs one handler per accepted connection on its own thread, and hands it a
:class:`Peer`: the raw socket plus just enough of the WebSocket handshake, framing and the
Centrifugo JSON protocol for a handler to be hostile at one chosen step.

Every wait is bounded, every handler stops when the server closes, and the server tracks
which of its sockets are still open, so a test can tell that the client closed its side.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
MAX_REQUEST = 64 * 1024
JOIN = 10.0  # seconds the server waits for a thread when it closes


class PeerGone(Exception):
    """The client closed or reset its side (or the server is closing)."""


class Peer:
    """One accepted connection, as seen by a handler."""

    def __init__(self, server: HostileWSServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.closed = threading.Event()  # set once the server closed this socket
        self.sent = 0  # bytes written to the client
        self.request_headers: dict[str, str] = {}
        self._buf = b""

    # -- low level --------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.server.stopping.is_set()

    def send(self, data: bytes) -> None:
        """Write ``data`` (raises :class:`PeerGone` when the client is gone)."""
        if self.stopping:
            raise PeerGone("server closing")
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise PeerGone(repr(exc)) from exc
        self.sent += len(data)

    def wait_gone(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the client to close its side; True when it did.

        Data the client sends meanwhile is kept for later reads.
        """
        if self.stopping:
            return True
        try:
            if not self._readable(timeout):
                return False
            data = self.sock.recv(65536)
        except (OSError, ValueError):
            return True
        if not data:
            return True
        self._buf += data
        return False

    def _readable(self, timeout: float) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True  # decrypted already, invisible to select
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def _fill(self, n: int) -> None:
        """Read until at least ``n`` bytes are buffered."""
        while len(self._buf) < n:
            if self.stopping:
                raise PeerGone("server closing")
            try:
                data = self.sock.recv(65536) if self._readable(0.2) else None
            except (OSError, ValueError) as exc:
                raise PeerGone(repr(exc)) from exc
            if data == b"":
                raise PeerGone("client closed")
            if data:
                self._buf += data

    def _recv_exact(self, n: int) -> bytes:
        self._fill(n)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    # -- the HTTP upgrade -------------------------------------------------------------

    def read_request(self) -> dict[str, str]:
        """Read the client's upgrade request; its headers, lower-cased names."""
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > MAX_REQUEST:
                raise PeerGone("request too long")
            self._fill(len(self._buf) + 1)
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.request_headers = headers
        return headers

    def upgrade_response(self) -> bytes:
        """The 101 response to the request read (with the right ``Sec-WebSocket-Accept``)."""
        key = self.request_headers.get("sec-websocket-key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        return (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()

    def accept_upgrade(self) -> None:
        self.read_request()
        self.send(self.upgrade_response())

    # -- framing (server frames are not masked) ----------------------------------------

    @staticmethod
    def frame_header(length: int, opcode: int = OP_TEXT, *, fin: bool = True) -> bytes:
        first = (0x80 if fin else 0) | opcode
        if length < 126:
            return struct.pack("!BB", first, length)
        if length < 1 << 16:
            return struct.pack("!BBH", first, 126, length)
        return struct.pack("!BBQ", first, 127, length)

    def send_frame(self, payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True) -> None:
        self.send(self.frame_header(len(payload), opcode, fin=fin) + payload)

    def send_json(self, *objects: dict[str, Any]) -> None:
        self.send_frame("\n".join(json.dumps(o) for o in objects).encode())

    def recv_frame(self) -> tuple[int, bytes]:
        """One client frame (client frames are masked): its opcode and payload."""
        b1, b2 = self._recv_exact(2)
        length = b2 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._recv_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._recv_exact(8))
        mask = self._recv_exact(4) if b2 & 0x80 else b"\0\0\0\0"
        data = self._recv_exact(length)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return b1 & 0x0F, payload

    def commands(self) -> Iterator[dict[str, Any]]:
        """The client's JSON commands, one by one, until it closes (answers its Close)."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == OP_CLOSE:
                with contextlib.suppress(PeerGone):
                    self.send_frame(payload[:2], OP_CLOSE)
                return
            if opcode == OP_PING:
                self.send_frame(payload, OP_PONG)
                continue
            for line in payload.decode().split("\n"):
                if line.strip():
                    yield json.loads(line)


# -- the server ---------------------------------------------------------------------------

Handler = Callable[[Peer], None]


class HostileWSServer:
    """A loopback server running ``handler(peer)`` for each accepted connection.

    Args:
        handler: the misbehaviour; it returns (or raises :class:`PeerGone`) when done, and
            the server then closes the socket.
        tls: serve ``wss://`` with this context (the TLS handshake runs on the peer's
            thread, before the handler).
    """

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.stopping = threading.Event()
        self.peers: list[Peer] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="hostile-ws", daemon=True)

    @property
    def url(self) -> str:
        scheme = "wss" if self.tls is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/connection/websocket"

    def __enter__(self) -> HostileWSServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peer = Peer(self, sock)
            thread = threading.Thread(
                target=self._serve, args=(peer,), name="hostile-ws-peer", daemon=True
            )
            with self._changed:
                self.peers.append(peer)
                self._threads.append(thread)
                self._changed.notify_all()
            thread.start()

    def _serve(self, peer: Peer) -> None:
        try:
            if self.tls is not None:
                peer.sock.settimeout(10)
                peer.sock = self.tls.wrap_socket(peer.sock, server_side=True)
            self.handler(peer)
        except (PeerGone, ssl.SSLError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                peer.sock.close()
            peer.closed.set()
            with self._changed:
                self._changed.notify_all()

    def wait_peers(self, n: int, timeout: float = 30.0) -> bool:
        """Wait until ``n`` connections were accepted."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.peers) >= n, timeout)

    def wait_all_closed(self, timeout: float = 30.0) -> bool:
        """Wait until the server closed every accepted socket (each client went away)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(p.closed.is_set() for p in self.peers), timeout
            )

    def close(self) -> None:
        self.stopping.set()
        self._listener.close()
        with self._lock:
            peers = list(self.peers)
        for peer in peers:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(peer.sock, socket.SHUT_RDWR)
        if self._acceptor.is_alive():
            self._acceptor.join(JOIN)
        for thread in list(self._threads):
            thread.join(JOIN)


# -- Centrifugo, with hooks ------------------------------------------------------------------

SubscribeHandler = Callable[[Peer, dict[str, Any]], dict[str, Any]]


def fresh_subscribe(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
    """A plain recoverable subscribe result."""
    return {"recoverable": True, "epoch": "e1", "offset": 0}


def centrifugo(
    *,
    on_connected: Handler | None = None,
    on_subscribe: SubscribeHandler = fresh_subscribe,
) -> Handler:
    """A handler speaking enough Centrifugo: connect, subscribe, unsubscribe.

    ``on_connected(peer)`` runs right after the connect reply (to misbehave from there);
    ``on_subscribe(peer, params)`` gives each subscribe's result. Other commands get ``{}``.
    """

    def handle(peer: Peer) -> None:
        peer.accept_upgrade()
        for command in peer.commands():
            cid = command.get("id")
            if "connect" in command:
                peer.send_json({"id": cid, "connect": {"client": "c1", "version": "0"}})
                if on_connected is not None:
                    on_connected(peer)
                    return
            elif "subscribe" in command:
                result = on_subscribe(peer, command["subscribe"])
                peer.send_json({"id": cid, "subscribe": result})
            else:
                kind = next(k for k in command if k != "id")
                peer.send_json({"id": cid, kind: {}})

    return handle


def connect_proxy(*, dribble: bool = False) -> Handler:
    """An HTTP proxy handler for ``CONNECT`` tunnels (run by a :class:`HostileWSServer`).

    Honest, it pipes the tunnel both ways; with ``dribble`` it answers one byte every 0.5 s,
    an answer that never ends. ``peer.request_headers["connect"]`` is the target asked for.
    """

    def handle(peer: Peer) -> None:
        while b"\r\n\r\n" not in peer._buf:
            peer._fill(len(peer._buf) + 1)
        head, rest = peer._buf.split(b"\r\n\r\n", 1)
        target = head.split(b"\r\n", 1)[0].decode().split(" ")[1]
        peer.request_headers["connect"] = target
        if dribble:
            for byte in itertools.cycle(b"HTTP/1.1 200 OK\r\nX-Slow: a\r\n"):
                peer.send(bytes([byte]))
                if peer.wait_gone(0.5):
                    return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=10)
        peer.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        upstream.sendall(rest)
        with upstream:
            _pipe(peer, upstream)

    return handle


def _pipe(peer: Peer, upstream: socket.socket) -> None:
    """Copy bytes both ways until one side closes or the server stops."""
    sockets = [peer.sock, upstream]
    while not peer.stopping:
        readable, _, _ = select.select(sockets, [], [], 0.2)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            other = upstream if sock is peer.sock else peer.sock
            try:
                other.sendall(data)
            except OSError:
                return
