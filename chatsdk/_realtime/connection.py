"""One realtime connection's protocol session: commands, replies, pushes, deadlines.

A :class:`Connection` wraps one ``websocket.WebSocket`` from the handshake to its end. The
socket thread of :class:`~chatsdk.RealtimeClient` feeds it every received frame and asks it
for due deadlines; it answers pings, matches replies to commands, routes publications to
their :class:`~chatsdk.Subscription`, queues callbacks on the dispatcher and, when the
connection must end (reply timeout, no ping, refused connect), sets :attr:`Connection.ending`
for the socket thread to act on. Everything runs under the client's lock.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from chatsdk._errors import RealtimeError
from chatsdk._realtime.dispatch import Dispatcher
from chatsdk._realtime.protocol import (
    Item,
    OtherPush,
    Ping,
    ProtocolViolation,
    PublicationPush,
    Reply,
    UnsubscribePush,
    batch_frames,
    decode_frame,
    encode,
    parse_connect_result,
    parse_refresh_result,
    parse_subscribe_result,
)
from chatsdk._realtime.subscription import Step, Subscription, SubscriptionState

log = logging.getLogger(__name__)

#: Client-side reasons for ending a connection (never sent by a server; below 1000 like
#: centrifuge-js's connecting codes).
CODE_NO_PING = 2
CODE_REPLY_TIMEOUT = 3
CODE_TOKEN_ERROR = 4
_MAX_STEP = 30
_KEPT_DELAYS = 1000


def reconnect_delay(
    step: int, min_delay: float, max_delay: float, rng: random.Random, *, min_spread: float = 0.0
) -> float:
    """The delay before the ``step``-th consecutive reconnect (``step`` from 0).

    ``min(max, min + U(0, min(max, min * 2**min(step, 30))))``: the centrifuge clients'
    full-jitter formula with the exponent capped. ``min_spread`` widens the jitter range to
    at least that many seconds (used while a restarted server comes back, so clients that
    tried too early do not all return in the same instant).
    """
    ceiling = max(min_spread, min(max_delay, min_delay * 2 ** min(step, _MAX_STEP)))
    return min(max_delay, min_delay + rng.uniform(0.0, ceiling))


def refresh_delay(ttl: float) -> float:
    """When to refresh a token that expires in ``ttl`` seconds: shortly before it does."""
    return max(0.0, ttl - min(ttl * 0.1, 30.0))


@attrs.frozen
class RealtimeStats:
    """A snapshot of a client's counters.

    Attributes:
        attempts: connection attempts started.
        connects: attempts that reached ``connected``.
        last_close_code: why the last connection ended (a close code, a protocol error
            code, or a client-side code below 1000: 2 no ping, 3 reply timeout, 4 token).
        last_close_reason: the matching reason text.
        last_error: why the last attempt that opened no connection failed (handshake,
            token endpoint), or "".
        reconnect_delays: the delays waited before reconnects (the latest 1000).
        reconnect_times: seconds from the end of a working connection to every subscription
            being subscribed again on a new one (the latest 1000).
        recoveries: subscribe replies that filled a gap (``recovered: true``).
        recovery_failures: subscribe replies that could not (``on_recovery_failed``).
        duplicates_dropped: publications dropped as already handed over.
        gaps: jumps in offsets seen (each one recovered by subscribing again).
        dropped_lines: protocol lines dropped as malformed.
        pings: server pings received.
        pongs: pongs sent.
    """

    attempts: int
    connects: int
    last_close_code: int | None
    last_close_reason: str
    last_error: str
    reconnect_delays: tuple[float, ...]
    reconnect_times: tuple[float, ...]
    recoveries: int
    recovery_failures: int
    duplicates_dropped: int
    gaps: int
    dropped_lines: int
    pings: int
    pongs: int


@attrs.define
class Counters:
    """The client's mutable counters (under the client's lock)."""

    attempts: int = 0
    connects: int = 0
    last_code: int | None = None
    last_reason: str = ""
    last_error: str = ""
    delays: deque[float] = attrs.field(factory=lambda: deque(maxlen=_KEPT_DELAYS))
    reconnect_times: deque[float] = attrs.field(factory=lambda: deque(maxlen=_KEPT_DELAYS))
    down_since: float | None = None
    recoveries: int = 0
    recovery_failures: int = 0
    duplicates: int = 0
    gaps: int = 0
    dropped: int = 0
    pings: int = 0
    pongs: int = 0

    def snapshot(self) -> RealtimeStats:
        """A frozen copy."""
        return RealtimeStats(
            attempts=self.attempts,
            connects=self.connects,
            last_close_code=self.last_code,
            last_close_reason=self.last_reason,
            last_error=self.last_error,
            reconnect_delays=tuple(self.delays),
            reconnect_times=tuple(self.reconnect_times),
            recoveries=self.recoveries,
            recovery_failures=self.recovery_failures,
            duplicates_dropped=self.duplicates,
            gaps=self.gaps,
            dropped_lines=self.dropped,
            pings=self.pings,
            pongs=self.pongs,
        )

    def connection_lost(self, now: float) -> None:
        """A working connection ended: the reconnect clock starts (unless it runs)."""
        if self.down_since is None:
            self.down_since = now

    def maybe_restored(self, now: float, subs: dict[str, Subscription]) -> None:
        """Stop the reconnect clock once every wanted subscription is subscribed."""
        if self.down_since is None:
            return
        if all(sub.state is SubscriptionState.SUBSCRIBED for sub in subs.values() if sub.active):
            self.reconnect_times.append(now - self.down_since)
            self.down_since = None

    def count_drop(self, _reason: str) -> None:
        """One protocol line dropped."""
        self.dropped += 1


@attrs.define
class Outcome:
    """How a connection ended.

    Attributes:
        code: close code, protocol error code or client-side code (``CODE_*``).
        reason: human-readable reason.
        final: reconnecting is forbidden (final close code or final connect error).
        handshake_failed: no WebSocket was established (or no token could be had).
        connected_for: seconds it was ``connected`` (``None``: it never was).
        opened_for: seconds the socket was open.
    """

    code: int | None = None
    reason: str = ""
    final: bool = False
    handshake_failed: bool = False
    connected_for: float | None = None
    opened_for: float = 0.0


class WebSocketLike(Protocol):
    """The part of ``websocket.WebSocket`` a connection sends with."""

    def send(self, payload: str) -> Any: ...  # pragma: no cover - protocol


@attrs.frozen
class Session:
    """What every connection of one client shares with it.

    Attributes:
        lock: the client's lock; every connection method runs under it.
        subs: the client's subscriptions by channel (shared, mutable).
        dispatcher: runs application callbacks.
        counters: the client's counters.
        clock: monotonic clock.
        rng: jitter source.
        timeout: seconds to wait for any reply.
        ping_grace: extra seconds of silence allowed after the server's ping interval.
        min_delay: backoff floor (subscribe retries).
        max_delay: backoff ceiling.
        get_token: fetches a fresh token (``None``: the token cannot be refreshed).
        on_connected: called (lock held) when the connect reply arrived.
        spawn: starts a tracked helper thread running the given function.
    """

    lock: threading.RLock
    subs: dict[str, Subscription]
    dispatcher: Dispatcher
    counters: Counters
    clock: Callable[[], float]
    rng: random.Random
    timeout: float
    ping_grace: float
    min_delay: float
    max_delay: float
    get_token: Callable[[], str] | None
    on_connected: Callable[[Connection], None]
    spawn: Callable[[Callable[[], None]], None]


@attrs.define
class _Pending:
    kind: str
    deadline: float
    sub: Subscription | None = None


class Connection:
    """The protocol session of one WebSocket (guarded by the session's lock).

    Attributes:
        ws: the socket.
        opened_at: when the handshake completed (session clock).
        connected_at: when the connect reply arrived (``None`` before).
        live: False once the client moved on; an old connection's events are ignored.
        ending: set when the connection must be closed; the socket thread closes it.
    """

    def __init__(self, session: Session, ws: WebSocketLike) -> None:
        self.session = session
        self.ws = ws
        self.opened_at = session.clock()
        self.last_recv = self.opened_at
        self.connected_at: float | None = None
        self.live = True
        self.ending: Outcome | None = None
        self.ping = 0.0
        self.pong = False
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._latest_subscribe: dict[str, int] = {}
        self._refresh_at: float | None = None
        self._refreshing = False
        self._refresh_failures = 0
        self._timers: list[tuple[float, Callable[[], None]]] = []

    @property
    def usable(self) -> bool:
        """Connected, current and not ending: commands may be sent."""
        return self.live and self.connected_at is not None and self.ending is None

    # -- sending ---------------------------------------------------------------------

    def send_connect(self, token: str, name: str, version: str) -> None:
        """Send the connect command (the first frame of the connection)."""
        params: dict[str, Any] = {"name": name, "version": version}
        if token:
            params["token"] = token
        self._send_raw(encode(self._command("connect", params)))

    def subscribe(self, sub: Subscription) -> None:
        """Send a subscribe for ``sub`` (recovering when it has a position)."""
        self._send(self._command("subscribe", sub.subscribe_params(), sub))

    def unsubscribe(self, channel: str) -> None:
        """Send an unsubscribe for ``channel``."""
        self._latest_subscribe.pop(channel, None)
        self._send(self._command("unsubscribe", {"channel": channel}))

    def _command(
        self, kind: str, params: dict[str, Any], sub: Subscription | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        deadline = self.session.clock() + self.session.timeout
        self._pending[self._next_id] = _Pending(kind, deadline, sub)
        if kind == "subscribe" and sub is not None:
            self._latest_subscribe[sub.channel] = self._next_id
        return {"id": self._next_id, kind: params}

    def _send(self, *commands: dict[str, Any]) -> None:
        for frame in batch_frames(commands):
            self._send_raw(frame)

    def _send_raw(self, frame: str) -> None:
        try:
            self.ws.send(frame)
        except Exception as exc:  # the reader sees the broken socket and reconnects
            log.debug("realtime send failed: %r", exc)

    # -- deadlines -------------------------------------------------------------------

    def check_deadlines(self) -> float | None:
        """Act on due deadlines; seconds until the next one (``None``: none scheduled)."""
        session = self.session
        now = session.clock()
        upcoming: list[float] = []
        for pending in self._pending.values():
            if pending.deadline <= now:
                self.ending = Outcome(
                    code=CODE_REPLY_TIMEOUT,
                    reason=(f"no {pending.kind} reply within {session.timeout:g}s"),
                )
                return 0.0
            upcoming.append(pending.deadline)
        if self.connected_at is not None and self.ping > 0:
            dead_at = self.last_recv + self.ping + session.ping_grace
            if dead_at <= now:
                self.ending = Outcome(
                    code=CODE_NO_PING,
                    reason=(f"nothing received for {self.ping + session.ping_grace:g}s"),
                )
                return 0.0
            upcoming.append(dead_at)
        if self._refresh_at is not None and not self._refreshing:
            if self._refresh_at <= now:
                self._start_refresh()
            else:
                upcoming.append(self._refresh_at)
        if self._timers:
            due = [fn for at, fn in self._timers if at <= now]
            self._timers = [(at, fn) for at, fn in self._timers if at > now]
            for fn in due:
                fn()
            upcoming.extend(at for at, _ in self._timers)
        return min(upcoming) - now if upcoming else None

    # -- receiving -------------------------------------------------------------------

    def handle_frame(self, payload: str | bytes) -> None:
        """Handle one received text frame; malformed lines are logged and dropped."""
        session = self.session
        with session.lock:
            if not self.live or self.ending is not None:
                return  # an older connection: its events no longer count
            self.last_recv = session.clock()
            for item in decode_frame(payload, session.counters.count_drop):
                try:
                    self._handle_item(item)
                except ProtocolViolation as exc:
                    session.counters.count_drop(str(exc))
                    log.warning("dropped a malformed realtime reply: %s", exc)
                if self._ended():
                    return

    def _ended(self) -> bool:
        return self.ending is not None

    def _handle_item(self, item: Item) -> None:
        counters = self.session.counters
        if isinstance(item, Ping):
            counters.pings += 1
            if self.pong:
                counters.pongs += 1
                self._send_raw("{}")
        elif isinstance(item, Reply):
            self._handle_reply(item)
        elif isinstance(item, PublicationPush):
            sub = self.session.subs.get(item.channel)
            if sub is None or not sub.active:
                log.debug("publication for unknown channel %s dropped", item.channel)
                return
            self._apply_step(sub, sub.on_publication(item.pub))
        elif isinstance(item, UnsubscribePush):
            self._handle_unsubscribe_push(item)
        elif isinstance(item, OtherPush):
            log.debug("ignored %s push on %s", item.kind, item.channel)

    def _handle_reply(self, reply: Reply) -> None:
        pending = self._pending.get(reply.id)
        if pending is None:
            raise ProtocolViolation(f"reply to unknown command id {reply.id}")
        if pending.kind == "connect":
            self._on_connect_reply(reply)
        elif pending.kind == "subscribe":
            self._on_subscribe_reply(reply, pending)
        elif pending.kind == "refresh":
            self._on_refresh_reply(reply)
        # reached only when the reply was valid: a malformed one stays pending (timeout)
        self._pending.pop(reply.id, None)

    def _on_connect_reply(self, reply: Reply) -> None:
        if reply.error is not None:
            err = reply.error
            self.ending = Outcome(
                code=err.code, reason=f"connect refused: {err.message}", final=not err.retryable
            )
            return
        result = parse_connect_result(reply.result("connect"))
        now = self.session.clock()
        self.connected_at = now
        self.ping = result.ping
        self.pong = result.pong
        if result.expires and result.ttl > 0:
            self._refresh_at = now + refresh_delay(result.ttl)
        self.session.counters.connects += 1
        self.session.on_connected(self)
        self._send(
            *(
                self._command("subscribe", sub.subscribe_params(), sub)
                for sub in self.session.subs.values()
                if sub.active
            )
        )
        self.session.counters.maybe_restored(now, self.session.subs)

    def _on_subscribe_reply(self, reply: Reply, pending: _Pending) -> None:
        sub = pending.sub
        subs = self.session.subs
        if (
            sub is None
            or subs.get(sub.channel) is not sub
            or not sub.active
            or self._latest_subscribe.get(sub.channel) != reply.id
        ):
            return  # superseded by a later subscribe or an unsubscribe
        if reply.error is not None:
            err = reply.error
            if err.code == 105:  # already subscribed: start over to learn the position
                self._resubscribe(sub, unsubscribe_first=True)
            elif sub.on_subscribe_error(err):
                delay = reconnect_delay(
                    0, self.session.min_delay, self.session.max_delay, self.session.rng
                )
                self._timers.append(
                    (
                        self.session.clock() + delay,
                        lambda: self._resubscribe(sub, unsubscribe_first=False),
                    )
                )
            else:
                log.warning(
                    "subscribe to %s failed for good: %s %s", sub.channel, err.code, err.message
                )
                del subs[sub.channel]
            return
        result = parse_subscribe_result(reply.result("subscribe"))
        self._apply_step(sub, sub.on_subscribe_result(result))
        self.session.counters.maybe_restored(self.session.clock(), subs)

    def _on_refresh_reply(self, reply: Reply) -> None:
        self._refreshing = False
        if reply.error is not None:
            if not reply.error.retryable:
                self.ending = Outcome(
                    code=reply.error.code, reason=f"refresh refused: {reply.error.message}"
                )
                return
            self._schedule_refresh_retry()
            return
        result = parse_refresh_result(reply.result("refresh"))
        self._refresh_failures = 0
        self._refresh_at = (
            self.session.clock() + refresh_delay(result.ttl)
            if result.expires and result.ttl > 0
            else None
        )

    def _handle_unsubscribe_push(self, push: UnsubscribePush) -> None:
        subs = self.session.subs
        sub = subs.get(push.channel)
        if sub is None:
            return
        if not push.resubscribe:
            log.warning("server unsubscribed %s: %s %s", push.channel, push.code, push.reason)
            del subs[push.channel]
            sub.mark_unsubscribed(
                RealtimeError(f"server unsubscribed {push.channel}: {push.reason}", code=push.code)
            )
        elif sub.state is SubscriptionState.SUBSCRIBED:
            self._resubscribe(sub, unsubscribe_first=False)

    def _apply_step(self, sub: Subscription, step: Step) -> None:
        dispatcher = self.session.dispatcher
        counters = self.session.counters
        if step.rebase is not None:
            dispatcher.submit(sub.rebase, step.rebase, step.recovery_failed)
        for pub in step.deliver:
            dispatcher.submit(sub.hand_over, pub)
        counters.duplicates += step.duplicates
        counters.recoveries += step.recovered
        counters.recovery_failures += step.recovery_failed
        if step.resubscribe:
            counters.gaps += 1
            self._resubscribe(sub, unsubscribe_first=True)

    def _resubscribe(self, sub: Subscription, *, unsubscribe_first: bool) -> None:
        if not self.usable or not sub.active:
            return
        commands: list[dict[str, Any]] = []
        if unsubscribe_first:
            commands.append(self._command("unsubscribe", {"channel": sub.channel}))
        commands.append(self._command("subscribe", sub.subscribe_params(), sub))
        self._send(*commands)

    # -- token refresh ---------------------------------------------------------------

    def _start_refresh(self) -> None:
        get_token = self.session.get_token
        if get_token is None:
            log.info("the realtime token expires soon and there is no get_token to refresh it")
            self._refresh_at = None
            return
        self._refreshing = True

        def refresh() -> None:
            try:
                token = get_token()
            except Exception as exc:
                log.warning("realtime token refresh failed: %s", exc)
                with self.session.lock:
                    self._refreshing = False
                    self._schedule_refresh_retry()
                return
            with self.session.lock:
                if self.usable:
                    self._send_raw(encode(self._command("refresh", {"token": token})))

        self.session.spawn(refresh)

    def _schedule_refresh_retry(self) -> None:
        self._refresh_failures += 1
        self._refresh_at = self.session.clock() + reconnect_delay(
            self._refresh_failures, 1.0, 30.0, self.session.rng
        )
