"""A tiny scriptable Centrifugo-ish WebSocket server (aiohttp, loopback, own thread).

Enough protocol to drive :class:`chatsdk.RealtimeClient` through situations the reference
server does not produce on demand: refused connects, arbitrary frames, missing replies.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web


class FakeConn:
    def __init__(self, server: FakeServer, ws: web.WebSocketResponse) -> None:
        self.server = server
        self.ws = ws
        self.lines: list[Any] = []
        self.frames: list[str] = []
        self.subscribed: set[str] = set()


class FakeServer:
    """Knobs (set from the test thread before or during a run):

    - ``connect_result`` (dict) or ``connect_error`` (dict) or ``connect_handler``
      (``fn(conn, params) -> reply dict | None``; ``None`` sends nothing);
    - ``subscribe_handler`` (``fn(conn, params) -> result dict | {"error": ...} | None``);
    - ``silent``: ignore every frame.
    """

    def __init__(self) -> None:
        self.connect_result: dict[str, Any] = {
            "client": "c1",
            "version": "fake",
            "ping": 0,
            "pong": True,
        }
        self.connect_error: dict[str, Any] | None = None
        self.connect_handler: Callable[[FakeConn, dict[str, Any]], Any] | None = None
        self.subscribe_handler: Callable[[FakeConn, dict[str, Any]], Any] | None = None
        self.silent = False
        self.conns: list[FakeConn] = []
        self.pongs = 0
        self.refreshes: list[str] = []
        self.event = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> FakeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/connection/websocket", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        for conn in list(self.conns):
            if not conn.ws.closed:
                await conn.ws.close(code=1001)
        assert self._runner is not None
        await self._runner.cleanup()

    # -- test-side actions ---------------------------------------------------------------

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                return await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    @property
    def last(self) -> FakeConn:
        return self.conns[-1]

    def send(self, text: str, conn: FakeConn | None = None) -> None:
        target = conn or self.last
        self.call(lambda: target.ws.send_str(text))

    def close(self, code: int, reason: str = "", conn: FakeConn | None = None) -> None:
        target = conn or self.last
        self.call(lambda: target.ws.close(code=code, message=reason.encode()))

    def abort(self, conn: FakeConn | None = None) -> None:
        target = conn or self.last

        def kill() -> None:
            transport = target.ws._req.transport if target.ws._req else None  # type: ignore[attr-defined]
            if transport is not None:
                transport.abort()

        self.call(kill)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.event:
            return self.event.wait_for(predicate, timeout)

    def commands(self, kind: str, conn: FakeConn | None = None) -> list[dict[str, Any]]:
        conns = [conn] if conn is not None else self.conns
        return [line for c in conns for line in c.lines if isinstance(line, dict) and kind in line]

    # -- protocol ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = FakeConn(self, ws)
        with self.event:
            self.conns.append(conn)
            self.event.notify_all()
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            with self.event:
                conn.frames.append(message.data)
            if self.silent:
                continue
            for line in message.data.split("\n"):
                if not line.strip():
                    continue
                obj = json.loads(line)
                with self.event:
                    conn.lines.append(obj)
                    self.event.notify_all()
                reply = self._reply(conn, obj)
                if reply is not None:
                    await ws.send_str(json.dumps(reply))
        with self.event:
            self.event.notify_all()
        return ws

    def _reply(self, conn: FakeConn, obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj == {}:
            with self.event:
                self.pongs += 1
                self.event.notify_all()
            return None
        cid = obj["id"]
        if "connect" in obj:
            if self.connect_handler is not None:
                return self.connect_handler(conn, obj["connect"])  # type: ignore[no-any-return]
            if self.connect_error is not None:
                return {"id": cid, "error": self.connect_error}
            return {"id": cid, "connect": self.connect_result}
        if "subscribe" in obj:
            params = obj["subscribe"]
            if self.subscribe_handler is not None:
                result = self.subscribe_handler(conn, params)
                if result is None:
                    return None
                if "error" in result:
                    return {"id": cid, **result}
            else:
                result = {"recoverable": True, "epoch": "e1", "offset": 0}
            conn.subscribed.add(params["channel"])
            return {"id": cid, "subscribe": result}
        if "unsubscribe" in obj:
            conn.subscribed.discard(obj["unsubscribe"]["channel"])
            return {"id": cid, "unsubscribe": {}}
        if "refresh" in obj:
            with self.event:
                self.refreshes.append(obj["refresh"]["token"])
            return {"id": cid, "refresh": {"expires": True, "ttl": 3600}}
        return {"id": cid, "error": {"code": 104, "message": "method not found"}}
