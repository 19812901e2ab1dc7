"""RealtimeClient: a Centrifugo (protocol v2, JSON) client on websocket-client threads.

Threads:

- the *socket thread* owns the reconnect loop and, for each attempt, one
  ``websocket.WebSocket`` that it reads itself (so it sees the Close frame's code, answers
  pings at once and is the only reader of a connection); the protocol session of each
  connection lives in :mod:`chatsdk._realtime.connection`;
- the *dispatch thread* (:mod:`chatsdk._realtime.dispatch`) runs every application callback,
  in order;
- short-lived *refresh threads* fetch a new token before the connection's ``ttl`` ends, so a
  slow token endpoint never delays the reader.

Only one connection is live at a time: attempts are made one after the other by the socket
thread, and anything tied to an older connection (a late refresh, a timer) is dropped.

The reconnect policy is :mod:`chatsdk._realtime.reconnect`; the socket thread's loop is
:mod:`chatsdk._realtime.socket_loop`.
"""

from __future__ import annotations

import logging
import random as _random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from chatsdk import _fork
from chatsdk._errors import (
    ConfigurationError,
    InvalidResponseError,
    RealtimeError,
    ValidationError,
)
from chatsdk._instrument import (
    Emitter,
    RealtimeReconnecting,
    RealtimeStateChanged,
    RecoveryFailed,
    SDKEvent,
)
from chatsdk._realtime.connection import ClientContext, Connection
from chatsdk._realtime.dispatch import Dispatcher
from chatsdk._realtime.reconnect import ReconnectPolicy
from chatsdk._realtime.socket_loop import BreakerLike, SocketLoop, close_socket
from chatsdk._realtime.stats import Counters, RealtimeState, RealtimeStats
from chatsdk._realtime.subscription import (
    PublicationCallback,
    RecoveryFailedCallback,
    StreamPosition,
    Subscription,
    SubscriptionState,
)
from chatsdk._realtime.transport import DEFAULT_MAX_MESSAGE_BYTES, shutdown_socket
from chatsdk._validation import check_seconds

if TYPE_CHECKING:
    from chatsdk._realtime.events import ChatEvent

log = logging.getLogger(__name__)


class RealtimeClient(SocketLoop):
    """A realtime client that stays connected and delivers every publication once, in order.

    Args:
        url: ``ws(s)://host:port/connection/websocket``.
        token: a fixed connection token.
        get_token: called before every connection attempt (and to refresh before ``ttl``).
        min_reconnect_delay: the backoff's smallest delay, seconds.
        max_reconnect_delay: the backoff's largest delay, seconds.
        restart_spread: the first reconnect after a working connection was closed by a
            restart or dropped (3001, 1001, 1006, 1012) waits ``U(0, restart_spread)``.
        stable_after: a connection up this long resets the backoff.
        suspend_after: after this many consecutive attempts that never connected the state
            is ``suspended`` (it keeps trying).
        max_reconnect_attempts: give up after this many such attempts (``None``: never).
        timeout: seconds for the whole WebSocket handshake (TCP connect, proxy tunnel, TLS
            and the HTTP upgrade together; a failed handshake is retried with backoff), and
            for each command's reply.
        ping_grace: no frame for ``ping + ping_grace`` seconds means the connection is dead.
        max_message_bytes: the largest message accepted from the server (4 MiB): a frame
            announcing more, or fragments adding up to more, closes the connection with
            1009 before the payload is read (logged as a WARNING) and the client reconnects.
        breaker: a circuit breaker (``ws:`` name) guarding connection attempts.
        on_state_change: ``on_state_change(old, new)``, run on the dispatch thread.
        clock: monotonic clock (tests).
        random: the jitter's source of randomness (tests).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: Callable[[], str] | None = None,
        min_reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 10.0,
        restart_spread: float = 0.8,
        stable_after: float = 5.0,
        suspend_after: int = 5,
        max_reconnect_attempts: int | None = None,
        timeout: float = 5.0,
        ping_grace: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        breaker: BreakerLike | None = None,
        on_state_change: Callable[[RealtimeState, RealtimeState], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        random: _random.Random | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ConfigurationError(f"realtime url must start with ws:// or wss://: {url!r}")
        for name, seconds in (
            ("min_reconnect_delay", min_reconnect_delay),
            ("max_reconnect_delay", max_reconnect_delay),
            ("restart_spread", restart_spread),
            ("stable_after", stable_after),
            ("ping_grace", ping_grace),
        ):
            check_seconds(name, seconds, error=ConfigurationError)  # NaN would never expire
        check_seconds("timeout", timeout, positive=True, error=ConfigurationError)
        if max_reconnect_delay < min_reconnect_delay:
            raise ConfigurationError("need 0 <= min_reconnect_delay <= max_reconnect_delay")
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int):
            raise ConfigurationError("max_message_bytes must be an int")
        if max_message_bytes < 1:
            raise ConfigurationError("max_message_bytes must be >= 1")
        if suspend_after < 1 or (max_reconnect_attempts is not None and max_reconnect_attempts < 1):
            raise ConfigurationError("suspend_after and max_reconnect_attempts must be >= 1")
        self.url = url
        self._token = token or ""
        self._get_token = get_token
        self._timeout = float(timeout)
        self._max_message_bytes = max_message_bytes
        self._breaker = breaker
        self._on_state_change = on_state_change
        self._clock = clock
        self._rng = random if random is not None else _random.Random()
        #: hands this client's events to hooks (a ChatClient's, else the process-wide ones).
        self.events = Emitter()

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._state = RealtimeState.DISCONNECTED
        self._running = False
        self._thread: threading.Thread | None = None
        self._helpers: list[threading.Thread] = []
        self._dispatcher = Dispatcher()
        self._conn: Connection | None = None
        self._handshake_sock = None
        self._subs: dict[str, Subscription] = {}
        self._listeners: list[Callable[[], object]] = []
        self._error: RealtimeError | None = None
        self._counters = Counters()
        self._policy = ReconnectPolicy(
            min_delay=float(min_reconnect_delay),
            max_delay=float(max_reconnect_delay),
            restart_spread=float(restart_spread),
            stable_after=float(stable_after),
            suspend_after=suspend_after,
            max_attempts=max_reconnect_attempts,
            rng=self._rng,
        )
        self._context = ClientContext(
            lock=self._lock,
            subs=self._subs,
            dispatcher=self._dispatcher,
            counters=self._counters,
            clock=clock,
            rng=self._rng,
            timeout=self._timeout,
            ping_grace=float(ping_grace),
            min_delay=float(min_reconnect_delay),
            max_delay=float(max_reconnect_delay),
            get_token=get_token,
            on_connected=self._on_connected,
            spawn=self._spawn,
            on_recovery_failed=self._recovery_failed,
            stable_after=float(stable_after),
        )
        self._resume_in_child = False
        _fork.register(self, order=_fork.ORDER_CLIENT, after_child=RealtimeClient._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: no thread and no socket of the parent's is ours.

        The state says so (``DISCONNECTED``, or ``CLOSED`` if it was), :meth:`connect`
        works, and a client that was running in the parent reconnects on its own on first
        use (:meth:`subscribe`, :meth:`wait_connected`), keeping its subscriptions.
        """
        self._resume_in_child = self._running and self._state is not RealtimeState.CLOSED
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._running = False
        self._thread = None
        self._helpers = []
        self._conn = None  # the parent's socket: never read nor written here
        self._handshake_sock = None
        self._dispatcher.reset_after_fork()
        self._context = attrs.evolve(self._context, lock=self._lock)
        for sub in self._subs.values():
            sub._subscribed = threading.Event()
            sub.connection_lost()
        if self._state is not RealtimeState.CLOSED:
            self._state = RealtimeState.DISCONNECTED

    def _resume_after_fork(self) -> None:
        if self._resume_in_child:
            self._resume_in_child = False
            self.connect()

    @classmethod
    def from_token_source(
        cls,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        url: str | None = None,
        breaker_for: Callable[[str], BreakerLike | None] | None = None,
        **options: Any,
    ) -> RealtimeClient:
        """Build a client from a token endpoint (``POST /api/realtime/token``).

        ``fetch()`` returns the endpoint's body ``{"token", "url", "expiresAt"}``. It is
        called once now (for the URL; that token serves the first attempt) and again by
        ``get_token`` before every later attempt and refresh.

        Args:
            fetch: returns one token body.
            url: overrides the body's ``url``.
            breaker_for: gives the ``ws:`` breaker for the final URL (unless ``breaker=``
                is among ``options``).
            **options: the other :class:`RealtimeClient` arguments.

        Raises:
            InvalidResponseError: the body has no string ``token`` or ``url``.
        """
        first = _token_body(fetch())
        cached = [first[0]]

        def get_token() -> str:
            try:
                return cached.pop()
            except IndexError:
                return _token_body(fetch())[0]

        final_url = url or first[1]
        if breaker_for is not None and "breaker" not in options:
            options["breaker"] = breaker_for(final_url)
        return cls(final_url, get_token=get_token, **options)

    # ---------------------------------------------------------------- public API ----

    @property
    def state(self) -> RealtimeState:
        """The current state."""
        return self._state

    @property
    def last_close_code(self) -> int | None:
        """Why the last connection ended (see :class:`RealtimeStats`)."""
        return self._counters.last_code

    @property
    def last_close_reason(self) -> str:
        """The reason text matching :attr:`last_close_code`."""
        return self._counters.last_reason

    @property
    def error(self) -> RealtimeError | None:
        """Why the client stopped on its own (a final code, or attempts ran out)."""
        return self._error

    def stats(self) -> RealtimeStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._counters.snapshot()

    def add_reconnect_listener(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` (on the dispatch thread) each time a connection is ready.

        Meant to wake the outbox drainer: connected again usually means the network is back.
        """
        with self._lock:
            self._listeners.append(listener)

    def connect(self) -> None:
        """Start connecting in the background and return at once.

        Also restarts a client that stopped on its own (final code, attempts ran out).

        Raises:
            RealtimeError: the client was closed.
        """
        with self._lock:
            if self._state is RealtimeState.CLOSED:
                raise RealtimeError("the realtime client is closed")
            if self._running:
                return
            previous = self._thread
        if previous is not None and previous is not threading.current_thread():
            previous.join()
        with self._lock:
            if self._running or self._closed():
                return
            self._running = True
            self._closing.clear()
            self._error = None
            self._policy.reset()
            self._dispatcher.start()
            self._set_state(RealtimeState.CONNECTING)
            self._thread = threading.Thread(target=self._run, name="chatsdk-realtime", daemon=True)
            self._thread.start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected; False on timeout or when the client stopped or closed.

        ``timeout``: None or infinity for no limit; NaN or negative raise ``ValueError``.
        """
        timeout = check_seconds("timeout", timeout, none=True)
        self._resume_after_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._state is not RealtimeState.CONNECTED:
                if self._state is RealtimeState.CLOSED or not self._running:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def close(self) -> None:
        """Close the connection and end every thread (within about 1 s; a handshake in
        progress ends at once, its socket closed). The client cannot be reused."""
        with self._lock:
            if self._state is RealtimeState.CLOSED:
                return
            self._closing.set()
            conn = self._conn
            thread = self._thread
            if conn is not None:
                conn.live = False
                close_socket(conn.ws, 1000, "client closed")
            if self._handshake_sock is not None:
                shutdown_socket(self._handshake_sock)  # ends a handshake in progress at once
        started = time.monotonic()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout + 1.0)
        with self._lock:
            for sub in self._subs.values():
                sub.mark_unsubscribed()
            self._subs.clear()
            self._set_state(RealtimeState.CLOSED)
            helpers = list(self._helpers)
        self._dispatcher.stop(max(0.1, 1.0 - (time.monotonic() - started)))
        for helper in helpers:
            helper.join(0.1)

    def __enter__(self) -> RealtimeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def subscribe(
        self,
        channel: str,
        on_publication: PublicationCallback,
        *,
        on_recovery_failed: RecoveryFailedCallback | None = None,
        since: StreamPosition | None = None,
    ) -> Subscription:
        """Subscribe to ``channel``; kept (and recovered) across reconnects.

        Args:
            channel: the realtime channel (``chat:42``).
            on_publication: gets every :class:`Publication` once, in order, on the dispatch
                thread.
            on_recovery_failed: ``on_recovery_failed(channel)`` when missed publications
                could not be recovered (reload from the REST API); the stream goes on.
            since: resume after this position (e.g. a previous run's ``position``).

        Raises:
            ValidationError: already subscribed to ``channel``, or an empty channel.
            RealtimeError: the client is closed.
        """
        if not isinstance(channel, str) or not channel:
            raise ValidationError("channel", "must be a non-empty string")
        self._resume_after_fork()
        with self._lock:
            if self._state is RealtimeState.CLOSED:
                raise RealtimeError("the realtime client is closed")
            if channel in self._subs:
                raise ValidationError("channel", f"already subscribed to {channel}")
            sub = Subscription(
                channel,
                on_publication,
                on_recovery_failed=on_recovery_failed,
                since=since,
                unsubscribe_hook=self._unsubscribe,
            )
            self._subs[channel] = sub
            conn = self._conn
            if conn is not None and conn.usable:
                conn.subscribe(sub)
            else:
                sub.connection_lost()  # waits for the next connect
        if conn is not None:
            conn.flush()
        return sub

    def subscribe_channel(
        self,
        channel_id: str,
        on_event: Callable[[ChatEvent], object],
        *,
        on_recovery_failed: Callable[[str], object] | None = None,
        since: StreamPosition | None = None,
    ) -> Subscription:
        """Subscribe to chat channel ``channel_id`` (realtime ``chat:<id>``) with typed events.

        ``on_event`` receives a :class:`MessageEvent` or :class:`ReactionEvent` per
        publication (data that is not a chat event is logged and skipped).
        """
        from chatsdk._realtime.events import event_handler  # noqa: PLC0415 - models load lazily

        return self.subscribe(
            f"chat:{channel_id}",
            event_handler(channel_id, on_event),
            on_recovery_failed=on_recovery_failed,
            since=since,
        )

    def subscriptions(self) -> list[Subscription]:
        """The active subscriptions."""
        with self._lock:
            return list(self._subs.values())

    # ---------------------------------------------------------------- internals ----

    def _closed(self) -> bool:
        return self._state is RealtimeState.CLOSED

    def _set_state(self, new: RealtimeState) -> None:
        with self._lock:
            old = self._state
            if old is new or old is RealtimeState.CLOSED:
                return
            self._state = new
            self._changed.notify_all()
            log.debug("realtime state %s -> %s", old.value, new.value, extra={"url": self.url})
            if self._on_state_change is not None:
                self._dispatcher.submit(self._on_state_change, old, new)
            if self.events.active:  # hooks run on the dispatch thread, never under the lock
                event = RealtimeStateChanged(url=self.url, old=old, new=new)
                self._dispatcher.submit(self.events.emit, event)

    def _emit(self, event: SDKEvent) -> None:
        """Hand ``event`` to the hooks on the dispatch thread."""
        if self.events.active:
            self._dispatcher.submit(self.events.emit, event)

    def _recovery_failed(self, channel: str) -> None:
        self._emit(RecoveryFailed(channel=channel))

    def _reconnecting(self, attempt: int, delay: float, close_code: int | None) -> None:
        self._emit(
            RealtimeReconnecting(url=self.url, attempt=attempt, delay=delay, close_code=close_code)
        )

    def _on_connected(self, conn: Connection) -> None:
        self._policy.connected()
        self._set_state(RealtimeState.CONNECTED)
        for listener in self._listeners:
            self._dispatcher.submit(listener)

    def _spawn(self, fn: Callable[[], None]) -> None:
        self._helpers = [t for t in self._helpers if t.is_alive()]
        thread = threading.Thread(target=fn, name="chatsdk-realtime-refresh", daemon=True)
        self._helpers.append(thread)
        thread.start()

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if self._subs.get(sub.channel) is sub:
                del self._subs[sub.channel]
            was = sub.state
            sub.mark_unsubscribed()
            conn = self._conn
            if conn is not None and conn.usable and was is not SubscriptionState.UNSUBSCRIBED:
                conn.unsubscribe(sub.channel)
        if conn is not None:
            conn.flush()


def _token_body(body: Mapping[str, Any]) -> tuple[str, str]:
    token = body.get("token") if isinstance(body, Mapping) else None
    url = body.get("url") if isinstance(body, Mapping) else None
    if not isinstance(token, str) or not isinstance(url, str):
        raise InvalidResponseError(
            200, None, "realtime token body needs string token and url", body=body
        )
    return token, url


__all__ = ["BreakerLike", "RealtimeClient", "RealtimeState", "RealtimeStats"]
