"""Opening the realtime WebSocket within bounds: one deadline over the handshake, capped messages.

websocket-client bounds each socket operation by its timeout, not the handshake as a whole:
a server that dribbles its upgrade response (or its TLS handshake) a byte at a time, or
sends endless headers, keeps ``WebSocket.connect`` busy for ever; and it reads a frame of
any announced length, or fragments without end, into memory. Here:

- the TCP connect, the proxy tunnel (``CONNECT``), the TLS handshake and the HTTP upgrade
  response share one deadline (the client's ``timeout``), and the bytes read before the
  upgrade completes are capped (:data:`MAX_HANDSHAKE_BYTES`); websocket-client still writes
  the request and checks the answer (``Sec-WebSocket-Accept``), on a socket whose every
  read is bounded by what is left of the deadline;
- every frame's announced length, and a fragmented message's running total, is checked
  against the message limit as soon as the frame header is read, before any of the payload
  (:class:`LimitedFrameBuffer` raises :class:`MessageTooBigError`).

:func:`open_websocket` reports the raw socket it is working on through ``track`` so that
``close()`` can shut it down and end a handshake at once.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import websocket
from websocket._handshake import SUPPORTED_REDIRECT_STATUSES

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_HANDSHAKE_BYTES",
    "HandshakeTimeoutError",
    "HandshakeTooLargeError",
    "LimitedFrameBuffer",
    "MessageTooBigError",
    "open_websocket",
    "shutdown_socket",
]

#: Default limit of one received message (a frame, or a fragmented message's total).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Most bytes read before the upgrade completes (proxy reply + upgrade response).
MAX_HANDSHAKE_BYTES = 64 * 1024
#: Redirects followed by one handshake (all within the same deadline).
MAX_REDIRECTS = 3

TrackSocket = Callable[["socket.socket | None"], None]


class HandshakeTimeoutError(websocket.WebSocketTimeoutException):
    """The handshake did not complete within the connect timeout."""


class HandshakeTooLargeError(websocket.WebSocketException):
    """The server sent more than :data:`MAX_HANDSHAKE_BYTES` before the upgrade completed."""


class MessageTooBigError(websocket.WebSocketException):
    """A received frame, or a fragmented message, is over the message limit.

    Attributes:
        size: the size announced (the frame's length, or the message's total so far).
        limit: the limit it is over.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"received a message of {size} bytes, over the {limit}-byte limit")
        self.size = size
        self.limit = limit


class _Deadline:
    """The handshake's one deadline; also ends it when the client is closing."""

    def __init__(
        self, timeout: float, clock: Callable[[], float], cancelled: Callable[[], bool]
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._cancelled = cancelled
        self._at = clock() + timeout

    def expired(self) -> HandshakeTimeoutError:
        return HandshakeTimeoutError(
            f"the WebSocket handshake did not complete within {self.timeout:g}s"
        )

    def remaining(self) -> float:
        """Seconds left; raises once none are, or when the client is closing."""
        if self._cancelled():
            raise websocket.WebSocketConnectionClosedException("the client is closing")
        left = self._at - self._clock()
        if left <= 0:
            raise self.expired()
        return left


class _BoundedSocket:
    """The socket websocket-client speaks the upgrade on: reads bounded by the deadline and cap.

    Only what websocket-client's handshake uses is provided.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline
        self.received = 0

    def recv(self, bufsize: int) -> bytes:
        self._sock.settimeout(self._deadline.remaining())
        try:
            data = self._sock.recv(bufsize)
        except TimeoutError as exc:
            raise self._deadline.expired() from exc
        self.received += len(data)
        if self.received > MAX_HANDSHAKE_BYTES:
            raise HandshakeTooLargeError(
                f"handshake response over {MAX_HANDSHAKE_BYTES} bytes: refused"
            )
        return data

    def send(self, data: bytes) -> int:
        self._sock.settimeout(self._deadline.remaining())
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise self._deadline.expired() from exc
        return len(data)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def settimeout(self, value: float | None) -> None:
        """Ignored: the deadline decides."""

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def read_head(self) -> bytes:
        """Read an HTTP response head (through the blank line), a byte at a time.

        A byte at a time so nothing after the head (a TLS handshake) is consumed.
        """
        head = bytearray()
        while not head.endswith(b"\r\n\r\n"):
            chunk = self.recv(1)
            if not chunk:
                raise websocket.WebSocketConnectionClosedException("proxy closed the connection")
            head += chunk
        return bytes(head)


def _proxy_for(host: str, secure: bool) -> str | None:
    """The proxy URL the environment gives for ``host``: ``https_proxy`` for wss (else
    ``http_proxy``), ``http_proxy`` for ws; none when ``no_proxy`` covers ``host``."""
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass(host):
        return None
    return proxies.get("https") if secure and proxies.get("https") else proxies.get("http")


def _connect_tcp(host: str, port: int, deadline: _Deadline) -> socket.socket:
    last: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP
    ):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(deadline.remaining())
            sock.connect(address)
        except TimeoutError as exc:
            sock.close()
            raise deadline.expired() from exc
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last if last is not None else OSError(f"no address for {host}")


def _tunnel(
    sock: socket.socket, proxy: urllib.parse.SplitResult, target: str, deadline: _Deadline
) -> None:
    """Ask an HTTP proxy for a tunnel to ``target`` (``host:port``)."""
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username is not None:
        user = urllib.parse.unquote(proxy.username)
        password = urllib.parse.unquote(proxy.password or "")
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {credentials}")
    bounded = _BoundedSocket(sock, deadline)
    bounded.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    status_line = bounded.read_head().split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        raise websocket.WebSocketProxyException(f"proxy refused the tunnel: {status_line!r}")


def _tls_context() -> ssl.SSLContext:
    """Certificate checks as websocket-client's defaults (``WEBSOCKET_CLIENT_CA_BUNDLE``)."""
    bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")
    if bundle and os.path.isfile(bundle):
        return ssl.create_default_context(cafile=bundle)
    if bundle and os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context()


def _open_socket(url: str, deadline: _Deadline, track: TrackSocket) -> socket.socket:
    """A connected socket to ``url``'s host (tunnelled, TLS-wrapped as needed), in time."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    proxy_url = _proxy_for(host, secure)
    if proxy_url is None:
        sock = _connect_tcp(host, port, deadline)
        track(sock)
    else:
        proxy = urllib.parse.urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
        if proxy.scheme != "http" or not proxy.hostname:
            raise websocket.WebSocketProxyException(
                f"unsupported proxy for realtime connections: {proxy.scheme}://"
            )
        sock = _connect_tcp(proxy.hostname, proxy.port or 80, deadline)
        track(sock)
        try:
            _tunnel(sock, proxy, f"{host}:{port}", deadline)
        except BaseException:
            sock.close()
            raise
    if not secure:
        return sock
    # Not tracked while it is wrapped (a shutdown then would leak the TLS socket): a close()
    # meanwhile is seen by the deadline's check right after.
    track(None)
    try:
        tls = _tls_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    except BaseException as exc:
        _close_orphaned_tls(exc)
        sock.close()
        raise
    track(tls)
    try:
        tls.settimeout(deadline.remaining())
        tls.do_handshake()  # CPython bounds the whole handshake by the timeout
    except TimeoutError as exc:
        tls.close()
        raise deadline.expired() from exc
    except BaseException:
        tls.close()
        raise
    return tls


def _close_orphaned_tls(exc: BaseException) -> None:
    """Close the TLS socket a failed ``wrap_socket`` made and dropped.

    When the peer resets the connection before the TLS handshake, CPython's
    ``SSLSocket._create`` raises after taking over the descriptor, without closing the new
    socket: it is only found in the traceback.
    """
    tb = exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, ssl.SSLSocket):
            candidate.close()
        tb = tb.tb_next


def shutdown_socket(sock: socket.socket) -> None:
    """Wake whatever thread is blocked on ``sock`` (plain or TLS), from another thread.

    The socket-level shutdown, also for a TLS socket: ``SSLSocket.shutdown`` would drop
    the TLS state under the feet of the thread using it.
    """
    # Not connected yet, or already closed: the deadline and ``cancelled`` end it then.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class LimitedFrameBuffer(websocket.frame_buffer):
    """websocket-client's frame reader, refusing frames and messages over ``limit`` bytes.

    The check runs when a frame's length has been read, before any of its payload is.
    Control frames are limited to 125 bytes by the protocol (websocket-client checks them).
    """

    def __init__(
        self, recv_fn: Callable[[int], bytes], skip_utf8_validation: bool, limit: int
    ) -> None:
        super().__init__(recv_fn, skip_utf8_validation)
        self.limit = limit
        self._message = 0  # bytes of the data message being received, all fragments

    def recv_length(self) -> None:
        super().recv_length()
        assert self.header is not None and self.length is not None  # set by the calls above
        opcode = self.header[4]
        if opcode >= websocket.ABNF.OPCODE_CLOSE:
            return
        if opcode == websocket.ABNF.OPCODE_CONT:
            self._message += self.length
        else:
            self._message = self.length
        if self._message > self.limit:
            raise MessageTooBigError(self._message, self.limit)


def open_websocket(
    url: str,
    *,
    timeout: float,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    track: TrackSocket = lambda _sock: None,
    cancelled: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Open a ``websocket.WebSocket`` to ``url``, the whole handshake within ``timeout`` s.

    Args:
        url: ``ws(s)://host[:port]/path``.
        timeout: seconds for everything up to the upgrade (TCP, proxy, TLS, HTTP); the
            returned socket's operations then time out after this too.
        max_message_bytes: limit of one received message (see :class:`LimitedFrameBuffer`).
        track: called with each raw socket as it is opened (so that another thread may shut
            it down, see :func:`shutdown_socket`), and with ``None`` when the handshake is
            over either way.
        cancelled: polled before every step; True ends the handshake (the client closes).
        clock: monotonic clock for the deadline.

    Raises:
        HandshakeTimeoutError: the deadline passed.
        HandshakeTooLargeError: the response before the upgrade was too long.
        websocket.WebSocketException, OSError: any other failed handshake.
    """
    deadline = _Deadline(timeout, clock, cancelled)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            sock = _open_socket(url, deadline, track)
            ws: Any = websocket.WebSocket(enable_multithread=True)
            try:
                ws.connect(url, socket=_BoundedSocket(sock, deadline), redirect_limit=0)
            except websocket.WebSocketException:
                sock.close()
                response = ws.handshake_response
                location = response.headers.get("location") if response is not None else None
                if (
                    response is None
                    or response.status not in SUPPORTED_REDIRECT_STATUSES
                    or not location
                ):
                    raise
                url = urllib.parse.urljoin(url, location)
                if not url.startswith(("ws://", "wss://")):
                    raise
                continue
            except BaseException:
                sock.close()
                raise
            ws.sock = sock  # past the upgrade: the plain socket, the client's read slices
            sock.settimeout(timeout)
            old = ws.frame_buffer
            ws.frame_buffer = LimitedFrameBuffer(
                old.recv, old.skip_utf8_validation, max_message_bytes
            )
            return ws
        raise websocket.WebSocketException(f"more than {MAX_REDIRECTS} redirects")
    finally:
        track(None)
