"""A small purpose-made HTTP server for the bad-input tests (not the reference server).

:class:`RecordingServer` accepts loopback connections on a raw socket, records each request
exactly as it arrived (request line, raw request-target, headers, body) and answers from a
small routing rule of its own: creates get a 201 with a contract-shaped body, deletes a 204,
lists a 200. Told to, it gives every request the same fixed reply (a 401 for a wrong key,
any status, a body that is not JSON) or no reply at all (a read timeout). It never
normalises or decodes the request-target, so a test sees what went on the wire.
"""

from __future__ import annotations

import http
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import attrs

__all__ = ["RecordedRequest", "RecordingServer", "recording_server"]

_MESSAGE = {
    "id": "m1",
    "channelId": "general",
    "text": "hi",
    "attachments": [],
    "parentId": None,
    "userId": "u1",
    "createdAt": "2026-12-02T10:00:00Z",
    "updatedAt": None,
}
_REACTION = {
    "messageId": "m1",
    "reaction": "ok",
    "userId": "u1",
    "createdAt": "2026-12-02T10:00:00Z",
}


@attrs.frozen
class RecordedRequest:
    """One request as it arrived: the request-target is the raw bytes, decoded as latin-1."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class RecordingServer:
    """A one-thread-per-connection HTTP/1.1 server on 127.0.0.1 that records every request.

    Args:
        unauthorized: answer every request with ``401 unauthorized`` (a wrong key).
        reply: answer every request with this ``(status, body, headers)``; ``body`` is JSON
            unless it is ``bytes``.
        silent: read requests but never answer them (until closed).
    """

    def __init__(
        self,
        *,
        unauthorized: bool = False,
        reply: tuple[int, object, dict[str, str]] | None = None,
        silent: bool = False,
    ) -> None:
        if unauthorized:
            reply = (401, {"error": {"code": "unauthorized", "message": "wrong key"}}, {})
        self.reply = reply
        self.silent = silent
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def targets(self) -> list[str]:
        """``"METHOD target"`` of every request so far, in arrival order."""
        with self._lock:
            return [f"{r.method} {r.target}" for r in self.requests]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        self._closed.set()
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._acceptor.join(10)
        for thread in self._threads:
            thread.join(10)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                if self.silent:
                    self._closed.wait()
                    return
                conn.sendall(self._answer(request))
        except OSError:
            return
        finally:
            reader.close()
            conn.close()

    def _answer(self, request: RecordedRequest) -> bytes:
        if self.reply is not None:
            return _response(*self.reply)
        path = request.target.split("?", 1)[0]
        if request.method == "DELETE":
            return _response(204, None)
        if request.method == "POST" and path == "/api/reactions":
            return _response(201, _REACTION)
        if request.method in ("POST", "PATCH"):
            return _response(201 if request.method == "POST" else 200, _MESSAGE)
        if request.method == "GET" and path.endswith("/messages"):
            return _response(200, {"messages": [], "hasMore": False})
        return _response(404, {"error": {"code": "not_found", "message": "no such thing"}})


def _read_request(reader: object) -> RecordedRequest | None:
    readline = reader.readline  # type: ignore[attr-defined]
    line = readline(65537)
    if not line:
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = readline(65537).decode("latin-1").rstrip("\r\n")
        if not raw:
            break
        name, _, value = raw.partition(":")
        headers.append((name.strip(), value.strip()))
    length = 0
    for name, value in headers:
        if name.lower() == "content-length":
            length = int(value)
    body = reader.read(length) if length else b""  # type: ignore[attr-defined]
    return RecordedRequest(method, target, tuple(headers), body)


def _response(status: int, body: object, headers: dict[str, str] | None = None) -> bytes:
    if isinstance(body, bytes):
        payload = body
    else:
        payload = b"" if body is None else json.dumps(body).encode()
    head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
    head += f"Content-Length: {len(payload)}\r\n"
    if body is not None and not isinstance(body, bytes):
        head += "Content-Type: application/json\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    return (head + "\r\n").encode() + payload


@contextmanager
def recording_server(**options: Any) -> Iterator[RecordingServer]:
    """A :class:`RecordingServer` for the block (options as its own), closed after it."""
    server = RecordingServer(**options)
    try:
        yield server
    finally:
        server.close()
