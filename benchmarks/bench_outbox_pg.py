"""The PostgreSQL outbox beside bare psycopg loops, in one run against one database.

    python benchmarks/bench_outbox_pg.py [--url postgresql://...]

Without ``--url`` (or ``$CHATSDK_TEST_POSTGRES_URL``) a throwaway server is started
(``initdb`` in a temp dir, ``fsync=off``). Prints, side by side:

1. enqueue, one commit per row: ``Outbox.enqueue`` vs a bare INSERT+COMMIT loop into a table
   of the same shape (goal >= 0.8x);
2. claim+ack with 8 drainer threads, batches of 4: ``Outbox.claim`` + ``ack`` (each ack
   alone, and each ack claiming its channel's next entry as the SDK's drainer does) vs a
   bare ``FOR UPDATE SKIP LOCKED`` claim/update loop of the same batch size (goal >= 0.8x
   and >= 2,000 claims/s); the median of 3 interleaved rounds, each round's figure beside;
3. p99 latency of ``Outbox.claim`` with 1,000,000 finished rows in the table (goal < 20 ms);
4. the end of a flush there (``wait_idle(0)``), the schema migration over such a table,
   and 64 threads queueing at once: time and the most connections the server saw;
5. the median claim with 10,000 and 100,000 channels pending beside the same with 40 (a
   claim's cost should not grow with the channels pending: before the claim's first look
   at the earliest due entries, 65 and 790 ms vs 0.4 ms).

The SDK's enqueue is one statement in autocommit (one round trip), the bare loop's an
INSERT and a COMMIT (two): that is why its ratio is above 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chatsdk._outbox import pg_sql
from chatsdk._outbox.models import OutboxEntry
from chatsdk._outbox.outbox import Outbox
from chatsdk._outbox.store import Follow

ENQUEUES = 3000
CLAIMS = 8000
ROUNDS = 3
DRAINERS = 8
BATCH = 4
CHANNELS = 40
FINISHED = 1_000_000

BARE_TABLE = """
CREATE TABLE bare (
    id bigserial PRIMARY KEY, kind text NOT NULL, channel text NOT NULL,
    idempotency_key text NOT NULL UNIQUE, body text NOT NULL,
    status text NOT NULL DEFAULT 'queued', attempts integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL, next_attempt_at double precision NOT NULL,
    lease_owner text, lease_expires_at double precision, lease_token text, origin text,
    finished_at double precision, last_error text, error text, response text,
    possibly_delivered boolean NOT NULL DEFAULT false)
"""
BODY = '{"channelId":"c","text":"hello","attachments":[],"parentId":null}'


def fresh(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')


def bench_enqueue(url: str) -> tuple[float, float]:
    fresh(url, "bench_enqueue")
    box = Outbox(url, schema="bench_enqueue")
    start = time.perf_counter()
    for i in range(ENQUEUES):
        box.enqueue("message", f"c{i % CHANNELS}", {"channelId": "c", "text": "hello"})
    sdk = ENQUEUES / (time.perf_counter() - start)
    box.close()
    with psycopg.connect(url, options="-c search_path=bench_enqueue") as conn:
        conn.execute(BARE_TABLE)
        conn.execute("CREATE INDEX ON bare (channel, id) WHERE status IN ('queued','sending')")
        conn.commit()
        start = time.perf_counter()
        for i in range(ENQUEUES):
            now = time.time()
            conn.execute(
                "INSERT INTO bare (kind, channel, idempotency_key, body, created_at,"
                " next_attempt_at, origin) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                ("message", f"c{i % CHANNELS}", f"k{i}", BODY, now, now, "o"),
            )
            conn.commit()
        bare = ENQUEUES / (time.perf_counter() - start)
    return sdk, bare


def fill(url: str, schema: str, table: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{schema}"."{table}" (kind, channel, idempotency_key, body,'
            " created_at, next_attempt_at)"
            f" SELECT 'message', 'c' || (g %% {CHANNELS}), 'k' || g, %s, %s, %s"
            " FROM generate_series(1, %s) g",
            (BODY, time.time(), time.time(), rows),
        )


def run_threads(work: Any) -> float:
    threads = [threading.Thread(target=work) for _ in range(DRAINERS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def sdk_claims(url: str, follow: Follow) -> float:
    """Claims/s of 8 threads on ``Outbox``: each claims ``BATCH`` heads and acks them.

    With ``follow="channel"`` each ack also claims its channel's next entry in the same
    statement, as the SDK's drainer does (its worker keeps to a channel), so one drainer
    works through its batch's channels until they are empty or not due.
    """
    fresh(url, "bench_claim")
    Outbox(url, schema="bench_claim").close()
    fill(url, "bench_claim", "outbox", CLAIMS)
    response = {"id": "m", "channelId": "c", "text": "hello"}

    def drain() -> None:
        box = Outbox(url, schema="bench_claim")
        while True:
            claimed, _ = box.claim(BATCH)
            if not claimed:
                if not box.has_pending():
                    break
                continue
            for entry in claimed:
                nxt: OutboxEntry[Any] | None = entry
                while nxt is not None:
                    nxt = box.ack(nxt, response, follow=follow)
        box.close()

    return CLAIMS / run_threads(drain)


def bare_claims(url: str) -> float:
    """Claims/s of 8 threads on a bare ``SKIP LOCKED`` claim/update loop, batch ``BATCH``."""
    fresh(url, "bench_claim")
    with psycopg.connect(url, autocommit=True, options="-c search_path=bench_claim") as conn:
        conn.execute(BARE_TABLE)
        conn.execute("CREATE INDEX ON bare (channel, id) WHERE status IN ('queued','sending')")
    fill(url, "bench_claim", "bare", CLAIMS)

    def bare_drain() -> None:
        with psycopg.connect(url, autocommit=True, options="-c search_path=bench_claim") as c:
            while True:
                with c.transaction():
                    rows = c.execute(
                        "UPDATE bare SET status = 'sending', attempts = attempts + 1,"
                        " lease_expires_at = %s, lease_token = md5(random()::text)"
                        " WHERE id IN (SELECT id FROM bare WHERE status = 'queued'"
                        " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, lease_token",
                        (time.time() + 30, BATCH),
                    ).fetchall()
                if not rows:
                    break
                for row_id, token in rows:
                    with c.transaction():
                        c.execute(
                            "UPDATE bare SET status = 'sent', finished_at = %s, response = %s"
                            " WHERE id = %s AND lease_token = %s",
                            (time.time(), '{"id":"m"}', row_id, token),
                        )

    return CLAIMS / run_threads(bare_drain)


def bench_claims(url: str) -> dict[str, list[float]]:
    """Each arm ``ROUNDS`` times, interleaved, on fresh tables (the machine's drift is shared)."""
    arms: dict[str, Callable[[], float]] = {
        "sdk, ack": lambda: sdk_claims(url, None),
        "sdk, ack + follow": lambda: sdk_claims(url, "channel"),
        "bare": lambda: bare_claims(url),
    }
    figures: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(ROUNDS):
        for name, arm in arms.items():
            figures[name].append(arm())
    return figures


def median_look(box: Outbox) -> float:
    """Median seconds of the end of a flush (``wait_idle(0)``: pending and expired counts)."""
    looks = []
    for _ in range(20):
        start = time.perf_counter()
        box.wait_idle(0)
        looks.append(time.perf_counter() - start)
    return statistics.median(looks)


def bench_latency(url: str) -> tuple[list[float], float, float]:
    """Claim latencies with 1,000,000 finished rows in the table, and the end of a flush
    there with nothing pending and with 2,000 entries pending."""
    fresh(url, "bench_latency")
    box = Outbox(url, schema="bench_latency")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            'INSERT INTO "bench_latency"."outbox" (kind, channel, idempotency_key, body,'
            " status, created_at, next_attempt_at, finished_at)"
            " SELECT 'message', 'c' || (g %% 400), 'done' || g, %s, 'sent', %s, %s, %s"
            " FROM generate_series(1, %s) g",
            (BODY, time.time(), time.time(), time.time(), FINISHED),
        )
        conn.execute('VACUUM ANALYZE "bench_latency"."outbox"')
    idle = median_look(box)
    for i in range(2000):
        box.enqueue("message", f"c{i % CHANNELS}", {"channelId": "c", "text": "x"})
    busy = median_look(box)
    return sorted(time_claims(box, 500)), idle, busy


def bench_migration(url: str) -> float:
    """Seconds to migrate a schema-1 table holding 1,000,000 finished rows (opening it)."""
    schema = "bench_migration"
    fresh(url, schema)
    meta, steps = pg_sql.migrations(schema, "outbox")
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in [*meta, *steps[0]]:  # the table as schema 1 left it
            conn.execute(statement)
        conn.execute(
            f'INSERT INTO "{schema}".chatsdk_schema_versions VALUES (%s, 1)', (f"{schema}.outbox",)
        )
        conn.execute(
            f'INSERT INTO "{schema}"."outbox" (kind, channel, idempotency_key, body, status,'
            " created_at, next_attempt_at, finished_at) SELECT 'message', 'c' || (g %% 400),"
            " 'done' || g, %s, 'sent', 0, 0, 0 FROM generate_series(1, %s) g",
            (BODY, FINISHED),
        )
        conn.execute(f'VACUUM ANALYZE "{schema}"."outbox"')
    start = time.perf_counter()
    Outbox(url, schema=schema).close()
    return time.perf_counter() - start


def bench_burst(url: str, threads: int = 64, each: int = 50) -> tuple[float, int]:
    """Seconds for ``threads`` threads to queue ``each`` entries at once, and the most
    connections the server saw meanwhile (this process's pool and LISTEN, the watcher)."""
    fresh(url, "bench_burst")
    box = Outbox(url, schema="bench_burst")
    peak, done = [0], threading.Event()

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                ).fetchone()
                peak[0] = max(peak[0], row[0] if row else 0)
                time.sleep(0.002)

    def queue(t: int) -> None:
        for i in range(each):
            box.enqueue("message", f"c{t}", {"channelId": "c", "text": f"{i}"})

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=queue, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    done.set()
    watcher.join()
    box.close()
    return elapsed, peak[0]


def time_claims(box: Outbox, claims: int) -> list[float]:
    """Seconds each of ``claims`` claims of a batch took (each claimed entry acked); closes
    ``box``."""
    samples = []
    response = {"id": "m", "channelId": "c", "text": "x"}
    for _ in range(claims):
        start = time.perf_counter()
        claimed, _ = box.claim(BATCH)
        samples.append(time.perf_counter() - start)
        assert len(claimed) == BATCH  # a full batch each time, not an empty look
        for entry in claimed:
            box.ack(entry, response)
    box.close()
    return samples


def bench_channels(url: str, channels: int) -> float:
    """Median seconds of a claim of 4 with ``channels`` channels pending (enough entries for
    every claim to find a full batch)."""
    schema = f"bench_channels_{channels}"
    fresh(url, schema)
    box = Outbox(url, schema=schema)
    now = time.time()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{schema}"."outbox" (kind, channel, idempotency_key, body,'
            " created_at, next_attempt_at) SELECT 'message', 'c' || (g %% %s), 'k' || g, %s,"
            " %s, %s FROM generate_series(1, %s) g",
            (channels, BODY, now, now, max(2 * channels, BATCH * 200 + channels)),
        )
        conn.execute(f'VACUUM ANALYZE "{schema}"."outbox"')
    return statistics.median(time_claims(box, 200))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CHATSDK_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    cluster = None
    url = args.url
    if not url:
        from tests.postgres import PostgresCluster  # noqa: PLC0415

        cluster = PostgresCluster()
        cluster.start()
        url = cluster.url()
    try:
        sdk, bare = bench_enqueue(url)
        print(f"enqueue (1 commit/row)     sdk {sdk:8.0f}/s  bare {bare:8.0f}/s  "
              f"ratio {sdk / bare:.2f}x  (goal >= 0.8x)")  # fmt: skip
        figures = bench_claims(url)
        bare = statistics.median(figures["bare"])
        print(
            f"claim+ack, {DRAINERS} drainers, batch {BATCH}, median of {ROUNDS} interleaved"
            " rounds (goal >= 0.8x and >= 2000/s):"
        )
        for name, runs in figures.items():
            median = statistics.median(runs)
            each = " ".join(f"{run:.0f}" for run in runs)
            print(f"  {name:18} {median:8.0f}/s  ratio {median / bare:.2f}x  (rounds: {each})")
        samples, idle, busy = bench_latency(url)
        p50, p99 = samples[len(samples) // 2], samples[int(len(samples) * 0.99)]
        print(f"claim latency, {FINISHED:,} finished rows  p50 {p50 * 1000:.2f} ms  "
              f"p99 {p99 * 1000:.2f} ms  (goal p99 < 20 ms)")  # fmt: skip
        print(f"end of a flush (wait_idle(0)), {FINISHED:,} finished rows  median "
              f"{idle * 1000:.2f} ms with none pending, {busy * 1000:.2f} ms with 2,000  "
              "(a GROUP BY over the table before: 61.9 ms)")  # fmt: skip
        print(f"migration 1 -> {pg_sql.SCHEMA_VERSION} over {FINISHED:,} finished rows  "
              f"{bench_migration(url):.2f} s")  # fmt: skip
        elapsed, peak = bench_burst(url)
        print(f"64 threads x 50 enqueues at once  {elapsed:.2f} s, at most {peak} connections "
              "(a pool of 8, LISTEN, the watcher; before the bound: 65, 0.45 s)")  # fmt: skip
        few = bench_channels(url, CHANNELS)
        for channels in (10_000, 100_000):
            many = bench_channels(url, channels)
            print(f"claim, {channels:,} channels pending  median {many * 1000:.2f} ms  vs "
                  f"{CHANNELS} channels {few * 1000:.2f} ms  ratio {many / few:.2f}x")  # fmt: skip
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
