"""One realtime connection's protocol session: commands, replies, pushes, deadlines.

A :class:`Connection` wraps one ``websocket.WebSocket`` from the handshake to its end. The
socket thread of :class:`~chatsdk.RealtimeClient` feeds it every received frame and asks it
for due deadlines; it answers pings, matches replies to commands, routes publications to
their :class:`~chatsdk.Subscription`, queues callbacks on the dispatcher and, when the
connection must end (reply timeout, no ping, refused connect), sets :attr:`Connection.ending`
for the socket thread to act on. Everything runs under the client's lock.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
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
from chatsdk._realtime.reconnect import Outcome, reconnect_delay
from chatsdk._realtime.stats import Counters
from chatsdk._realtime.subscription import Step, Subscription, SubscriptionState

log = logging.getLogger(__name__)

#: Client-side reasons for ending a connection (never sent by a server; below 1000 like
#: centrifuge-js's connecting codes).
CODE_NO_PING = 2
CODE_REPLY_TIMEOUT = 3
CODE_TOKEN_ERROR = 4


def refresh_delay(ttl: float) -> float:
    """When to refresh a token that expires in ``ttl`` seconds: shortly before it does."""
    return max(0.0, ttl - min(ttl * 0.1, 30.0))


class WebSocketLike(Protocol):
    """The part of ``websocket.WebSocket`` a connection sends with."""

    def send(self, payload: str) -> Any: ...  # pragma: no cover - protocol


@attrs.frozen
class ClientContext:
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
        min_delay: backoff floor (subscribe retries, resubscribes after gaps).
        max_delay: backoff ceiling.
        stable_after: a subscription without a gap this long starts its backoff over.
        get_token: fetches a fresh token (``None``: the token cannot be refreshed).
        on_connected: called (lock held) when the connect reply arrived.
        spawn: starts a tracked helper thread running the given function.
        on_recovery_failed: told (lock held: it must only queue work) the channel whose
            missed publications could not be recovered.
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
    on_recovery_failed: Callable[[str], None] = lambda _channel: None
    stable_after: float = 5.0


@attrs.define
class _Pending:
    kind: str
    deadline: float
    sub: Subscription | None = None


class Connection:
    """The protocol session of one WebSocket (guarded by the client's lock).

    Attributes:
        ws: the socket.
        opened_at: when the handshake completed (the client's clock).
        connected_at: when the connect reply arrived (``None`` before).
        live: False once the client moved on; an old connection's events are ignored.
        ending: set when the connection must be closed; the socket thread closes it.

    Frames are never written to the socket under the client's lock (a slow or stalled peer
    would block every thread that needs the lock): commands queue them, and whoever released
    the lock calls :meth:`flush` to send what is queued, in order.
    """

    def __init__(self, context: ClientContext, ws: WebSocketLike) -> None:
        self.context = context
        self.ws = ws
        self.opened_at = context.clock()
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
        self._outgoing: collections.deque[str] = collections.deque()
        self._send_lock = threading.Lock()

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
        deadline = self.context.clock() + self.context.timeout
        self._pending[self._next_id] = _Pending(kind, deadline, sub)
        if kind == "subscribe" and sub is not None:
            self._latest_subscribe[sub.channel] = self._next_id
        return {"id": self._next_id, kind: params}

    def _send(self, *commands: dict[str, Any]) -> None:
        for frame in batch_frames(commands):
            self._send_raw(frame)

    def _send_raw(self, frame: str) -> None:
        self._outgoing.append(frame)

    def flush(self) -> None:
        """Send the queued frames, in order; call it without holding the client's lock."""
        with self._send_lock:
            while self._outgoing:
                frame = self._outgoing.popleft()
                try:
                    self.ws.send(frame)
                except Exception as exc:  # the reader sees the broken socket and reconnects
                    log.debug("realtime send failed: %r", exc)

    # -- deadlines -------------------------------------------------------------------

    def check_deadlines(self) -> float | None:
        """Act on due deadlines; seconds until the next one (``None``: none scheduled)."""
        context = self.context
        now = context.clock()
        upcoming: list[float] = []
        for pending in self._pending.values():
            if pending.deadline <= now:
                self.ending = Outcome(
                    code=CODE_REPLY_TIMEOUT,
                    reason=(f"no {pending.kind} reply within {context.timeout:g}s"),
                )
                return 0.0
            upcoming.append(pending.deadline)
        if self.connected_at is not None and self.ping > 0:
            dead_at = self.last_recv + self.ping + context.ping_grace
            if dead_at <= now:
                self.ending = Outcome(
                    code=CODE_NO_PING,
                    reason=(f"nothing received for {self.ping + context.ping_grace:g}s"),
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
        context = self.context
        with context.lock:
            if not self.live or self.ending is not None:
                return  # an older connection: its events no longer count
            self.last_recv = context.clock()
            for item in decode_frame(payload, context.counters.count_drop):
                try:
                    self._handle_item(item)
                except ProtocolViolation as exc:
                    context.counters.count_drop(str(exc))
                    log.warning("dropped a malformed realtime reply: %s", exc)
                if self._ended():
                    return

    def _ended(self) -> bool:
        return self.ending is not None

    def _handle_item(self, item: Item) -> None:
        counters = self.context.counters
        if isinstance(item, Ping):
            counters.pings += 1
            if self.pong:
                counters.pongs += 1
                self._send_raw("{}")
        elif isinstance(item, Reply):
            self._handle_reply(item)
        elif isinstance(item, PublicationPush):
            sub = self.context.subs.get(item.channel)
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
        now = self.context.clock()
        self.connected_at = now
        self.ping = result.ping
        self.pong = result.pong
        if result.expires and result.ttl > 0:
            self._refresh_at = now + refresh_delay(result.ttl)
        self.context.counters.connects += 1
        self.context.on_connected(self)
        self._send(
            *(
                self._command("subscribe", sub.subscribe_params(), sub)
                for sub in self.context.subs.values()
                if sub.active
            )
        )
        self.context.counters.maybe_restored(now, self.context.subs)

    def _on_subscribe_reply(self, reply: Reply, pending: _Pending) -> None:
        sub = pending.sub
        subs = self.context.subs
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
                self._resubscribe_backing_off(sub, unsubscribe_first=True)
            elif sub.on_subscribe_error(err):
                self._resubscribe_backing_off(sub, unsubscribe_first=False, first_at_once=False)
            else:
                log.warning(
                    "subscribe to %s failed for good: %s %s", sub.channel, err.code, err.message
                )
                del subs[sub.channel]
            return
        result = parse_subscribe_result(reply.result("subscribe"))
        step = sub.on_subscribe_result(result)
        if not step.resubscribe:
            sub.subscribed_cleanly(self.context.clock())
        self._apply_step(sub, step)
        self.context.counters.maybe_restored(self.context.clock(), subs)

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
            self.context.clock() + refresh_delay(result.ttl)
            if result.expires and result.ttl > 0
            else None
        )

    def _handle_unsubscribe_push(self, push: UnsubscribePush) -> None:
        subs = self.context.subs
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
            self._resubscribe_backing_off(sub, unsubscribe_first=False)

    def _apply_step(self, sub: Subscription, step: Step) -> None:
        dispatcher = self.context.dispatcher
        counters = self.context.counters
        if step.rebase is not None:
            dispatcher.submit(sub.rebase, step.rebase, step.recovery_failed)
        for pub in step.deliver:
            dispatcher.submit(sub.hand_over, pub)
        counters.duplicates += step.duplicates
        counters.recoveries += step.recovered
        counters.recovery_failures += step.recovery_failed
        if step.recovery_failed:
            self.context.on_recovery_failed(sub.channel)
        if step.resubscribe:
            counters.gaps += 1
            self._resubscribe_backing_off(sub, unsubscribe_first=True)

    def _resubscribe_backing_off(
        self, sub: Subscription, *, unsubscribe_first: bool, first_at_once: bool = True
    ) -> None:
        """Resubscribe because the server said so (a gap, an error...), with backoff.

        The waits are the reconnect backoff's (jittered, exponential, capped); with
        ``first_at_once`` the first resubscribe for a while goes at once (a real gap is
        recovered without delay). One resubscribe is scheduled at a time.
        """
        if sub.retry_scheduled or not self.usable or not sub.active:
            return
        context = self.context
        now = context.clock()
        step = sub.next_retry_step(now, context.stable_after)
        if first_at_once:
            if step == 0:
                self._resubscribe(sub, unsubscribe_first=unsubscribe_first)
                return
            step -= 1
        delay = reconnect_delay(step, context.min_delay, context.max_delay, context.rng)
        log.debug("resubscribing to %s in %.2fs (retry %d)", sub.channel, delay, step + 1)
        sub.retry_scheduled = True

        def resubscribe() -> None:
            sub.retry_scheduled = False
            self._resubscribe(sub, unsubscribe_first=unsubscribe_first)

        self._timers.append((now + delay, resubscribe))

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
        get_token = self.context.get_token
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
                with self.context.lock:
                    self._refreshing = False
                    self._schedule_refresh_retry()
                return
            with self.context.lock:
                if self.usable:
                    self._send_raw(encode(self._command("refresh", {"token": token})))
            self.flush()

        self.context.spawn(refresh)

    def _schedule_refresh_retry(self) -> None:
        self._refresh_failures += 1
        self._refresh_at = self.context.clock() + reconnect_delay(
            self._refresh_failures, 1.0, 30.0, self.context.rng
        )
