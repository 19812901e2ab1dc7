"""Purpose-made HTTP servers for the outbox's hostile tests (not the reference server).

:class:`RateLimitServer` answers ``POST /api/messages`` with ``429`` and a ``Retry-After``
of its choosing until told to recover, then creates the message (``201``), following API.md
(written from the contract alone, replaying nothing of the reference server).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["RateLimitServer", "rate_limit_server"]


class RateLimitServer(ThreadingHTTPServer):
    """Rate-limits every create with ``Retry-After: <retry_after>`` until :meth:`recover`.

    Attributes:
        retry_after: the header's value, sent verbatim.
        requests: ``(status sent, Idempotency-Key)`` of each create, in arrival order.
        answered: set after each answer (cleared by whoever waits for the next one).
    """

    daemon_threads = True

    def __init__(self, retry_after: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.retry_after = retry_after
        self.limited = True
        self.requests: list[tuple[int, str | None]] = []
        self.answered = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def recover(self) -> None:
        """From now on creates succeed."""
        with self.lock:
            self.limited = False


class _Handler(BaseHTTPRequestHandler):
    server: RateLimitServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read :attr:`RateLimitServer.requests`."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        key = self.headers.get("Idempotency-Key")
        with self.server.lock:
            limited = self.server.limited
        if self.path != "/api/messages":
            self._send(404, {"error": {"code": "not_found", "message": "no such route"}})
        elif limited:
            error = {"error": {"code": "rate_limited", "message": "slow down"}}
            self._send(429, error, {"Retry-After": self.server.retry_after})
        else:
            message = {
                "id": f"m{len(self.server.requests) + 1}",
                "channelId": body.get("channelId"),
                "text": body.get("text"),
                "attachments": body.get("attachments") or [],
                "parentId": body.get("parentId"),
                "userId": "u1",
                "createdAt": "2026-12-02T00:00:00Z",
                "updatedAt": None,
            }
            self._send(201, message)
        with self.server.lock:
            self.server.requests.append((self._status, key))
        self.server.answered.set()

    def _send(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def rate_limit_server(retry_after: str) -> Iterator[RateLimitServer]:
    """A :class:`RateLimitServer` serving in a thread for the ``with`` block."""
    server = RateLimitServer(retry_after)
    thread = threading.Thread(target=server.serve_forever, name="rate-limit-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
