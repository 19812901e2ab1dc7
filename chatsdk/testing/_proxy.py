"""ChaosProxy: a TCP proxy for the network faults a server cannot make by itself.

Put it between a client and a server (``ChaosProxy(srv.host, srv.port)``, then point the
client at ``proxy.url``) and change its behaviour while it runs:

- ``latency``: seconds added before each chunk is forwarded, in each direction;
- ``reset_after_bytes``: after that many bytes from the server have been forwarded to the
  client on one connection, the client connection is reset (RST) mid-response;
- ``blackhole``: connections are accepted and read, but nothing is forwarded or answered;
- ``refuse``: the proxy stops listening (connects are refused) and resets open connections;
  setting it back to false listens again on the same port.

One thread accepts; one thread per connection pumps both directions with ``select``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["ChaosProxy"]

log = logging.getLogger(__name__)

_POLL = 0.05
_CHUNK = 65536


def _reset(sock: socket.socket | None) -> None:
    """Close with a TCP reset (``SO_LINGER`` 0)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Pipe:
    """One proxied connection."""

    def __init__(self, proxy: ChaosProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.sent_down = 0
        self.reset_requested = False
        self.closed = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="chatsdk-chaos-pipe", daemon=True)

    def run(self) -> None:
        proxy = self.proxy
        try:
            if not proxy.blackhole:
                try:
                    self.upstream = socket.create_connection(proxy.upstream, timeout=5.0)
                except OSError as exc:
                    log.debug("chaos proxy: upstream %s unreachable: %r", proxy.upstream, exc)
                    _reset(self.client)
                    return
            else:
                proxy._count("blackholed_connections")
            self.pump()
        finally:
            self.close(reset=self.reset_requested)
            proxy._forget(self)

    def pump(self) -> None:
        proxy = self.proxy
        while not self.stop.is_set():
            socks = [self.client] if self.upstream is None else [self.client, self.upstream]
            try:
                readable, _, _ = select.select(socks, [], [], _POLL)
            except (OSError, ValueError):
                return
            for sock in readable:
                try:
                    data = sock.recv(_CHUNK)
                except OSError:
                    return
                if not data:
                    return
                if proxy.blackhole or self.upstream is None:
                    continue
                if proxy.latency > 0:
                    time.sleep(proxy.latency)
                if sock is self.client:
                    proxy._count("bytes_up", len(data))
                    if not self._send(self.upstream, data):
                        return
                elif not self._send_down(data):
                    return

    def _send_down(self, data: bytes) -> bool:
        limit = self.proxy.reset_after_bytes
        if limit is not None and self.sent_down + len(data) >= limit:
            head = data[: max(0, limit - self.sent_down)]
            if head:
                self._send(self.client, head)
            self.sent_down += len(head)
            self.proxy._count("bytes_down", len(head))
            self.proxy._count("resets")
            log.debug("chaos proxy: reset after %d bytes", self.sent_down)
            self.close(reset=True)
            return False
        self.sent_down += len(data)
        self.proxy._count("bytes_down", len(data))
        return self._send(self.client, data)

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
        except OSError:
            return False
        return True

    def abort(self) -> None:
        """Ask the pipe's thread to reset both sides (within one poll interval)."""
        self.reset_requested = True
        self.stop.set()

    def join(self) -> None:
        if self.thread is not threading.current_thread() and self.thread.ident is not None:
            self.thread.join(timeout=5.0)

    def close(self, *, reset: bool) -> None:
        self.stop.set()
        if self.closed:
            return
        self.closed = True
        if reset:
            _reset(self.client)
            _reset(self.upstream)
        else:
            for sock in (self.client, self.upstream):
                if sock is not None:
                    sock.close()


class ChaosProxy:
    """A TCP proxy with faults you can change while it runs. Starts listening at once.

    Args:
        upstream_host: the server's host.
        upstream_port: the server's port.
        host: interface to listen on.
        port: port to listen on (0: a free one, kept across ``refuse`` toggles).

    Attributes:
        latency: seconds added before each chunk is forwarded, in each direction.
        reset_after_bytes: reset a connection once that many bytes were sent to the client,
            or ``None``.
        blackhole: accept and read, never forward nor answer.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.latency = 0.0
        self.reset_after_bytes: int | None = None
        self.blackhole = False
        self._refuse = False
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._stats: dict[str, int] = {}
        self._closed = False
        self._listener: socket.socket | None = None
        self._accept_stop = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._port = port
        self._listen()

    # -- listening ---------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._port))
        listener.listen(128)
        listener.settimeout(_POLL)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._accept_stop = threading.Event()
        self._accept_thread = threading.Thread(
            target=self._accept_loop,
            args=(listener, self._accept_stop),
            name="chatsdk-chaos-accept",
            daemon=True,
        )
        self._accept_thread.start()

    def _unlisten(self) -> None:
        self._accept_stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5.0)
            self._accept_thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            pipe = _Pipe(self, client)
            with self._lock:
                if self._closed:
                    _reset(client)
                    return
                self._pipes.add(pipe)
                self._stats["connections_total"] = self._stats.get("connections_total", 0) + 1
            pipe.thread.start()

    # -- controls ----------------------------------------------------------------------

    @property
    def refuse(self) -> bool:
        """Refuse connections (not listening; open connections are reset when set)."""
        return self._refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        with self._lock:
            if self._closed or value == self._refuse:
                return
            self._refuse = value
        if value:
            self._unlisten()
            self.drop_connections()
        else:
            self._listen()

    def drop_connections(self) -> None:
        """Reset every open connection now."""
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.abort()
        for pipe in pipes:
            pipe.join()

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._stats[name] = self._stats.get(name, 0) + amount

    def counters(self) -> dict[str, int]:
        """``connections_total``, ``resets``, ``blackholed_connections``, ``bytes_up``,
        ``bytes_down`` and ``open`` (connections open now)."""
        with self._lock:
            stats = dict.fromkeys(
                ("connections_total", "resets", "blackholed_connections", "bytes_up", "bytes_down"),
                0,
            )
            stats.update(self._stats)
            stats["open"] = len(self._pipes)
            return stats

    # -- addresses and lifecycle -------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy."""
        return f"http://{self.host}:{self._port}"

    def close(self) -> None:
        """Stop listening and reset every open connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unlisten()
        self.drop_connections()

    def __enter__(self) -> ChaosProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ChaosProxy {self.url} -> {self.upstream[0]}:{self.upstream[1]}>"
