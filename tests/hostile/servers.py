"""Hostile HTTP servers on raw sockets, written from API.md (not the reference server).

:class:`RawHTTPServer` accepts connections on 127.0.0.1 and hands each parsed request to a
scripted handler, which writes whatever bytes it likes to the socket: a body dribbled a byte
at a time, a gzip bomb, interim responses, a redirect loop. Handlers stop quietly when the
client hangs up, which is what a bounded client does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

MESSAGE_JSON = (
    b'{"id": "m1", "channelId": "general", "text": "hi", "attachments": [], "parentId": null, '
    b'"userId": "u1", "createdAt": "2026-12-02T00:00:00Z", "updatedAt": null}'
)


@dataclass
class Request:
    """One request as the server read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[socket.socket, Request], None]


@dataclass
class RawHTTPServer:
    """A TCP server answering every request with ``handler`` (one thread per connection)."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)
    #: set when a handler saw the client hang up before it finished writing.
    client_hung_up: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()
        return f"http://{host}:{port}"

    def __enter__(self) -> RawHTTPServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._acceptor.join(5)
        for conn in self._connections:
            _close(conn)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                self.handler(conn, request)
        except OSError:  # the client hung up (reset, broken pipe) or the test ended
            self.client_hung_up.set()
        finally:
            reader.close()
            _close(conn)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def _read_request(reader: object) -> Request | None:
    line = reader.readline()  # type: ignore[attr-defined]
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = reader.readline().decode("latin-1")  # type: ignore[attr-defined]
        if header in ("\r\n", "\n", ""):
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))  # type: ignore[attr-defined]
    return Request(method, target, headers, body)


def head(status: int, headers: dict[str, str] | None = None, reason: str = "X") -> bytes:
    """A status line and headers, ending the head."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def respond(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    """A handler answering ``status`` with ``body`` (JSON unless headers say otherwise)."""
    merged = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    merged.update(headers or {})

    def handler(conn: socket.socket, request: Request) -> None:
        conn.sendall(head(status, merged) + body)

    return handler


def dribble_body(interval: float, size: int = 100_000, status: int = 201) -> Handler:
    """Headers at once, then a ``size``-byte body one byte every ``interval`` seconds."""

    def handler(conn: socket.socket, request: Request) -> None:
        headers = {"Content-Type": "application/json", "Content-Length": str(size)}
        conn.sendall(head(status, headers))
        for _ in range(size):
            conn.sendall(b" ")
            time.sleep(interval)

    return handler


def dribble_head(interval: float) -> Handler:
    """A status line, then an endless header, one byte every ``interval`` seconds."""

    def handler(conn: socket.socket, request: Request) -> None:
        conn.sendall(b"HTTP/1.1 201 Created\r\nX-Slow: ")
        while True:
            conn.sendall(b"a")
            time.sleep(interval)

    return handler


def chunks_of(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def gzip_bomb(decoded_bytes: int) -> bytes:
    """A gzip stream of ``decoded_bytes`` zero bytes (about a thousandth of that on the wire)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(decoded_bytes // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


def stream_body(status: int, body: bytes, headers: dict[str, str] | None = None) -> Handler:
    """``status`` with ``body`` written in 64 KiB chunks (a client may hang up midway)."""
    merged = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    merged.update(headers or {})

    def handler(conn: socket.socket, request: Request) -> None:
        conn.sendall(head(status, merged))
        for chunk in chunks_of(body):
            conn.sendall(chunk)

    return handler


def interim_then(interim: list[int], final: Handler) -> Handler:
    """Interim (1xx) responses, each with a header, then the ``final`` handler's answer."""

    def handler(conn: socket.socket, request: Request) -> None:
        for status in interim:
            conn.sendall(head(status, {"Link": "</style.css>; rel=preload"}, reason="Interim"))
        final(conn, request)

    return handler


def redirect_to_self() -> Handler:
    """``302`` to the very URL that was asked for: a redirect loop."""

    def handler(conn: socket.socket, request: Request) -> None:
        conn.sendall(head(302, {"Location": request.target, "Content-Length": "0"}))

    return handler
