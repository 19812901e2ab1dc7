"""urllib3 connection classes that read a response the way the request path needs.

Two things urllib3 and ``http.client`` do not do, both done here, at the socket:

- **A time limit on the whole response.** A socket timeout bounds each ``recv``, so a
  server that dribbles one byte a second never times out. Every read of a response made
  under :func:`time_limit` is checked against one monotonic deadline, and the socket's
  timeout is shortened to what is left of it: status line, headers and body together
  finish by the deadline or fail with a read timeout (mapped to
  :class:`~chatsdk.TransportTimeoutError`).
- **Interim responses are skipped.** ``http.client`` skips ``100 Continue`` only; a
  ``103 Early Hints`` (or any other 1xx but ``101``) before the final response would be
  taken as the answer. Up to :data:`MAX_INTERIM_RESPONSES` of them are skipped.

:func:`install` puts these classes into a pool manager (plain, proxy or SOCKS): each of its
pool classes is replaced by a subclass whose connections build :class:`FinalResponse`.
"""

from __future__ import annotations

import functools
import http.client
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from urllib3 import PoolManager
from urllib3.connectionpool import HTTPConnectionPool

__all__ = ["MAX_INTERIM_RESPONSES", "FinalResponse", "install", "time_limit"]

log = logging.getLogger("chatsdk.http")

#: Interim (1xx) responses skipped before one response is given up as a protocol error.
MAX_INTERIM_RESPONSES = 32

_scope = threading.local()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Responses whose connection sends its request inside this block must complete
    within ``seconds`` (None: no limit), counted from now, body included.

    The limit is taken when the response is created, so it still holds when the body is
    read after the block has exited.
    """
    previous = getattr(_scope, "deadline", None)
    _scope.deadline = None if seconds is None else time.monotonic() + seconds
    try:
        yield
    finally:
        _scope.deadline = previous


class _DeadlineReader(io.RawIOBase):
    """The socket's reader, refusing to wait past a monotonic deadline."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline = deadline
        #: the read timeout urllib3 set before reading the response (None: blocking).
        self._timeout = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the response did not complete within its time limit")
        self._sock.settimeout(left if self._timeout is None else min(self._timeout, left))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class FinalResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` that skips interim responses and keeps a deadline."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline = getattr(_scope, "deadline", None)
        if deadline is not None:
            # Detach (not close) the buffered reader: the raw reader stays open, now ours.
            raw = self.fp.detach()
            self.fp = io.BufferedReader(_DeadlineReader(raw, sock, deadline))

    def _read_status(self) -> tuple[str, int, str]:
        for _ in range(MAX_INTERIM_RESPONSES):
            version, status, reason = super()._read_status()  # type: ignore[misc]
            # 100 is skipped by http.client itself; 101 is final (and wrong, for this API).
            if not 102 <= status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)
            log.debug("skipped an interim %d response", status)
        raise http.client.HTTPException(
            f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses before a final one"
        )


@functools.cache
def _pool_class(pool: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
    """``pool`` with connections that build :class:`FinalResponse` (one class per pool)."""
    base = pool.ConnectionCls
    if getattr(base, "response_class", None) is FinalResponse:
        return pool
    connection = type(base.__name__, (base,), {"response_class": FinalResponse})
    return type(pool.__name__, (pool,), {"ConnectionCls": connection})


def install(manager: PoolManager) -> PoolManager:
    """Make every pool ``manager`` creates use :class:`FinalResponse`; returns ``manager``."""
    manager.pool_classes_by_scheme = {
        scheme: _pool_class(pool) for scheme, pool in manager.pool_classes_by_scheme.items()
    }
    return manager
