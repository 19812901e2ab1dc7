"""Realtime reconnect storm: 50 clients, 10 server restarts, 20 publications per second.

Run: ``python benchmarks/bench_realtime.py [--clients 50] [--restarts 10] [--interval 6.5]
[--rate 20] [--downtime 0] [--seed N] [--skip-centrifuge]``

Scenario: a :class:`chatsdk.testing.ReferenceServer` on loopback; N clients subscribe to one
channel; a publisher thread publishes ``rate`` messages per second (publications made while
the server is down go straight into the kept history, as a database-backed broker would);
the server is stopped (every connection reset, as in a crash) and started again with
``keep_state=True`` every ``interval`` seconds, ``restarts`` times; ``--downtime`` keeps it
down that many seconds longer (a process that takes time to come back). Then the publisher
stops and every client gets time to catch up.

Printed per client implementation:

* reconnect time: from the moment a client sees its working connection end to the moment
  its subscription is subscribed again on a new one (p50, p99, max); it includes the time the
  server was down, printed beside it (``down``: from ``stop()`` called to ``start()``
  returned, mean per restart), so the client's own share is the difference;
* publications missed (published, never delivered) and duplicated (delivered twice);
* the largest number of successful reconnects in any 100 ms window (and, for chatsdk,
  of connection attempts), against the target of at most 25% of the clients.

Both sides use their defaults: chatsdk ``RealtimeClient()`` (0.1 s .. 10 s backoff,
``restart_spread=0.8``, a token fetched from ``POST /api/realtime/token`` before every
attempt) and centrifuge-python ``Client()`` (0.1 s .. 20 s backoff), the latter driven from
a thread running its own asyncio loop.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import logging
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from chatsdk._realtime.client import RealtimeClient, RealtimeState
from chatsdk._realtime.subscription import Publication
from chatsdk.testing import ReferenceServer

CHANNEL = "chat:bench"
KEY = "test-key"


@dataclass
class Recorder:
    """What one client saw."""

    offsets: list[int] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    reconnect_times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def got(self, offset: int) -> None:
        with self.lock:
            self.offsets.append(offset)


@dataclass
class Result:
    name: str
    reconnect_times: list[float]
    missed: int
    duplicated: int
    max_connects_100ms: int
    max_attempts_100ms: int | None
    back_to_connected: list[float]
    downtime: float
    max_downtime: float
    restarts: int
    published: int
    notes: str = ""


def fetch_token(server: ReferenceServer) -> str:
    response = requests.post(
        f"{server.url}/api/realtime/token", headers={"X-API-Key": KEY}, timeout=5
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def max_in_window(times: list[float], window: float = 0.1) -> int:
    times = sorted(times)
    best = 0
    for i, start in enumerate(times):
        best = max(best, bisect.bisect_left(times, start + window) - i)
    return best


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class Storm:
    """The server, the publisher and the restarts (shared by both runs)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server = ReferenceServer()
        self.published: list[int] = []
        self.downtimes: list[float] = []
        self.back_at: list[float] = []
        self._stop = threading.Event()
        self._publisher: threading.Thread | None = None

    def start(self) -> None:
        self.server.start()

    def _publish_loop(self) -> None:
        period = 1.0 / self.args.rate
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                offset = self.server.publish(CHANNEL, {"seq": seq, "at": time.time()})
            except Exception:  # the server is between stop and start: try again
                offset = None
            if offset is not None:
                self.published.append(offset)
                seq += 1
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def run(self, all_caught_up: Callable[[set[int]], bool]) -> None:
        self._publisher = threading.Thread(target=self._publish_loop, daemon=True)
        self._publisher.start()
        pause = threading.Event()
        for _ in range(self.args.restarts):
            pause.wait(self.args.interval)
            started = time.monotonic()
            self.server.stop()
            if self.args.downtime > 0:
                pause.wait(self.args.downtime)
            self.server.start(keep_state=True)
            self.back_at.append(time.monotonic())
            self.downtimes.append(self.back_at[-1] - started)
        pause.wait(self.args.interval)
        self._stop.set()
        self._publisher.join()
        expected = set(self.published)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all_caught_up(expected):
            pause.wait(0.05)

    def close(self) -> None:
        self.server.stop()


def summarize(
    name: str, storm: Storm, recorders: list[Recorder], *, attempts: bool, notes: str = ""
) -> Result:
    expected = set(storm.published)
    missed = duplicated = 0
    times: list[float] = []
    connects: list[float] = []
    attempt_times: list[float] = []
    for rec in recorders:
        with rec.lock:
            got = list(rec.offsets)
        missed += len(expected - set(got))
        duplicated += len(got) - len(set(got))
        times.extend(rec.reconnect_times)
        connects.extend(rec.connects[1:])  # the first connect is no reconnect
        attempt_times.extend(rec.attempts[1:])
    return Result(
        name=name,
        reconnect_times=times,
        missed=missed,
        duplicated=duplicated,
        max_connects_100ms=max_in_window(connects),
        max_attempts_100ms=max_in_window(attempt_times) if attempts else None,
        back_to_connected=[
            t - storm.back_at[i - 1]
            for t in connects
            if (i := bisect.bisect_right(storm.back_at, t)) > 0
        ],
        downtime=statistics.fmean(storm.downtimes) if storm.downtimes else 0.0,
        max_downtime=max(storm.downtimes, default=0.0),
        restarts=storm.args.restarts,
        published=len(expected),
        notes=notes,
    )


# -- chatsdk ------------------------------------------------------------------------------


def run_chatsdk(args: argparse.Namespace) -> Result:
    storm = Storm(args)
    storm.start()
    recorders = [Recorder() for _ in range(args.clients)]
    clients: list[RealtimeClient] = []
    rng = random.Random(args.seed)
    for rec in recorders:

        def get_token(rec: Recorder = rec) -> str:
            rec.attempts.append(time.monotonic())
            return fetch_token(storm.server)

        def on_state(old: RealtimeState, new: RealtimeState, rec: Recorder = rec) -> None:
            if new is RealtimeState.CONNECTED:
                rec.connects.append(time.monotonic())

        client = RealtimeClient(
            storm.server.ws_url,
            get_token=get_token,
            on_state_change=on_state,
            random=random.Random(rng.getrandbits(64)),
        )

        def on_publication(pub: Publication, rec: Recorder = rec) -> None:
            rec.got(pub.offset)

        client.subscribe(CHANNEL, on_publication)
        client.connect()
        clients.append(client)
    for client in clients:
        client.subscriptions()[0].wait_subscribed(10)

    def caught_up(expected: set[int]) -> bool:
        return all(expected <= set(rec.offsets) for rec in recorders)

    try:
        storm.run(caught_up)
    finally:
        for client, rec in zip(clients, recorders, strict=True):
            rec.reconnect_times = list(client.stats().reconnect_times)
            client.close()
        storm.close()
    return summarize("chatsdk RealtimeClient", storm, recorders, attempts=True)


# -- centrifuge-python --------------------------------------------------------------------


def run_centrifuge(args: argparse.Namespace) -> Result:
    from centrifuge import (  # noqa: PLC0415 - optional, only for the comparison
        Client,
        ClientEventHandler,
        ConnectedContext,
        ConnectingContext,
        PublicationContext,
        SubscribedContext,
        SubscriptionEventHandler,
    )

    storm = Storm(args)
    storm.start()
    recorders = [Recorder() for _ in range(args.clients)]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    class Events(ClientEventHandler):  # type: ignore[misc]
        def __init__(self, rec: Recorder) -> None:
            self.rec = rec
            self.was_connected = False
            self.down_since: float | None = None

        async def on_connecting(self, ctx: ConnectingContext) -> None:
            if self.was_connected and self.down_since is None:
                self.down_since = time.monotonic()

        async def on_connected(self, ctx: ConnectedContext) -> None:
            self.was_connected = True
            self.rec.connects.append(time.monotonic())

    class SubEvents(SubscriptionEventHandler):  # type: ignore[misc]
        def __init__(self, rec: Recorder, client_events: Events) -> None:
            self.rec = rec
            self.client_events = client_events

        async def on_subscribed(self, ctx: SubscribedContext) -> None:
            since = self.client_events.down_since
            if since is not None:
                self.rec.reconnect_times.append(time.monotonic() - since)
                self.client_events.down_since = None

        async def on_publication(self, ctx: PublicationContext) -> None:
            self.rec.got(ctx.pub.offset)

    async def get_token() -> str:
        return await asyncio.get_running_loop().run_in_executor(None, fetch_token, storm.server)

    clients: list[Any] = []

    async def setup() -> None:
        token = fetch_token(storm.server)
        for rec in recorders:
            events = Events(rec)
            client = Client(storm.server.ws_url, events=events, token=token, get_token=get_token)
            sub = client.new_subscription(CHANNEL, events=SubEvents(rec, events))
            await client.connect()
            await sub.subscribe()
            clients.append(client)
        for client in clients:
            await client.ready(10)

    async def teardown() -> None:
        for client in clients:
            await client.disconnect()
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() if t is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(setup(), loop).result(60)

    def caught_up(expected: set[int]) -> bool:
        return all(expected <= set(rec.offsets) for rec in recorders)

    try:
        storm.run(caught_up)
    finally:
        asyncio.run_coroutine_threadsafe(teardown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        storm.close()
    return summarize(
        "centrifuge-python Client",
        storm,
        recorders,
        attempts=False,
        notes="attempts not observable",
    )


# -- report -------------------------------------------------------------------------------


def report(results: list[Result], clients: int) -> None:
    limit = clients * 0.25
    print(
        f"\n{clients} clients, {results[0].restarts} restarts (keep_state=True); "
        f"targets: p50 <= 0.5 s, p99 <= 2 s, 0 missed, 0 duplicated, "
        f"<= {limit:g} reconnects per 100 ms\n"
    )
    header = (
        f"{'client':28} {'reconn':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7} "
        f"{'down s':>7} {'missed':>7} {'dup':>6} {'conn/100ms':>10} {'att/100ms':>9} "
        f"{'published':>9}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for r in results:
        times = r.reconnect_times
        attempts = "-" if r.max_attempts_100ms is None else str(r.max_attempts_100ms)
        print(
            f"{r.name:28} {len(times):>6} {percentile(times, 50):>7.3f} "
            f"{percentile(times, 99):>7.3f} {max(times, default=float('nan')):>7.3f} "
            f"{r.downtime:>7.3f} {r.missed:>7} {r.duplicated:>6} {r.max_connects_100ms:>10} "
            f"{attempts:>9} "
            f"{r.published:>9}"
        )
        rows.append(r)
    print("\nserver back (start() returned) to client connected again:")
    for r in rows:
        back = r.back_to_connected
        print(
            f"  {r.name:28} p50 {percentile(back, 50):.3f} s  p99 {percentile(back, 99):.3f} s"
            f"  (server down {r.downtime:.3f} s per restart on average, "
            f"{r.max_downtime:.3f} s at most)"
        )
    print(
        "\n(down s: the server's own downtime per restart, stop() called to start() returned;"
        "\n reconnect time = down s + the client's backoff and reconnect work)"
    )
    ours = results[0]
    print()
    checks = [
        ("p50 <= 0.5 s", percentile(ours.reconnect_times, 50) <= 0.5),
        ("p99 <= 2 s", percentile(ours.reconnect_times, 99) <= 2.0),
        ("0 missed", ours.missed == 0),
        ("0 duplicated", ours.duplicated == 0),
        (f"reconnects per 100 ms <= {limit:g}", ours.max_connects_100ms <= limit),
    ]
    for name, ok in checks:
        print(f"  chatsdk {name:32} {'met' if ok else 'NOT met'}")
    if len(times := ours.reconnect_times) > 1:
        print(f"  chatsdk mean reconnect {statistics.fmean(times):.3f} s over {len(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--interval", type=float, default=6.5)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument(
        "--downtime",
        type=float,
        default=0.0,
        help="extra seconds the server stays down at each restart",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-centrifuge", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    results = [run_chatsdk(args)]
    if not args.skip_centrifuge:
        try:
            results.append(run_centrifuge(args))
        except ImportError:
            print("centrifuge-python is not installed: comparison skipped")
    report(results, args.clients)


if __name__ == "__main__":
    main()
