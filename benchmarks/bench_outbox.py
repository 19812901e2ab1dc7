"""Outbox benchmarks, figures side by side in one run.

1. Durable enqueue, one thread, one commit per message, for both durabilities: chatsdk's
   ``Outbox.enqueue`` vs a bare ``sqlite3`` insert loop into the same table with the same
   pragmas vs persist-queue's ``SQLiteAckQueue.put`` (WAL, SQLite's default full sync).
   Targets: >= 0.8x the bare loop; at ``normal``, >= 2x persist-queue.
2. Drain: 5,000 queued messages to a local reference server (in its own process, no
   faults), messages/s vs ``send_message`` in a loop, over 20 channels and over one
   channel. Target >= 1x. One channel is strictly serial (each message waits for the
   previous one's outcome to be committed), so there it can only approach 1x.
3. Memory: RSS added by 100,000 queued entries. Target < 20 MB.
4. A claim of 4 with 10,000 channels pending beside the same with 40 (the claim's first
   look at the earliest due entries; before it, 28 ms vs 0.12 ms).

Run: ``python benchmarks/bench_outbox.py`` (``--quick`` for smaller counts).
Rounds are interleaved (the loop and both drains in every round) and the median is
reported with every round's figure: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatsdk._client import ChatClient
from chatsdk._outbox.outbox import Outbox
from chatsdk._outbox.sqlite import _MIGRATIONS, APPLICATION_ID, SCHEMA_VERSION

KEY = "test-key"
BODY: dict[str, Any] = {
    "channelId": "bench",
    "text": "hello, outbox",
    "attachments": [],
    "parentId": None,
}
SERVER = textwrap.dedent(
    """
    import sys
    from chatsdk.testing import ReferenceServer
    with ReferenceServer(api_keys=("test-key",), history_size=10) as srv:
        print(srv.url, flush=True)
        sys.stdin.readline()
    """
)


def rate(n: int, fn: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def bench_outbox(path: Path, durability: str, n: int) -> float:
    with Outbox(path, durability=durability) as box:  # type: ignore[arg-type]
        return rate(n, lambda _i: box.enqueue("message", "bench", BODY))


def bench_bare(path: Path, durability: str, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={durability.upper()}")
    for step in _MIGRATIONS:
        for statement in step.split(";"):
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    insert = (
        "INSERT INTO entries (kind, channel, idempotency_key, body, created_at, next_attempt_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )

    def one(_i: int) -> None:
        now = time.time()
        key = str(uuid.uuid4())
        conn.execute(insert, ("message", "bench", key, json.dumps(BODY), now, now))

    try:
        return rate(n, one)
    finally:
        conn.close()


def bench_persist_queue(path: Path, n: int) -> float:
    from persistqueue import SQLiteAckQueue  # noqa: PLC0415

    queue = SQLiteAckQueue(str(path), auto_commit=True, multithreading=False)
    return rate(n, lambda _i: queue.put({"key": str(uuid.uuid4()), "body": BODY}))


def enqueue_section(workdir: Path, rounds: int, counts: dict[str, int]) -> None:
    print("== durable enqueue, one thread, one commit per message (median of rounds) ==")
    results: dict[str, list[float]] = {}
    for r in range(rounds):
        for durability in ("normal", "full"):
            n = counts[durability]
            arms: tuple[tuple[str, Callable[[Path, str, int], float]], ...] = (
                ("chatsdk", bench_outbox),
                ("bare", bench_bare),
            )
            for name, fn in arms:
                path = workdir / f"{name}-{durability}-{r}.db"
                results.setdefault(f"{name}/{durability}", []).append(fn(path, durability, n))
        path = workdir / f"pq-{r}"
        results.setdefault("persist-queue", []).append(bench_persist_queue(path, counts["full"]))
    med = {k: statistics.median(v) for k, v in results.items()}
    for durability in ("normal", "full"):
        ours, bare = med[f"chatsdk/{durability}"], med[f"bare/{durability}"]
        print(
            f"  {durability:6}  chatsdk {ours:8.0f}/s   bare sqlite3 {bare:8.0f}/s   "
            f"ratio {ours / bare:4.2f}x (target >= 0.80x) {'ok' if ours >= 0.8 * bare else 'MISS'}"
        )
    pq = med["persist-queue"]
    ours = med["chatsdk/normal"]
    print(
        f"  persist-queue SQLiteAckQueue.put {pq:8.0f}/s;   chatsdk normal / persist-queue "
        f"{ours / pq:4.2f}x (target >= 2x) {'ok' if ours >= 2 * pq else 'MISS'}"
    )
    print(f"  rounds: { {k: [round(x) for x in v] for k, v in results.items()} }")


def send_loop(url: str, n: int, tag: str) -> float:
    """``send_message`` in a loop over 20 channels (texts differ: no client-side dedup)."""
    with ChatClient(url, KEY) as client:
        client.send_message("warmup", f"warmup {tag}")
        return rate(n, lambda i: client.send_message(f"loop{i % 20}", f"{tag} m{i}"))


def drain_section(workdir: Path, rounds: int, n: int, loop_n: int) -> None:
    print(
        f"== drain of {n} queued messages vs send_message in a loop (server in its own "
        f"process; median of {rounds} interleaved rounds) =="
    )
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdin is not None and server.stdout is not None
    url = server.stdout.readline().strip()
    results: dict[str, list[float]] = {}
    try:
        for r in range(rounds):
            results.setdefault("loop", []).append(send_loop(url, loop_n, f"r{r}"))
            for channels in (20, 1):
                path = workdir / f"drain-{channels}-{r}.db"
                with Outbox(path) as box:
                    for i in range(n):
                        channel = f"d{channels}-{r}-{i % channels}"
                        box.enqueue("message", channel, dict(BODY, channelId=channel))
                started = time.perf_counter()
                with ChatClient(url, KEY, outbox=path) as client:
                    assert client.flush(600)
                drained = n / (time.perf_counter() - started)
                results.setdefault(f"drain/{channels}", []).append(drained)
    finally:
        server.stdin.close()
        server.wait(30)
        server.stdout.close()
    loop = statistics.median(results["loop"])
    for channels in (20, 1):
        drained = statistics.median(results[f"drain/{channels}"])
        verdict = "ok" if drained >= loop else "MISS"
        print(
            f"  {channels:2} channel(s): drain {drained:6.0f} msg/s   send_message loop "
            f"{loop:6.0f} msg/s   ratio {drained / loop:4.2f}x (target >= 1x) {verdict}"
        )
    ratios = {
        f"drain/{c}": [
            round(d / lp, 2) for d, lp in zip(results[f"drain/{c}"], results["loop"], strict=True)
        ]
        for c in (20, 1)
    }
    print(f"  rounds: { {k: [round(x) for x in v] for k, v in results.items()} }")
    print(f"  ratio per round: {ratios}")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


def memory_section(workdir: Path, n: int) -> None:
    print(f"== memory: RSS added by {n} queued entries ==")
    before = rss_mb()
    box = Outbox(workdir / "memory.db")
    for i in range(n):
        box.enqueue("message", f"c{i % 50}", BODY)
    stats = box.stats()
    box.claim(4)  # the drainer's query over all of them
    after = rss_mb()
    box.close()
    added = after - before
    print(
        f"  {stats.queued} queued: RSS {before:.1f} -> {after:.1f} MB, added {added:.1f} MB "
        f"(target < 20 MB) {'ok' if added < 20 else 'MISS'}"
    )


CLAIMS = 200  # claims timed per figure


def claim_median(path: Path, channels: int) -> float:
    """Median seconds of a claim of 4 with ``channels`` channels pending (enough entries
    for every claim to find 4)."""
    box = Outbox(path)
    now = time.time()
    total = max(2 * channels, 4 * CLAIMS + channels)
    rows = [(f"c{i % channels}", f"k{i}", json.dumps(BODY), now, now) for i in range(total)]
    with sqlite3.connect(path) as raw:
        raw.executemany(
            "INSERT INTO entries (kind, channel, idempotency_key, body, created_at,"
            " next_attempt_at) VALUES ('message', ?, ?, ?, ?, ?)",
            rows,
        )
    raw.close()
    samples = []
    for _ in range(CLAIMS):
        start = time.perf_counter()
        claimed, _ = box.claim(4)
        assert len(claimed) == 4  # a full batch each time, not an empty look
        samples.append(time.perf_counter() - start)
        for entry in claimed:
            box.ack(entry, {"id": "m", "channelId": "c", "text": "x"})
    box.close()
    return statistics.median(samples)


def channels_section(workdir: Path, many: int) -> None:
    print(f"== a claim of 4 with {many:,} channels pending beside 40 (median) ==")
    few, lots = claim_median(workdir / "few.db", 40), claim_median(workdir / "many.db", many)
    print(f"  {lots * 1000:.2f} ms vs {few * 1000:.2f} ms: ratio {lots / few:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, fewer rounds")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else 3
    counts: dict[str, Any] = (
        {"normal": 500, "full": 200}
        if args.quick
        else {
            "normal": 3000,
            "full": 600,
        }
    )
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        workdir = Path(tmp)
        version = sys.version.split()[0]
        print(f"python {version}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cpus")
        enqueue_section(workdir, rounds, counts)
        drain_section(workdir, rounds, 500 if args.quick else 5000, 200 if args.quick else 1000)
        memory_section(workdir, 5000 if args.quick else 100_000)
        channels_section(workdir, 1000 if args.quick else 10_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
