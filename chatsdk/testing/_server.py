"""ReferenceServer: the bundled ChatSDK backend, on loopback, in a background thread.

The server is an aiohttp application (REST under ``/api``, the realtime WebSocket at
``/connection/websocket``, both on one port) running on its own event loop in a daemon
thread. Its data (:class:`~chatsdk.testing._store.Store`) lives in the
:class:`ReferenceServer` object and survives :meth:`ReferenceServer.stop` and
:meth:`ReferenceServer.start` like a database; the realtime streams survive only with
``start(keep_state=True)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from chatsdk._version import __version__
from chatsdk.testing._faults import (
    FAULT_KINDS,
    FaultInjector,
    FaultPlan,
    RealtimeFaults,
    resolve_plan,
)
from chatsdk.testing._hub import Streams
from chatsdk.testing._realtime import WS_STATS, RealtimeEndpoint
from chatsdk.testing._rest import RestApi, reset_transport
from chatsdk.testing._store import Counters, Store
from chatsdk.testing._wire import MAX_BODY_BYTES

__all__ = ["ReferenceServer"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_COUNTERS = (
    "requests",
    "creates",
    "replays",
    "conflicts",
    "key_reused",
    *(f"fault.{kind}" for kind in FAULT_KINDS),
)
_START_TIMEOUT = 10.0
#: Seconds aiohttp may wait for a handler at stop; every handler is cancelled before, so
#: this only bounds a handler that ignores its cancellation.
_SHUTDOWN_TIMEOUT = 0.1
#: Seconds stop() waits for cancelled tasks to end.
_CANCEL_TIMEOUT = 1.0


async def _cancel_other_tasks() -> None:
    """Cancel every task of the running loop but the current one, and let them end."""
    current = asyncio.current_task()
    for _ in range(3):  # a cancelled handler may start a last task of its own
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        done, pending = await asyncio.wait(tasks, timeout=_CANCEL_TIMEOUT)
        for task in done:  # retrieved: nothing to report about a crash we caused
            if not task.cancelled():
                task.exception()
        if pending:  # pragma: no cover - a task that ignores cancellation
            log.warning("reference server: %d tasks ignored their cancellation", len(pending))
            return


class ReferenceServer:
    """A ChatSDK backend implementing API.md and REALTIME.md, with fault injection.

    Args:
        host: interface to listen on (loopback by default).
        port: port to listen on; 0 picks a free one at the first start and keeps it.
        api_keys: API keys accepted.
        forbidden_keys: keys recognised but refused with 403.
        faults: a :class:`FaultPlan`, a profile name (``"none"``, ``"flaky"``,
            ``"terrible"``) or ``None``.
        ping_interval: seconds between realtime pings.
        token_ttl: lifetime of realtime tokens, in seconds.
        history_size: publications kept per realtime channel.
        history_ttl: seconds a publication is kept in history.
        clock: wall clock (timestamps, token expiry, idempotency retention, history age).
        connect_timeout: seconds a new WebSocket may take to send ``connect`` before it is
            closed with 3502 (stale).

    Use as a context manager (``with ReferenceServer() as srv:``), or call :meth:`start`
    and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] = ("test-key",),
        forbidden_keys: Iterable[str] = (),
        faults: FaultPlan | str | None = None,
        ping_interval: float = 25.0,
        token_ttl: float = 3600.0,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 10.0,
    ) -> None:
        if ping_interval <= 0:
            raise ValueError("ping_interval must be > 0")
        if token_ttl <= 0:
            raise ValueError("token_ttl must be > 0")
        self.host = host
        self._port = port
        self._api_keys = tuple(api_keys)
        self._forbidden_keys = tuple(forbidden_keys)
        self._store = Store(clock=clock)
        self._counters = Counters()
        self._ws_stats = Counters()
        self._injector = FaultInjector(resolve_plan(faults), clock=clock)
        self._realtime_faults = RealtimeFaults()
        self._ping_interval = float(ping_interval)
        self.token_ttl = float(token_ttl)
        self._history_size = history_size
        self._history_ttl = history_ttl
        self._connect_timeout = connect_timeout
        self._streams: Streams | None = None
        self._lifecycle = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._endpoint: RealtimeEndpoint | None = None
        self._outage_timer: asyncio.TimerHandle | None = None
        self._running = False
        self._back: threading.Event = threading.Event()
        self._back.set()

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> ReferenceServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is started (listening, unless in an :meth:`outage`)."""
        return self._running

    def start(self, *, keep_state: bool = False) -> None:
        """Start serving (again on the same port after a :meth:`stop`).

        Args:
            keep_state: keep the realtime streams (epochs, offsets, history) of the previous
                run; otherwise every channel starts over with a new epoch. REST data is
                always kept.

        Raises:
            RuntimeError: when already running.
            OSError: when the port cannot be bound.
        """
        with self._lifecycle:
            if self._loop is not None:
                raise RuntimeError("ReferenceServer is already running")
            if not keep_state or self._streams is None:
                self._streams = self._new_streams()
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="chatsdk-reference-server", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                self._call(self._astart())
            except BaseException:
                self._shutdown_loop()
                raise
            self._running = True
            log.info("reference server listening on %s", self.url)

    def stop(self) -> None:
        """Stop serving, resetting every open connection (like a crash). Idempotent."""
        with self._lifecycle:
            if self._loop is None:
                return
            self._running = False
            try:
                self._call(self._astop())
            finally:
                self._shutdown_loop()
                abandoned = self._store.abandon_in_progress()
                self._back.set()
            log.info("reference server on port %d stopped (%d requests cut)", self._port, abandoned)

    def close(self) -> None:
        """Same as :meth:`stop`."""
        self.stop()

    def _new_streams(self) -> Streams:
        return Streams(
            history_size=self._history_size, history_ttl=self._history_ttl, clock=self._store.now
        )

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._runner = self._site = self._endpoint = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=_START_TIMEOUT)
        if thread is None or not thread.is_alive():
            # Work handed to the loop while it was stopping (a publish() racing stop()):
            # cancel it here, so its caller gets an error now and asyncio finds no task
            # destroyed while pending.
            loop.run_until_complete(_cancel_other_tasks())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = _START_TIMEOUT) -> _T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("ReferenceServer is not running")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # stop() closed the loop meanwhile
            coro.close()
            raise RuntimeError("ReferenceServer is not running") from None
        return future.result(timeout)

    async def _astart(self) -> None:
        assert self._streams is not None
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        endpoint = RealtimeEndpoint(
            store=self._store,
            streams=self._streams,
            stats=self._ws_stats,
            faults=self._realtime_faults,
            ping_interval=lambda: self._ping_interval,
            version=f"chatsdk-reference/{__version__}",
            connect_timeout=self._connect_timeout,
        )
        RestApi(
            store=self._store,
            counters=self._counters,
            api_keys=self._api_keys,
            forbidden_keys=self._forbidden_keys,
            token_ttl=lambda: self.token_ttl,
            injector=lambda: self._injector,
            publish=endpoint.publish,
        ).install(app)
        endpoint.install(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runner, self._endpoint = runner, endpoint
        await self._open_site()

    async def _open_site(self) -> None:
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
        await site.start()
        self._site = site
        self._port = site.port

    async def _close_site(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def _abort_connections(self) -> None:
        if self._endpoint is not None:
            self._endpoint.abort_all()
        server = self._runner.server if self._runner is not None else None
        if server is not None:
            for handler in server.connections:
                reset_transport(handler.transport)

    async def _astop(self) -> None:
        # A crash, not a graceful shutdown: stop listening, reset every connection, cancel
        # every handler (a stalled one included) instead of waiting for it to finish.
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None
        await self._close_site()
        self._abort_connections()
        await _cancel_other_tasks()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port (the one bound at the first start when created with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """The REST base URL, e.g. ``http://127.0.0.1:8800``."""
        return f"http://{self.host}:{self._port}"

    @property
    def ws_url(self) -> str:
        """The realtime URL, e.g. ``ws://127.0.0.1:8800/connection/websocket``."""
        return f"ws://{self.host}:{self._port}/connection/websocket"

    # -- faults ------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force; set a :class:`FaultPlan` or a profile name."""
        return self._injector.plan

    @faults.setter
    def faults(self, value: FaultPlan | str | None) -> None:
        self._injector = FaultInjector(resolve_plan(value), clock=self._store.now)

    def outage(self, seconds: float) -> threading.Event:
        """Refuse connections for ``seconds`` (open ones are reset), then serve again.

        Returns at once (connections are refused from then on), with an event that is
        set when the server listens again.
        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._counters.inc("fault.outage")
        back = threading.Event()
        self._back = back

        async def begin() -> None:
            loop = asyncio.get_running_loop()
            if self._outage_timer is not None:
                self._outage_timer.cancel()
            await self._close_site()
            self._abort_connections()
            self._outage_timer = loop.call_later(
                seconds, lambda: loop.create_task(self._end_outage(back))
            )

        self._call(begin())
        return back

    async def _end_outage(self, back: threading.Event) -> None:
        self._outage_timer = None
        try:
            await self._open_site()
        except OSError:  # pragma: no cover - someone took the port meanwhile
            log.exception("reference server could not listen again on port %d", self._port)
        back.set()

    # -- realtime ----------------------------------------------------------------------

    @property
    def ping_interval(self) -> float:
        """Seconds between realtime pings; settable at runtime."""
        return self._ping_interval

    @ping_interval.setter
    def ping_interval(self, value: float) -> None:
        if value <= 0:
            raise ValueError("ping_interval must be > 0")
        self._ping_interval = float(value)
        loop, endpoint = self._loop, self._endpoint
        if loop is not None and endpoint is not None:
            loop.call_soon_threadsafe(endpoint.ping_interval_changed)

    def disconnect_websockets(self, code: int, reason: str = "") -> None:
        """Close every realtime connection with ``code`` (queued pushes are sent first)."""
        self._in_loop(lambda endpoint: endpoint.close_all(code, reason))

    def send_ping(self) -> None:
        """Send one extra ping ``{}`` to every realtime connection now."""
        self._in_loop(lambda endpoint: endpoint.send_ping())

    def publish(self, channel: str, data: Any) -> int:
        """Publish ``data`` on a realtime channel (e.g. ``"chat:42"``); returns its offset.

        While the server is stopped the publication goes straight into the history (kept
        with ``start(keep_state=True)``), as with a database-backed broker; one racing
        :meth:`stop` does the same once the stop is over (it is never published twice).
        """
        for _ in range(3):
            if self._loop is not None:
                try:
                    return self._in_loop(lambda endpoint: endpoint.publish(channel, data))
                except (RuntimeError, concurrent.futures.CancelledError):
                    pass  # stop() came first and nothing was published: wait for it
            with self._lifecycle:
                if self._loop is None:
                    if self._streams is None:
                        self._streams = self._new_streams()
                    return self._streams.append(channel, data).offset
        raise RuntimeError("ReferenceServer.publish: the server kept restarting")

    def set_realtime_faults(
        self,
        *,
        duplicate_rate: float = 0.0,
        skip_rate: float = 0.0,
        silent: bool = False,
        seed: int | None = None,
    ) -> None:
        """Set the realtime faults (see :class:`~chatsdk.testing.RealtimeFaults`)."""
        faults = RealtimeFaults(
            duplicate_rate=duplicate_rate, skip_rate=skip_rate, silent=silent, seed=seed
        )
        self._realtime_faults = faults

        def apply(endpoint: RealtimeEndpoint) -> None:
            endpoint.faults = faults

        if self._loop is not None:
            self._in_loop(apply)

    def ws_stats(self) -> dict[str, int]:
        """Realtime counters: ``connections`` (open now) and totals since the last reset."""
        stats = self._ws_stats.snapshot(WS_STATS)
        endpoint = self._endpoint
        stats["connections"] = endpoint.open_connections() if endpoint is not None else 0
        return stats

    def _in_loop(self, action: Callable[[RealtimeEndpoint], _T]) -> _T:
        async def run() -> _T:
            endpoint = self._endpoint
            if endpoint is None:  # stop() is under way
                raise RuntimeError("ReferenceServer is not running")
            return action(endpoint)

        return self._call(run())

    # -- inspection --------------------------------------------------------------------

    def messages(self, channel_id: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """The messages of a channel in wire JSON, oldest first."""
        return self._store.messages(channel_id, include_deleted=include_deleted)

    def all_messages(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every message in wire JSON, in creation order."""
        return self._store.all_messages(include_deleted=include_deleted)

    def reactions(self, message_id: str) -> list[dict[str, Any]]:
        """The reactions on a message in wire JSON, oldest first."""
        return self._store.reactions(message_id)

    def counters(self) -> dict[str, int]:
        """REST counters: ``requests``, ``creates``, ``replays``, ``conflicts`` (409),
        ``key_reused`` (422), ``fault.<kind>`` per injected fault, ``status.<code>``."""
        return self._counters.snapshot(_COUNTERS)

    def reset_counters(self) -> None:
        """Set the REST and realtime counters back to zero."""
        self._counters.reset()
        self._ws_stats.reset()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ReferenceServer {self.url} {state} faults={self.faults!r}>"
