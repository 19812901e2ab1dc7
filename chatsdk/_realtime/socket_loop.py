"""The realtime client's socket thread: connection attempts, one after the other.

For each attempt the socket thread fetches a token, makes the WebSocket handshake under a
breaker permit, and then reads the socket itself (so it sees the Close frame's code, answers
pings at once and is the only reader of a connection), feeding every frame to the
:class:`~chatsdk._realtime.connection.Connection`. When the connection ends, the
:class:`~chatsdk._realtime.reconnect.ReconnectPolicy` says how long to wait, or to stop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import websocket

from chatsdk._errors import (
    CircuitBreakerOpenError,
    ForbiddenError,
    RealtimeError,
    UnauthorizedError,
)
from chatsdk._realtime.connection import CODE_TOKEN_ERROR, ClientContext, Connection
from chatsdk._realtime.reconnect import Outcome, ReconnectPolicy, is_final_close_code
from chatsdk._realtime.stats import Counters, RealtimeState
from chatsdk._realtime.transport import MessageTooBigError, open_websocket
from chatsdk._version import __version__

if TYPE_CHECKING:
    from chatsdk._realtime.subscription import Subscription

__all__ = ["AttemptPermit", "BreakerLike", "SocketLoop", "close_socket", "parse_close_frame"]

log = logging.getLogger("chatsdk._realtime.client")

#: A drop within this many seconds of opening counts as a breaker failure.
BREAKER_HEALTHY_AFTER = 5.0
#: The close code for a message over the limit (RFC 6455 "Message Too Big").
CODE_MESSAGE_TOO_BIG = 1009
_MAX_READ_SLICE = 0.25


class AttemptPermit(Protocol):
    """Leave from a breaker for one connection attempt (:class:`chatsdk.Permit` fits)."""

    def success(self) -> None: ...  # pragma: no cover - protocol
    def failure(self) -> None: ...  # pragma: no cover - protocol
    def release(self) -> None: ...  # pragma: no cover - protocol


class BreakerLike(Protocol):
    """What the client needs of a circuit breaker (:class:`chatsdk.CircuitBreaker` fits)."""

    def acquire(self) -> AttemptPermit: ...  # pragma: no cover - protocol


class SocketLoop:
    """The socket thread's half of :class:`~chatsdk.RealtimeClient` (a base class of it).

    It runs on the client's state, declared here; every name is set by the client.
    """

    url: str
    _lock: threading.RLock
    _changed: threading.Condition
    _closing: threading.Event
    _running: bool
    _error: RealtimeError | None
    _breaker: BreakerLike | None
    _policy: ReconnectPolicy
    _counters: Counters
    _context: ClientContext
    _conn: Connection | None
    _subs: dict[str, Subscription]
    _token: str
    _get_token: Callable[[], str] | None
    _timeout: float
    _max_message_bytes: int
    _clock: Callable[[], float]
    #: the raw socket of the handshake in progress (``close()`` shuts it down).
    _handshake_sock: socket.socket | None

    def _set_state(self, new: RealtimeState) -> None:
        raise NotImplementedError

    def _reconnecting(self, attempt: int, delay: float, close_code: int | None) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        delay: float | None = None
        try:
            while not self._closing.is_set():
                if delay is not None:
                    with self._lock:
                        self._counters.delays.append(delay)
                    if self._closing.wait(delay):
                        break
                permit: AttemptPermit | None = None
                if self._breaker is not None:
                    try:
                        permit = self._breaker.acquire()
                    except CircuitBreakerOpenError as exc:
                        log.info(
                            "realtime breaker %s is open; waiting %.2fs", exc.name, exc.retry_after
                        )
                        delay = max(exc.retry_after, 0.01)
                        continue
                outcome = self._attempt(permit)
                if self._closing.is_set():
                    break
                delay = self._after_attempt(outcome)
                if delay is None:
                    break
        except Exception:  # a bug must not leave a zombie client in CONNECTING
            log.exception("the realtime socket thread failed")
            self._stop_on_error(RealtimeError("the realtime socket thread failed"))
        finally:
            with self._lock:
                self._running = False
                self._changed.notify_all()

    def _after_attempt(self, outcome: Outcome) -> float | None:
        """Apply the reconnect policy to an ended connection: the delay, or ``None`` to stop."""
        with self._lock:
            if outcome.handshake_failed:
                self._counters.last_error = outcome.reason
            else:
                self._counters.last_code = outcome.code
                self._counters.last_reason = outcome.reason
            decision = self._policy.after(outcome)
        if decision.delay is None:
            self._stop_on_error(RealtimeError(decision.stop_reason, code=outcome.code))
            return None
        self._set_state(RealtimeState.SUSPENDED if decision.suspended else RealtimeState.CONNECTING)
        code = None if outcome.handshake_failed else outcome.code
        self._reconnecting(self._policy.unconnected, decision.delay, code)
        return decision.delay

    def _stop_on_error(self, error: RealtimeError) -> None:
        log.warning("realtime client stopped: %s", error)
        with self._lock:
            self._error = error
            self._set_state(RealtimeState.DISCONNECTED)

    def _attempt(self, permit: AttemptPermit | None) -> Outcome:
        with self._lock:
            self._counters.attempts += 1
        outcome = self._open_and_read(permit)
        if permit is not None:
            if self._closing.is_set() and not outcome.handshake_failed:
                permit.release()
            elif outcome.handshake_failed or outcome.opened_for < BREAKER_HEALTHY_AFTER:
                permit.failure()
            else:
                permit.success()
        return outcome

    def _open_and_read(self, permit: AttemptPermit | None) -> Outcome:
        try:
            token = self._get_token() if self._get_token is not None else self._token
        except (UnauthorizedError, ForbiddenError) as exc:
            return Outcome(code=CODE_TOKEN_ERROR, reason=f"token refused: {exc}", final=True)
        except Exception as exc:
            log.log(
                logging.WARNING if self._policy.unconnected == 0 else logging.DEBUG,
                "realtime token fetch failed: %s",
                exc,
            )
            return Outcome(
                code=CODE_TOKEN_ERROR, reason=f"token fetch failed: {exc}", handshake_failed=True
            )
        if self._closing.is_set():
            return Outcome(code=1000, reason="client closed")
        try:
            # The whole handshake within the timeout; close() shuts the socket down.
            ws = open_websocket(
                self.url,
                timeout=self._timeout,
                max_message_bytes=self._max_message_bytes,
                track=self._track_handshake,
                cancelled=self._closing.is_set,
            )
        except Exception as exc:
            if self._closing.is_set():
                return Outcome(code=1000, reason="client closed")
            log.info("realtime handshake with %s failed: %r", self.url, exc)
            return Outcome(code=1006, reason=f"handshake failed: {exc}", handshake_failed=True)
        with self._lock:
            if self._closing.is_set():
                ws.shutdown()
                return Outcome(code=1000, reason="client closed")
            conn = Connection(self._context, ws)
            self._conn = conn
            conn.send_connect(token, "chatsdk", __version__)
        conn.flush()
        try:
            outcome = self._read(conn, ws, permit)
        finally:
            with self._lock:
                conn.live = False
                self._conn = None
                if conn.connected_at is not None:
                    self._counters.connection_lost(self._clock())
                for sub in self._subs.values():
                    sub.connection_lost()
            ws.shutdown()
        now = self._clock()
        outcome.opened_for = now - conn.opened_at
        if conn.connected_at is not None:
            outcome.connected_for = now - conn.connected_at
        return outcome

    def _track_handshake(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._handshake_sock = sock

    def _read(self, conn: Connection, ws: Any, permit: AttemptPermit | None) -> Outcome:
        permit_settled = permit is None
        while True:
            with self._lock:
                wait = conn.check_deadlines()
                ending = conn.ending
                if ending is None and conn.connected_at is not None:
                    now = self._clock()
                    self._policy.up_for(now - conn.connected_at)  # stable: backoff starts over
                    if not permit_settled and now - conn.opened_at >= BREAKER_HEALTHY_AFTER:
                        permit_settled = True
                        if permit is not None:
                            permit.success()
            conn.flush()  # what the deadlines queued (subscribe retries, refreshes)
            if ending is not None:
                close_socket(ws, 1000, ending.reason)
                return ending
            if self._closing.is_set():
                return Outcome(code=1000, reason="client closed")
            slice_ = _MAX_READ_SLICE if wait is None else min(_MAX_READ_SLICE, wait)
            try:
                ws.settimeout(max(0.005, slice_))
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                continue
            except MessageTooBigError as exc:
                # Checked from the frame header: the payload was never read. 1009: too big.
                log.warning(
                    "realtime connection to %s closed (1009) and reconnecting: %s", self.url, exc
                )
                close_socket(ws, CODE_MESSAGE_TOO_BIG, "message too big")
                return Outcome(code=CODE_MESSAGE_TOO_BIG, reason=str(exc))
            except Exception as exc:
                if self._closing.is_set():
                    return Outcome(code=1000, reason="client closed")
                return Outcome(code=1006, reason=f"connection lost: {exc!r}")
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code, reason = parse_close_frame(frame.data)
                return Outcome(code=code, reason=reason, final=is_final_close_code(code))
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                conn.handle_frame(frame.data)
                conn.flush()  # pongs and replies, sent after the lock is released
            else:
                with self._lock:
                    conn.last_recv = self._clock()  # a WebSocket-level ping is life too


def parse_close_frame(data: bytes) -> tuple[int, str]:
    """The status code and reason of a Close frame's payload (1005 when it has none)."""
    if len(data) < 2:
        return 1005, ""
    code = int.from_bytes(data[:2], "big")
    return code, data[2:].decode("utf-8", errors="replace")


def close_socket(ws: Any, code: int, reason: str) -> None:
    """Send a Close frame if possible and wake a reader blocked on the socket."""
    try:
        if ws.connected:
            ws.send_close(code, reason[:60])
    except Exception as exc:
        log.debug("realtime close frame not sent: %r", exc)
    sock = getattr(ws, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
