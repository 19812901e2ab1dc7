"""The realtime half of the reference server: the Centrifugo JSON protocol subset of REALTIME.md.

One :class:`RealtimeEndpoint` per server run serves ``/connection/websocket``. Each
connection has a reader (the aiohttp handler), a writer task that batches queued frames
into newline-separated WebSocket frames (so replies and pushes keep their order), a
pinger (``{}`` every ``ping_interval`` seconds; a ping unanswered for half an interval
at the next tick closes 3012) and an expiry watch (``ttl`` without refresh closes 3005).
Everything runs on the server's event loop; only the counters are read from other threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from chatsdk.testing._faults import RealtimeFaults
from chatsdk.testing._hub import Publication, Streams
from chatsdk.testing._rest import reset_transport
from chatsdk.testing._store import Counters, Store

__all__ = ["MAX_FRAME_BYTES", "RealtimeEndpoint"]

log = logging.getLogger(__name__)

#: Largest client frame accepted; larger ones close the connection with 1009.
MAX_FRAME_BYTES = 64 * 1024
#: Default seconds a connection that never sent ``connect`` is kept (then closed 3502 stale).
CONNECT_TIMEOUT = 10.0
#: Seconds past a token's expiry before an unrefreshed connection is closed 3005.
EXPIRY_GRACE = 1.0
_BATCH = 64

WS_STATS = (
    "connections",
    "opens_total",
    "connects_total",
    "pings_sent",
    "pongs_received",
    "unexpected_pongs",
    "subscribes_total",
    "recovered_total",
    "unrecovered_total",
    "publications_sent",
    "pushes_duplicated",
    "pushes_skipped",
)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class _Close:
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Connection:
    """One WebSocket connection's protocol state."""

    def __init__(self, endpoint: RealtimeEndpoint, ws: web.WebSocketResponse) -> None:
        self.endpoint = endpoint
        self.ws = ws
        self.client_id = str(uuid.uuid4())
        self.user = ""
        self.connected = False
        self.closing = False
        self.expires_at = 0.0
        self.channels: set[str] = set()
        self.pings: deque[float] = deque()
        self.queue: asyncio.Queue[str | _Close] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.writer_task: asyncio.Task[None] | None = None
        self.aborted = False
        self.transport: asyncio.BaseTransport | None = None

    # -- output ------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        if self.closing or self.endpoint.faults.silent:
            return
        self.queue.put_nowait(json.dumps(frame, separators=(",", ":")))

    def reply(self, command_id: int, method: str, result: dict[str, Any]) -> None:
        self.send({"id": command_id, method: result})

    def error(self, command_id: int, code: int, message: str, *, temporary: bool = False) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if temporary:
            error["temporary"] = True
        self.send({"id": command_id, "error": error})

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.endpoint.forget(self)
        log.debug("realtime %s: closing %d %s", self.client_id, code, reason)
        self.endpoint.stats.inc(f"closes.{code}")
        self.queue.put_nowait(_Close(code, reason))

    async def writer(self) -> None:
        texts: list[str] = []
        item = await self.queue.get()
        try:
            while True:
                if isinstance(item, _Close):
                    if texts:
                        await self.ws.send_str("\n".join(texts))
                    await self.ws.close(code=item.code, message=item.reason.encode())
                    return
                texts.append(item)
                if self.queue.empty() or len(texts) >= _BATCH:
                    await self.ws.send_str("\n".join(texts))
                    texts = []
                    item = await self.queue.get()
                else:
                    item = self.queue.get_nowait()
        except (ConnectionError, RuntimeError) as exc:
            log.debug("realtime %s: write failed: %r", self.client_id, exc)

    def push_publication(self, channel: str, publication: Publication) -> None:
        copies = self.endpoint.faults.push_copies()
        if copies == 0:
            self.endpoint.stats.inc("pushes_skipped")
            return
        if copies == 2:
            self.endpoint.stats.inc("pushes_duplicated")
        for _ in range(copies):
            self.endpoint.stats.inc("publications_sent")
            self.send({"push": {"channel": channel, "pub": publication.wire()}})

    def ping(self) -> None:
        if self.closing or not self.connected or self.endpoint.faults.silent:
            return
        self.pings.append(asyncio.get_running_loop().time())
        self.endpoint.stats.inc("pings_sent")
        self.send({})

    # -- timers ------------------------------------------------------------------------

    async def pinger(self) -> None:
        endpoint = self.endpoint
        loop = asyncio.get_running_loop()
        while not self.closing:
            interval = endpoint.ping_interval()
            changed = endpoint.ping_changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=interval)
                continue  # the interval changed: start a new cycle with it
            except asyncio.TimeoutError:
                pass
            if endpoint.faults.silent:
                self.pings.clear()
                continue
            if self.pings and self.pings[0] <= loop.time() - interval / 2:
                self.close(3012, "no pong")
                return
            self.ping()

    async def expiry_watch(self) -> None:
        store = self.endpoint.store
        while not self.closing:
            remaining = self.expires_at + EXPIRY_GRACE - store.now()
            if remaining <= 0:
                self.close(3005, "connection expired")
                return
            await asyncio.sleep(min(remaining, 0.5))

    async def stale_watch(self) -> None:
        await asyncio.sleep(self.endpoint.connect_timeout)
        if not self.connected:
            self.close(3502, "stale")

    # -- input -------------------------------------------------------------------------

    def handle_frame(self, text: str) -> None:
        for line in text.split("\n"):
            if self.closing:
                return
            if not line.strip():
                continue
            self.handle_line(line)

    def handle_line(self, line: str) -> None:
        if self.endpoint.faults.silent:
            return
        try:
            command = json.loads(line)
        except ValueError:
            self.close(3501, "bad request")
            return
        if not isinstance(command, dict):
            self.close(3501, "bad request")
            return
        if not command:
            self.handle_pong()
            return
        command_id = command.get("id")
        methods = [k for k in command if k != "id"]
        if (
            not isinstance(command_id, int)
            or isinstance(command_id, bool)
            or command_id <= 0
            or len(methods) != 1
            or not isinstance(command[methods[0]], dict)
        ):
            self.close(3501, "bad request")
            return
        method = methods[0]
        params: dict[str, Any] = command[method]
        if method == "connect":
            self.handle_connect(command_id, params)
        elif not self.connected:
            self.close(3501, "bad request")
        elif method == "subscribe":
            self.handle_subscribe(command_id, params)
        elif method == "unsubscribe":
            self.handle_unsubscribe(command_id, params)
        elif method == "refresh":
            self.handle_refresh(command_id, params)
        elif method == "history":
            self.handle_history(command_id, params)
        elif method == "publish":
            self.error(command_id, 103, "permission denied")
        else:
            self.error(command_id, 104, "method not found")

    def handle_pong(self) -> None:
        stats = self.endpoint.stats
        if self.connected and self.pings:
            self.pings.popleft()
            stats.inc("pongs_received")
            return
        stats.inc("unexpected_pongs")
        self.close(3501, "unexpected pong")

    def _check_token(self, command_id: int, token: object) -> bool:
        info = self.endpoint.store.token_info(token) if isinstance(token, str) else None
        if info is None or (self.user and info[0] != self.user):
            self.close(3500, "invalid token")
            return False
        user, expires_at = info
        if expires_at <= self.endpoint.store.now():
            self.error(command_id, 109, "token expired")
            return False
        self.user = user
        self.expires_at = expires_at
        return True

    def _ttl(self) -> int:
        return max(1, int(self.expires_at - self.endpoint.store.now()))

    def handle_connect(self, command_id: int, params: dict[str, Any]) -> None:
        if self.connected:
            self.close(3501, "bad request")
            return
        if not self._check_token(command_id, params.get("token")):
            return
        self.connected = True
        self.endpoint.stats.inc("connects_total")
        self.reply(
            command_id,
            "connect",
            {
                "client": self.client_id,
                "version": self.endpoint.version,
                "ping": _number(self.endpoint.ping_interval()),
                "pong": True,
                "expires": True,
                "ttl": self._ttl(),
            },
        )
        self.tasks.append(asyncio.create_task(self.pinger()))
        self.tasks.append(asyncio.create_task(self.expiry_watch()))

    def handle_refresh(self, command_id: int, params: dict[str, Any]) -> None:
        if self._check_token(command_id, params.get("token")):
            self.reply(command_id, "refresh", {"expires": True, "ttl": self._ttl()})

    def handle_subscribe(self, command_id: int, params: dict[str, Any]) -> None:
        channel = params.get("channel")
        if not isinstance(channel, str) or not channel:
            self.close(3501, "bad request")
            return
        if channel in self.channels:
            self.error(command_id, 105, "already subscribed")
            return
        endpoint = self.endpoint
        endpoint.stats.inc("subscribes_total")
        result: dict[str, Any] = {"recoverable": True}
        if params.get("recover"):
            epoch = params.get("epoch", "")
            offset = params.get("offset", 0)
            if not isinstance(epoch, str) or not isinstance(offset, int):
                self.close(3501, "bad request")
                return
            complete, missed, current_epoch, current_offset = endpoint.streams.since(
                channel, epoch, offset
            )
            result["was_recovering"] = True
            result["epoch"] = current_epoch
            if complete:
                endpoint.stats.inc("recovered_total")
                result["offset"] = offset
                result["recovered"] = True
                result["publications"] = [p.wire() for p in missed]
            else:
                endpoint.stats.inc("unrecovered_total")
                result["offset"] = current_offset
                result["recovered"] = False
        else:
            result["epoch"], result["offset"] = endpoint.streams.position(channel)
        # Registered and answered in one loop step: no publication falls in between.
        self.channels.add(channel)
        endpoint.subscribe(self, channel)
        self.reply(command_id, "subscribe", result)

    def handle_unsubscribe(self, command_id: int, params: dict[str, Any]) -> None:
        channel = params.get("channel")
        if not isinstance(channel, str):
            self.close(3501, "bad request")
            return
        self.channels.discard(channel)
        self.endpoint.unsubscribe(self, channel)
        self.reply(command_id, "unsubscribe", {})

    def handle_history(self, command_id: int, params: dict[str, Any]) -> None:
        channel = params.get("channel")
        limit = params.get("limit", 0)
        since = params.get("since")
        if not isinstance(channel, str) or not channel or not isinstance(limit, int):
            self.close(3501, "bad request")
            return
        streams = self.endpoint.streams
        if isinstance(since, dict):
            complete, items, epoch, offset = streams.since(
                channel, str(since.get("epoch", "")), int(since.get("offset", 0))
            )
            if not complete:
                self.error(command_id, 112, "unrecoverable position")
                return
            if limit >= 0:
                items = items[:limit]
        else:
            items, epoch, offset = streams.latest(channel, limit)
        self.reply(
            command_id,
            "history",
            {"publications": [p.wire() for p in items], "epoch": epoch, "offset": offset},
        )


class RealtimeEndpoint:
    """Serves ``/connection/websocket`` for one server run.

    Args:
        store: the data (realtime tokens).
        streams: channel streams (kept across restarts only with ``keep_state``).
        stats: realtime counters.
        faults: realtime fault knobs.
        ping_interval: returns the current ping interval in seconds.
        version: the server version sent in connect replies.
        connect_timeout: seconds to wait for the ``connect`` command (then close 3502).
    """

    def __init__(
        self,
        *,
        store: Store,
        streams: Streams,
        stats: Counters,
        faults: RealtimeFaults,
        ping_interval: Callable[[], float],
        version: str,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.store = store
        self.streams = streams
        self.stats = stats
        self.faults = faults
        self.ping_interval = ping_interval
        self.version = version
        self.connect_timeout = connect_timeout
        self.connections: set[_Connection] = set()
        self._subscribers: dict[str, set[_Connection]] = {}
        self.ping_changed = asyncio.Event()

    def install(self, app: web.Application) -> None:
        """Add the WebSocket route to ``app``."""
        app.router.add_get("/connection/websocket", self.handle)

    def open_connections(self) -> int:
        """How many connections are open."""
        return len(self.connections)

    def subscribe(self, conn: _Connection, channel: str) -> None:
        self._subscribers.setdefault(channel, set()).add(conn)

    def unsubscribe(self, conn: _Connection, channel: str) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(conn)

    def forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        for channel in conn.channels:
            self.unsubscribe(conn, channel)

    def publish(self, channel: str, data: Any) -> int:
        """Append to the channel's history and push to its subscribers; returns the offset."""
        publication = self.streams.append(channel, data)
        for conn in list(self._subscribers.get(channel, ())):
            conn.push_publication(channel, publication)
        return publication.offset

    def ping_interval_changed(self) -> None:
        """Wake every pinger so a new interval applies now."""
        event, self.ping_changed = self.ping_changed, asyncio.Event()
        event.set()

    def send_ping(self) -> None:
        """One extra ping to every connected connection."""
        for conn in list(self.connections):
            conn.ping()

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection with ``code``."""
        for conn in list(self.connections):
            conn.close(code, reason)

    def abort_all(self) -> None:
        """Reset every connection (a crash): nothing queued is sent, its tasks are cancelled."""
        for conn in list(self.connections):
            conn.closing = True
            conn.aborted = True
            self.forget(conn)
            reset_transport(conn.transport)
            for task in conn.tasks:
                task.cancel()
            if conn.writer_task is not None:
                conn.writer_task.cancel()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The WebSocket handler."""
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, timeout=2.0)
        await ws.prepare(request)
        conn = _Connection(self, ws)
        conn.transport = request.transport
        self.connections.add(conn)
        self.stats.inc("opens_total")
        writer = conn.writer_task = asyncio.create_task(conn.writer())
        conn.tasks.append(asyncio.create_task(conn.stale_watch()))
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    conn.handle_frame(message.data)
                elif message.type is WSMsgType.BINARY:
                    try:
                        conn.handle_frame(message.data.decode())
                    except UnicodeDecodeError:
                        conn.close(3501, "bad request")
                if conn.closing:
                    break
            if conn.closing and not conn.aborted and not writer.done():
                await asyncio.wait_for(asyncio.shield(writer), timeout=3.0)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            log.debug("realtime %s: %r", conn.client_id, exc)
        finally:
            conn.closing = True
            self.forget(conn)
            for task in (*conn.tasks, writer):
                task.cancel()
        return ws
