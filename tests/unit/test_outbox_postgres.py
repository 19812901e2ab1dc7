"""The PostgreSQL store's own machinery: targets, migrations, connection loss, wake-ups.

The semantics it shares with SQLite are in test_outbox_conformance.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from chatsdk._errors import ConfigurationError, OutboxError, OutboxUnavailableError
from chatsdk._outbox import postgres
from chatsdk._outbox.outbox import Outbox
from chatsdk._outbox.postgres import PostgresStore, redact, split_names
from chatsdk._outbox.sql import TOKEN
from chatsdk._outbox.store import PROBE_MIN, PROBE_PER_CLAIM, parse_target
from tests.helpers import wait_until
from tests.postgres import free_port


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/var/lib/x.db", ("sqlite", "/var/lib/x.db")),
        ("sqlite:///rel/x.db", ("sqlite", "rel/x.db")),
        ("sqlite:////abs/x.db", ("sqlite", "/abs/x.db")),
        ("postgresql://h/db", ("postgresql", "postgresql://h/db")),
        ("postgres://h/db", ("postgresql", "postgres://h/db")),
    ],
)
def test_targets(target: str, expected: tuple[str, str]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize("target", ["mysql://h/db", "postgresq://h/db", "sqlite://x", "sqlite:///"])
def test_other_schemes_are_configuration_errors_and_create_no_file(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError):
        Outbox(target)
    assert list(tmp_path.iterdir()) == []


def test_url_helpers() -> None:
    assert redact("postgresql://u:secret@h:5433/db") == "postgresql://u@h:5433/db"
    assert redact("postgresql:///db") == "postgresql:///db"
    with pytest.raises(ValueError, match="invalid PostgreSQL URL"):
        redact("postgresql://h/db?nonsense=1")
    url, names = split_names("postgresql://h/db?sslmode=disable&schema=s&table=t")
    assert (url, names) == ("postgresql://h/db?sslmode=disable", {"schema": "s", "table": "t"})


def test_a_url_with_no_host_part_is_kept_whole(postgres_url: str, pg_schema: str) -> None:
    # postgresql:///db is how a Unix-socket connection is written (the host, if any, in
    # the query). Seen before: taking chatsdk's schema= out of the URL turned it into
    # postgresql:/db, which libpq refuses: "invalid PostgreSQL URL".
    assert split_names("postgresql:///db?schema=s") == ("postgresql:///db", {"schema": "s"})
    assert split_names("postgresql://") == ("postgresql://", {})
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    dbname = info.pop("dbname", "postgres")
    params = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in info.items())
    url = f"postgresql:///{dbname}?{params}&schema={pg_schema}"
    with Outbox(url) as box:
        entry = box.enqueue("message", "c", {"channelId": "c", "text": "x"})
        assert box.get(entry.id) is not None and box._store.schema == pg_schema


def test_an_empty_schema_or_table_in_the_url_is_refused(postgres_url: str) -> None:
    # Seen before: ?schema= fell back to the default schema without a word.
    for name in ("schema", "table"):
        with pytest.raises(ConfigurationError, match=f"{name} must be 1 to 40 bytes"):
            Outbox(f"{postgres_url}?{name}=")


def test_schema_and_table_are_for_postgresql_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PostgreSQL outbox only"):
        Outbox(tmp_path / "x.db", schema="s")


def test_connection_needs_postgresql_and_psycopg(tmp_path: Path, postgres_url: str) -> None:
    with Outbox(tmp_path / "x.db") as box, pytest.raises(TypeError, match="PostgreSQL"):
        box.enqueue("message", "c", {"text": "x"}, connection=object())


def test_names_are_measured_in_bytes_as_postgresql_measures_them(
    postgres_url: str, pg_schema: str
) -> None:
    # Seen before: a 40-character table name in "ü" (80 bytes) was accepted, then every
    # enqueue failed ("channel name too long") and its three index names, each cut at 63
    # bytes by PostgreSQL, were one name: two of the indexes were never made.
    with pytest.raises(ValueError, match="40 bytes"):
        Outbox(postgres_url, schema=pg_schema, table="ü" * 21)  # 42 bytes
    table = "ü" * 20  # 40 bytes: the longest name
    with Outbox(postgres_url, schema=pg_schema, table=table) as box:
        assert len(box._store.channel.encode()) <= 63
        entry = box.enqueue("message", "c", {"channelId": "c", "text": "x"})
        claimed, _ = box.claim(1)
        assert [e.id for e in claimed] == [entry.id]
    with psycopg.connect(postgres_url) as conn:
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
            (pg_schema, table),
        ).fetchall()
    assert {f"{table}_pending", f"{table}_finished", f"{table}_expired"} <= {i for (i,) in indexes}


def test_bad_names_and_non_psycopg_connection(postgres_url: str, pg_schema: str) -> None:
    with pytest.raises(ValueError, match="table"):
        Outbox(postgres_url, schema=pg_schema, table="x" * 41)
    with Outbox(postgres_url, schema=pg_schema) as box:
        assert repr(box) == f"<Outbox {redact(postgres_url)}>" and box.backend == "postgresql"
        with pytest.raises(TypeError, match="driver_connection"):
            box.enqueue("message", "c", {"text": "x"}, connection=object())


def test_migration_is_idempotent_and_refuses_a_newer_schema(
    postgres_url: str, pg_schema: str
) -> None:
    Outbox(postgres_url, schema=pg_schema).close()
    Outbox(postgres_url, schema=pg_schema).close()  # already there: nothing to do
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'UPDATE "{pg_schema}".chatsdk_schema_versions SET version = 99')
    with pytest.raises(OutboxError, match="newer than this chatsdk"):
        Outbox(postgres_url, schema=pg_schema)


def test_a_version_1_table_is_migrated_and_expired_entries_are_counted_on_an_index(
    postgres_url: str, pg_schema: str
) -> None:
    meta, steps = postgres.pg_sql.migrations(pg_schema, "outbox")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for statement in [*meta, *steps[0]]:  # a table as chatsdk with schema 1 left it
            conn.execute(statement)
        conn.execute(
            f'INSERT INTO "{pg_schema}".chatsdk_schema_versions VALUES (%s, 1)',
            (f"{pg_schema}.outbox",),
        )
        conn.execute(
            f'INSERT INTO "{pg_schema}".outbox (kind, channel, idempotency_key, body, status,'
            " created_at, next_attempt_at) VALUES ('message', 'c', 'k', '{}', 'expired', 0, 0)"
        )
    with Outbox(postgres_url, schema=pg_schema) as box:  # migrated to 2; the row kept
        assert box._store.expired_count() == 1 and box.stats().expired == 1
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")  # a tiny table: ask whether it can
            plan = conn.execute("EXPLAIN " + box._store._q["COUNT_EXPIRED"]).fetchall()
            version = conn.execute(
                f'SELECT version FROM "{pg_schema}".chatsdk_schema_versions'
            ).fetchone()
    assert "outbox_expired" in " ".join(row[0] for row in plan)
    assert version == (postgres.pg_sql.SCHEMA_VERSION,) == (2,)


def test_an_error_on_the_callers_connection_is_an_outbox_error(
    postgres_url: str, pg_schema: str
) -> None:
    with Outbox(postgres_url, schema=pg_schema) as box, psycopg.connect(postgres_url) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT 1/0")
        with pytest.raises(OutboxError, match="caller's connection"):  # the tx is aborted
            box.enqueue("message", "c", {"text": "x"}, connection=conn)


def test_waiting_on_an_entry_of_an_uncommitted_transaction_says_so(
    postgres_url: str, pg_schema: str
) -> None:
    with Outbox(postgres_url, schema=pg_schema) as box, psycopg.connect(postgres_url) as conn:
        entry = box.enqueue("message", "c", {"text": "x"}, connection=conn)
        with pytest.raises(OutboxError, match="a transaction that has not committed"):
            entry.wait(0)  # before: "no longer in the outbox", as if it had been purged
        conn.rollback()


def test_a_host_clock_away_from_the_database_servers_is_warned_of_at_open(
    postgres_url: str, pg_schema: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def skew_warnings() -> list[str]:
        found = [r.getMessage() for r in caplog.records if "database server's" in r.getMessage()]
        caplog.clear()
        return found

    caplog.set_level(logging.WARNING, logger="chatsdk")
    Outbox(postgres_url, schema=pg_schema).close()  # the same machine's clock: in sync
    assert skew_warnings() == []
    for skew, says in ((120.0, "120.0s ahead of"), (-120.0, "120.0s behind")):
        Outbox(postgres_url, schema=pg_schema, clock=lambda s=skew: time.time() + s).close()
        (warning,) = skew_warnings()
        assert says in warning and "NTP" in warning
    Outbox(tmp_path / "x.db", clock=lambda: time.time() + 120).close()  # one machine: no server
    assert skew_warnings() == []


def test_a_claims_work_does_not_grow_with_the_channels_pending(
    postgres_url: str, pg_schema: str
) -> None:
    # Seen before: every claim walked every channel's head, so its cost grew with the
    # channels that had entries pending (a claim of 4 took 65 ms with 10,000 channels
    # pending, 790 ms with 100,000). Measured here in pages a claim touches, not in time.
    def pages_a_claim_touches(channels: int) -> int:
        table = f"t{channels}"
        with Outbox(postgres_url, schema=pg_schema, table=table) as box:
            q = box._store._q["CLAIM"]
        now = time.time()
        with psycopg.connect(postgres_url) as conn:
            conn.execute(
                f'INSERT INTO "{pg_schema}"."{table}" (kind, channel, idempotency_key, body,'
                " created_at, next_attempt_at) SELECT 'message', 'c' || g, 'k' || g, '{}',"
                " %s, %s FROM generate_series(1, %s) g",
                (now, now, channels),
            )
            conn.commit()
            args = {
                "now": now + 1,
                "held": [],
                "limit": 4,
                "probe": PROBE_MIN + PROBE_PER_CLAIM * 4,
                "oldest": now - 3600,
                "owner": "test",
                "expires": now + 60,
            }
            explained = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + q, args)
            plan = explained.fetchone()[0][0]["Plan"]  # type: ignore[index]
            conn.rollback()  # EXPLAIN ANALYZE claimed them: give them back
        return int(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])

    few, many = pages_a_claim_touches(10), pages_a_claim_touches(5000)
    # Deeper indexes cost a few pages more (seen: 58 and 178); before, 89 and 30,198.
    assert many < 10 * few, (few, many)


def test_a_burst_of_threads_shares_a_bounded_pool(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen before: 64 threads queueing at once opened 64 connections (PostgreSQL's default
    # max_connections is 100), and closed all but 4 of them again at every turn.
    opened: list[object] = []
    connect = psycopg.connect

    def counted(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return connect(*args, **kwargs)

    with Outbox(postgres_url, schema=pg_schema) as box:
        monkeypatch.setattr(postgres.psycopg, "connect", counted)

        def queue(thread: int) -> None:
            for i in range(20):
                box.enqueue("message", f"c{thread}", {"channelId": "c", "text": f"{i}"})

        threads = [threading.Thread(target=queue, args=(t,)) for t in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert box.stats().queued == 64 * 20  # each waited for a connection, none failed
    # The pool's, opened as needed (one was open from the start), and the LISTEN one.
    assert len(opened) <= postgres.POOL_SIZE + 1, len(opened)


def test_a_call_that_finds_every_connection_busy_is_told(postgres_url: str, pg_schema: str) -> None:
    store = PostgresStore(postgres_url, schema=pg_schema, pool_size=1, connect_timeout=0.2)
    for bad in ("0", "many", ""):
        with pytest.raises(ConfigurationError, match=f"pool_size must be an int >= 1, got '{bad}'"):
            Outbox(f"{postgres_url}?pool_size={bad}", schema=pg_schema)
    with pytest.raises(ConfigurationError, match="got 0"):
        PostgresStore(postgres_url, schema=pg_schema, pool_size=0)
    with Outbox(f"{postgres_url}?pool_size=3", schema=pg_schema) as sized:
        assert sized._store._pool_size == 3
    with Outbox(store) as box:
        holding, release = threading.Event(), threading.Event()

        def hold(cur: Any) -> None:
            holding.set()
            release.wait(30)

        holder = threading.Thread(target=store._run, args=(hold,))
        holder.start()
        assert holding.wait(30)
        with pytest.raises(OutboxUnavailableError, match=r"all 1 connections .* busy for 0\.2s"):
            box.enqueue("message", "c", {"channelId": "c", "text": "x"})
        release.set()
        holder.join()
        assert box.enqueue("message", "c", {"channelId": "c", "text": "x"}).id > 0


def test_a_call_in_flight_at_close_closes_its_connection_when_it_ends(
    postgres_url: str, pg_schema: str
) -> None:
    store = PostgresStore(postgres_url, schema=pg_schema)
    holding, release = threading.Event(), threading.Event()
    used: list[psycopg.Connection[Any]] = []

    def hold(cur: Any) -> None:
        used.append(cur.connection)
        holding.set()
        release.wait(30)

    call = threading.Thread(target=store._run, args=(hold,))
    call.start()
    assert holding.wait(30)
    store.close()
    assert not used[0].closed  # still the call's
    release.set()
    call.join()
    assert used[0].closed  # not put back into the closed store's pool


def test_unreachable_database_is_an_outbox_error_at_once() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1"
    with pytest.raises(OutboxError, match="unreachable"):
        Outbox(url)


def test_store_backs_off_while_down_and_reconnects(postgres_url: str, pg_schema: str) -> None:
    store = PostgresStore(postgres_url, schema=pg_schema)
    store._url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    for conn in store._idle:
        conn.close()
    store._idle.clear()
    with pytest.raises(OutboxUnavailableError, match="unreachable"):
        store.get(1)
    with pytest.raises(OutboxUnavailableError, match="next attempt in"):  # backing off
        store.get(1)
    store._url, store._down_until = split_names(postgres_url)[0], 0.0
    assert store.get(1) is None  # back
    store.close()
    store.close()
    with pytest.raises(OutboxError, match="closed"):
        store.get(1)


def cut_off(box: Outbox) -> tuple[PostgresStore, str]:
    """Point ``box``'s store at a port nothing listens on; returns it and its real URL."""
    store = box._store
    assert isinstance(store, PostgresStore)
    url, store._url = store._url, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    for conn in store._idle:
        conn.close()
    store._idle.clear()
    return store, url


def test_a_wait_goes_on_while_the_database_is_down(postgres_url: str, pg_schema: str) -> None:
    with Outbox(postgres_url, schema=pg_schema) as box:
        store, url = cut_off(box)
        looks: list[int] = []

        def back_up() -> bool:  # asked at each look that found the database down
            looks.append(1)
            if len(looks) == 2:
                store._url, store._down_until = url, 0.0
            return False

        assert box.wait_idle(60, give_up=back_up)  # before: OutboxError at the first look
        assert len(looks) == 2

        store, url = cut_off(box)
        wait_out = box._wait_out

        def back_up_after(*args: Any, **kwargs: Any) -> None:
            wait_out(*args, **kwargs)
            store._url, store._down_until = url, 0.0

        box._wait_out = back_up_after  # type: ignore[method-assign]
        with pytest.raises(OutboxError, match="is not in the outbox"):  # looked again
            box.wait(12345, 60)


def test_a_wait_ends_with_the_error_when_the_database_is_still_down(
    postgres_url: str, pg_schema: str
) -> None:
    with Outbox(postgres_url, schema=pg_schema) as box:
        box.enqueue("message", "c", {"text": "1"})
        cut_off(box)
        with pytest.raises(OutboxUnavailableError, match="unreachable"):
            box.wait_idle(0)  # the deadline: the truth is that it cannot be known
        with pytest.raises(OutboxUnavailableError, match="next attempt in"):
            box.wait_idle(60, give_up=lambda: True)  # a drainer that stopped: no waiting
        with pytest.raises(OutboxUnavailableError):
            box.wait(1, 0)
        with pytest.raises(OutboxUnavailableError):  # and an enqueue is refused at once
            box.enqueue("message", "c", {"text": "2"})


def terminate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'chatsdk-outbox'"
        )


def test_a_server_side_disconnect_is_survived(postgres_url: str, pg_schema: str) -> None:
    with Outbox(postgres_url, schema=pg_schema) as box:
        box.enqueue("message", "c", {"text": "1"})
        terminate(postgres_url)  # the pooled connection dies (a restart, a failover)
        assert box.enqueue("message", "c", {"text": "2"}).id == 2  # rerun on a new one
        terminate(postgres_url)
        assert box.pending_count() == 2


def test_a_failure_at_commit_is_not_rerun(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresStore(postgres_url, schema=pg_schema)

    def dies(cur: Any) -> None:
        cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(OutboxError, match="connection lost"):
        store._run(dies)
    with pytest.raises(OutboxError, match="division by zero"):  # the connection survives
        store._run(lambda cur: cur.execute("SELECT 1/0"))
    assert store.get(1) is None
    store.close()


def test_notify_wakes_other_processes_listeners(postgres_url: str, pg_schema: str) -> None:
    a, b = Outbox(postgres_url, schema=pg_schema), Outbox(postgres_url, schema=pg_schema)
    woken: list[int] = []
    b.on_remote_work(lambda: woken.append(1))
    assert wait_until(lambda: len(woken) == 1)  # the listener's first look after connecting
    a.enqueue("message", "c", {"text": "x"})
    assert wait_until(lambda: len(woken) == 2)
    seen = b._signals.settled_generation
    (claimed,), _ = a.claim(1)
    a.ack(claimed, {"id": "m"})
    assert wait_until(lambda: b._signals.settled_generation > seen)  # "s": settled
    terminate(postgres_url)  # the listener reconnects and looks again
    assert wait_until(lambda: len(woken) >= 3)
    b.remove_listener(woken.append)
    a.close(), b.close()


def test_undecodable_rows_become_dead_letters(postgres_url: str, pg_schema: str) -> None:
    with Outbox(postgres_url, schema=pg_schema) as box:
        bad, good = box.enqueue("message", "a", {"t": 1}), box.enqueue("message", "b", {"t": 2})
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'UPDATE "{pg_schema}".outbox SET body = %s WHERE id = %s', ("{", bad.id))
        assert box.renew_leases() == 0  # nothing in flight
        claimed, _ = box.claim(5)
        assert [e.id for e in claimed] == [good.id]
        assert box.renew_leases() == 1
        dead = box.get(bad.id)
        assert dead is not None and dead.status == "failed"
        assert "undecodable" in (dead.last_error or "")


def test_a_forked_child_leaves_the_parents_connections_alone(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the at-fork hook does in a child (run here in-process): the parent's sockets are
    pointed at /dev/null, never closed on the server's side, and new ones are opened."""
    abandoned: list[psycopg.Connection[Any]] = []
    monkeypatch.setattr(postgres, "_ABANDONED", abandoned)
    store = PostgresStore(postgres_url, schema=pg_schema)
    store.watch()
    assert wait_until(lambda: store._listen_conn is not None)
    old_owner, inherited = store.owner, list(store._idle)
    store.held.add("parent's")
    store._pid = -1  # as if this were the child of the process that made the store
    assert store.get(1) is None  # noticed on first use: a new connection of its own
    assert store.owner != old_owner and store.held == set()
    assert all(conn not in store._idle for conn in inherited)
    store._pid = -1
    store.watch()  # the child's own listener
    store._pid = -1
    store.close()  # closes nothing it did not open
    assert inherited and all(any(c is a for a in abandoned) for c in inherited)
    for conn in abandoned:  # a real child has its own copies; this process must close them
        conn.close()


def test_the_listener_retries_until_the_database_answers(postgres_url: str, pg_schema: str) -> None:
    store = PostgresStore(postgres_url, schema=pg_schema)
    real = store._url
    store._url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    woken: list[int] = []
    store.on_wake(lambda: woken.append(1))
    wait_until(lambda: False, 0.2)  # a failed attempt or two
    assert woken == []
    store._url = real
    assert wait_until(lambda: woken == [1], 10)
    store.close()


def test_an_outcome_applied_again_under_its_claim_reports_it_and_changes_nothing(
    postgres_url: str, pg_schema: str
) -> None:
    # What a rerun after a lost connection does: the ack's statement, sent again under the
    # same claim, finds its outcome recorded (the token stays on the finished row).
    store = PostgresStore(postgres_url, schema=pg_schema)
    store.insert("message", "c", "k1", '{"text": "1"}', time.time())
    store.insert("message", "c", "k2", '{"text": "2"}', time.time())
    (row,), _ = store.claim(1, time.time())
    first = store.ack(row[0], row[TOKEN], "c", '{"id": "m1"}', time.time(), "channel")
    assert first[0] and first[1] is not None and first[1][0] == 2  # the channel's next
    again = store.ack(row[0], row[TOKEN], "c", '{"id": "other"}', time.time(), "channel")
    assert again == (True, None)  # recorded; claims nothing more
    done = store.get(row[0])
    assert done is not None and done[5:7] == ("sent", 1) and json.loads(done[13]) == {"id": "m1"}
    # Another claim's token is fenced off, before and after the outcome.
    assert store.ack(row[0], "not-ours", "c", "{}", time.time(), None) == (False, None)
    store.close()


def statement_names(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names (``"CLAIM"``...) of the statements ``store`` executes from now on."""
    names = {id(text): name for name, text in store._q.items()}
    seen: list[str] = []
    execute = psycopg.Cursor.execute

    def recording(cur: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(names.get(id(query), str(query)))
        return execute(cur, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recording)
    return seen


def test_a_claim_takes_one_statement_unless_a_head_is_to_expire(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresStore(postgres_url, schema=pg_schema, max_age=100.0)
    now = time.time()
    store.insert("message", "old", "k1", "{}", now - 200)  # old enough to expire
    store.insert("message", "old", "k2", "{}", now)
    store.insert("message", "new", "k3", "{}", now)
    seen = statement_names(store, monkeypatch)
    rows, due = store.claim(5, now)
    assert seen == ["CLAIM", "EXPIRE", "NOTIFY", "CLAIM"]  # then, in one transaction
    assert sorted(r[2] for r in rows) == ["new", "old"] and due is None  # k2 behind k1
    assert store.get(1)[5] == "expired"  # type: ignore[index]
    store.insert("message", "new", "k4", "{}", now)
    seen.clear()
    assert store.claim(5, now) == ([], None)  # new's head is in flight: nothing due
    assert seen == ["CLAIM"]
    store.close()
