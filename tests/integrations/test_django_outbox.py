"""``CHATSDK["OUTBOX"] = "database"``: the outbox in the Django database, on SQLite and PostgreSQL.

Real processes for what a crash or a transaction decides (``manage.py migrate``, a writer
that commits or rolls back, a writer SIGKILLed right after its commit and another process
delivering with ``chatsdk_drain --once``), in-process tests for the store's use of Django's
connections (the caller's transaction, the drainer threads' own connections).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FakeClock, message_response
from tests.processes import (
    DJANGO_MANAGE,
    Process,
    child_env,
    manage_py,
    python,
    require_module,
    until,
)

require_module("django")
require_module("pytest_django")

from django.db import connections, transaction  # noqa: E402

from chatsdk import Outbox  # noqa: E402
from chatsdk._outbox.drainer import Drainer  # noqa: E402
from chatsdk.integrations.django._store import DjangoStore  # noqa: E402
from tests.django_db import migrated_alias  # noqa: E402

CONFIGURED = {"URL": "http://chatsdk.invalid", "API_KEY": "k", "OUTBOX": "database"}


def body(text: str = "hi") -> dict[str, Any]:
    return {"channelId": "orders", "text": text, "attachments": [], "parentId": None}


message_json = message_response


# -- a Django project in subprocesses ---------------------------------------------------


class Project:
    """The test project on one database: ``manage.py`` runs and a look at its tables."""

    def __init__(self, vendor: str, env: dict[str, str], sqlite_path: Path | None,
                 pg: tuple[str, str] | None) -> None:  # fmt: skip
        self.vendor, self.env, self.sqlite_path, self.pg = vendor, env, sqlite_path, pg

    def manage(self, chatsdk: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
        return manage_py(self.env, chatsdk, *args)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as conn:
                return conn.execute(sql).fetchall()
        import psycopg

        assert self.pg is not None
        url, schema = self.pg
        with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]


@pytest.fixture(params=["sqlite", "postgresql"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    env = child_env()
    for name in ("CHATSDK_URL", "CHATSDK_API_KEY", "CHATSDK_OUTBOX"):
        env.pop(name, None)
    if request.param == "sqlite":
        path = tmp_path / "db.sqlite3"
        env["DJANGO_TEST_DB"] = str(path)
        return Project("sqlite", env, path, None)
    import psycopg

    url, schema = request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    env["DJANGO_TEST_POSTGRES_URL"], env["DJANGO_TEST_POSTGRES_SCHEMA"] = url, schema
    return Project("postgresql", env, None, (url, schema))


def migrated(project: Project) -> None:
    result = project.manage(CONFIGURED, "migrate", "--noinput")
    assert result.returncode == 0, result.stdout + result.stderr


def test_manage_py_migrate_creates_the_outbox_table(project: Project) -> None:
    migrated(project)
    shown = project.manage(CONFIGURED, "showmigrations", "chatsdk")
    assert "[X] 0001_initial" in shown.stdout, shown.stdout + shown.stderr
    assert project.query("SELECT count(*) FROM chatsdk_outbox") == [(0,)]
    # The model and its migration agree: nothing left for makemigrations.
    check = project.manage(CONFIGURED, "makemigrations", "chatsdk", "--check", "--dry-run")
    assert check.returncode == 0, check.stdout + check.stderr


def test_rolled_back_never_sent_committed_delivered_once(project: Project, chatsdk_server) -> None:
    migrated(project)
    config = {"URL": chatsdk_server.url, "API_KEY": "test-key", "OUTBOX": "database"}
    result = project.manage(config, "place_orders", "--commit", "3", "--rollback", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    queued = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(queued["committed"]) == 3 and len(queued["rolled_back"]) == 3
    # The rolled-back entries never existed; the committed ones were delivered by the
    # writer's drainer (at the latest by the flush at its exit).
    rows = project.query("SELECT id, status FROM chatsdk_outbox ORDER BY id")
    assert rows == [(i, "sent") for i in queued["committed"]]
    assert project.query("SELECT count(*) FROM shop_order") == [(3,)]
    again = project.manage(config, "chatsdk_drain", "--once")
    assert again.returncode == 0, again.stdout + again.stderr
    texts = sorted(m["text"] for m in chatsdk_server.all_messages())
    assert texts == [f"order committed-{n}" for n in range(3)]


def test_killed_right_after_the_commit_another_process_delivers(
    project: Project, chatsdk_server
) -> None:
    migrated(project)
    config = {"URL": chatsdk_server.url, "API_KEY": "test-key", "OUTBOX": "database"}
    result = project.manage(config, "place_orders", "--commit", "1", "--die-after-commit")
    assert result.returncode == -9, result.stdout + result.stderr
    # Committed, and nothing of the dead process touched it after the commit.
    assert project.query("SELECT status, attempts FROM chatsdk_outbox") == [("queued", 0)]
    assert project.query("SELECT item FROM shop_order") == [("committed-0",)]
    assert chatsdk_server.all_messages() == []
    drained = project.manage(config, "chatsdk_drain", "--once")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "sent 1, failed 0, pending 0" in drained.stdout
    assert [m["text"] for m in chatsdk_server.all_messages()] == ["order committed-0"]
    assert project.query("SELECT status FROM chatsdk_outbox") == [("sent",)]


# -- in this process: Django's connections ----------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def vendor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_alias(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``make_alias(**overrides)``: a migrated alias of this test's own on ``vendor``."""
    blocker = request.getfixturevalue("django_db_blocker")
    pg: dict[str, str] = {}
    if vendor == "postgresql":
        pg = {
            "postgres_url": request.getfixturevalue("postgres_url"),
            "schema": request.getfixturevalue("pg_schema"),
        }
    opened: list[Any] = []

    def make(**overrides: Any) -> str:
        context = migrated_alias(vendor, tmp_path, blocker, **pg, **overrides)
        opened.append(context)
        return context.__enter__()

    yield make
    for context in reversed(opened):
        context.__exit__(None, None, None)


class _Rollback(Exception):
    pass


def test_enqueue_is_part_of_the_callers_transaction(make_alias: Any) -> None:
    alias = make_alias()
    box = Outbox(DjangoStore(alias))
    woken: list[int] = []
    box.add_listener(lambda: woken.append(1))
    outside: list[int] = []
    with transaction.atomic(using=alias):
        entry = box.enqueue("message", "orders", body("committed"), idempotency_key="k1")
        # A duplicate key inside the transaction: the existing entry, the transaction intact.
        assert box.enqueue("message", "orders", body("committed"), idempotency_key="k1") == entry
        reader = threading.Thread(target=lambda: outside.append(box.pending_count()))
        reader.start()
        reader.join(60)
        assert outside == [0]  # not committed: no other connection sees it
        assert woken == []  # and the drainer is not woken for it yet
    assert woken == [1] and box.pending_count() == 1
    with pytest.raises(_Rollback), transaction.atomic(using=alias):
        box.enqueue("message", "orders", body("rolled back"))
        raise _Rollback
    assert woken == [1] and [e.operation.body["text"] for e in box.entries()] == ["committed"]
    with pytest.raises(TypeError, match="pass no connection="):
        box.enqueue("message", "orders", body(), connection=connections[alias])
    # Outside a transaction an enqueue commits at once, and leaves no connection behind.
    connections[alias].close()
    box.enqueue("message", "orders", body("autocommit"))
    assert woken == [1, 1] and connections[alias].connection is None
    box.close()


def test_the_drainer_delivers_while_the_caller_holds_a_transaction(make_alias: Any) -> None:
    alias = make_alias()
    box = Outbox(DjangoStore(alias))
    entry = box.enqueue("message", "orders", body("committed before"))
    drainer = Drainer(box, message_json, workers=1)
    seen: list[str] = []
    with transaction.atomic(using=alias):
        caller = connections[alias]
        drainer.start()
        # Wait from a thread of its own: this one must not read inside its transaction
        # (on SQLite a reader's lock would hold up the drainer's commit).
        waiter = threading.Thread(target=lambda: seen.append(box.wait(entry.id, 60).id))
        waiter.start()
        waiter.join(120)
        assert seen == [f"m-{entry.idempotency_key}"]
        assert connections[alias] is caller and caller.in_atomic_block  # untouched
    assert drainer.stop(60)
    box.close()


@pytest.mark.parametrize("vendor", ["postgresql"])  # connections counted in pg_stat_activity
def test_drainer_threads_wrap_each_call_in_close_old_connections(make_alias: Any) -> None:
    name = "chatsdk-test-drainer"
    # CONN_MAX_AGE=0 (Django's default): every call's connection is closed after it.
    alias = make_alias(OPTIONS={"application_name": name})
    box = Outbox(DjangoStore(alias))
    drainer = Drainer(box, message_json, workers=2, poll_interval=60)
    drainer.start()
    for n in range(3):
        box.enqueue("message", "orders", body(f"m{n}"))
    assert drainer.flush(60)

    def backends() -> int:
        with connections[alias].cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name])
            return int(cur.fetchone()[0])

    # The drainer's threads are alive and idle, and hold no connection: only this one.
    until(lambda: backends() == 1, 60, "the drainer threads' connections closed")
    assert drainer.stop(60)
    connections[alias].close()
    box.close()


@pytest.mark.parametrize("vendor", ["postgresql"])  # a server-side disconnect
def test_a_drainer_replaces_a_connection_the_server_cut(make_alias: Any) -> None:
    name = "chatsdk-test-persistent"
    # With CONN_HEALTH_CHECKS, the check close_old_connections() re-arms before each call
    # finds the cut connection and replaces it before the call uses it.
    alias = make_alias(
        CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True, OPTIONS={"application_name": name}
    )
    box = Outbox(DjangoStore(alias))
    drainer = Drainer(box, message_json, workers=1, poll_interval=0.05)
    drainer.start()
    first = box.enqueue("message", "orders", body("before"))
    box.wait(first.id, 60)
    with connections[alias].cursor() as cur:  # cut every connection of the drainer's threads
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            [name],
        )
        assert cur.fetchall()  # the drainer's persistent connections were there
    second = box.enqueue("message", "orders", body("after"))
    assert box.wait(second.id, 60).id == f"m-{second.idempotency_key}"
    assert drainer.stop(60)
    connections[alias].close()
    box.close()


# -- the store's own machinery (the semantics are the conformance suite's) ----------------


def _sql(alias: str, sql: str, args: tuple[Any, ...] = ()) -> None:
    with connections[alias].cursor() as cur:
        cur.execute(sql, args)


def test_an_undecodable_row_is_a_dead_letter_and_stops_nothing(make_alias: Any) -> None:
    alias = make_alias()
    box = Outbox(DjangoStore(alias))
    bad = box.enqueue("message", "a", body("bad"))
    good = box.enqueue("message", "b", body("good"))
    _sql(alias, "UPDATE chatsdk_outbox SET body = 'not json' WHERE id = %s", (bad.id,))
    claimed, _ = box.claim(5)
    assert [e.id for e in claimed] == [good.id]
    dead = box.get(bad.id)
    assert dead is not None and dead.status == "failed"
    assert dead.last_error is not None and "undecodable entry" in dead.last_error
    box.close()


def test_leases_renewed_orphans_adopted_and_bad_error_records(make_alias: Any) -> None:
    alias = make_alias()
    store = DjangoStore(alias)
    clock = FakeClock(1_800_000_000.0)
    box = Outbox(store, lease_seconds=30, clock=clock)
    assert store.renew(1.0) == 0  # nothing in flight
    entry = box.enqueue("message", "a", body())
    (claimed,), _ = box.claim(1)
    clock.advance(10)
    assert box.renew_leases() == 1
    renewed = box.get(entry.id)
    assert renewed is not None and renewed.lease_owner == box.owner
    assert renewed.lease_expires_at == clock() + 30  # moved, not only still ours
    # Entries queued by a process of this host that exited are this one's to wait for.
    dead_origin = f"{store.host}:999999999:x"
    orphan = box.enqueue("message", "b", body("orphan"))
    _sql(alias, "UPDATE chatsdk_outbox SET origin = %s WHERE id = %s", (dead_origin, orphan.id))
    assert box.pending_count(own=True) == 1
    assert box.adopt_orphans() == 1 and box.pending_count(own=True) == 2
    # A backoff whose stored error is not JSON is no server-requested delay: expedited.
    box.reschedule(claimed, ConnectionResetError("reset"), 60.0)
    _sql(alias, "UPDATE chatsdk_outbox SET error = 'not json' WHERE id = %s", (entry.id,))
    assert box.expedite() == 1
    box.close()


def test_closed_and_database_errors_are_outbox_errors(make_alias: Any) -> None:
    from chatsdk import OutboxError

    alias = make_alias()
    box = Outbox(DjangoStore(alias))
    _sql(alias, "DROP TABLE chatsdk_outbox")
    with pytest.raises(OutboxError, match=f"outbox django:{alias}: "):
        box.claim(1)
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.stats()


def test_a_forked_child_has_its_own_owner_and_no_claims(make_alias: Any) -> None:
    import os

    alias = make_alias()
    box = Outbox(DjangoStore(alias))
    box.enqueue("message", "a", body())
    box.claim(1)
    parent = box.owner
    assert len(box._held) == 1
    connections[alias].close()  # no connection crosses the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = box.owner != parent and box.owner.split(":")[1] == str(os.getpid())
        os.write(write, b"1" if ok and not box._held else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)
    assert box.owner == parent and len(box._held) == 1
    box.close()


def test_two_drainers_deliver_each_entry_once_in_channel_order(make_alias: Any) -> None:
    """Two stores (two owners) with four workers each compete for the same rows."""
    alias = make_alias()
    boxes = [Outbox(DjangoStore(alias)) for _ in range(2)]
    for n in range(60):
        boxes[n % 2].enqueue("message", f"c{n % 5}", body(f"{n}"))
    lock = threading.Lock()
    delivered: list[tuple[str, int]] = []

    def deliver(op: Any) -> dict[str, Any]:
        with lock:
            delivered.append((op.channel, int(op.body["text"])))
        return message_json(op)

    drainers = [Drainer(box, deliver, workers=4, poll_interval=0.05) for box in boxes]
    for drainer in drainers:
        drainer.start()
    assert all(drainer.flush(120) for drainer in drainers)
    for drainer in drainers:
        assert drainer.stop(60)
    assert sorted(n for _, n in delivered) == list(range(60))  # each once
    for c in range(5):
        lane = [n for channel, n in delivered if channel == f"c{c}"]
        assert lane == sorted(lane)  # in order within its channel
    assert boxes[0].stats().sent == 60
    for box in boxes:
        box.close()


def test_chatsdk_drain_worker_delivers_others_commits_and_stops_on_sigterm(
    project: Project, chatsdk_server
) -> None:
    migrated(project)
    config = {"URL": chatsdk_server.url, "API_KEY": "test-key", "OUTBOX": "database"}
    env = {**project.env, "DJANGO_CHATSDK": json.dumps(config)}
    worker = Process(python(str(DJANGO_MANAGE), "chatsdk_drain"), cwd=Path.cwd(), env=env)
    try:
        for _ in range(3):  # writers that die right after their commit, before any delivery
            result = project.manage(config, "place_orders", "--commit", "1", "--die-after-commit")
            assert result.returncode == -9, result.stdout + result.stderr
        until(lambda: len(chatsdk_server.all_messages()) >= 3, 60, "the worker's deliveries")
        assert worker.stop(signal.SIGTERM) == 0, worker.output
    finally:
        worker.kill()
    assert sorted(m["text"] for m in chatsdk_server.all_messages()) == ["order committed-0"] * 3
    assert project.query("SELECT status FROM chatsdk_outbox") == [("sent",)] * 3
    assert "Traceback" not in worker.output, worker.output


@pytest.mark.parametrize("vendor", ["sqlite"])  # SQLite's VM steps measure the work
def test_a_claims_work_does_not_grow_with_the_channels_pending(make_alias: Any) -> None:
    # Seen before: every claim grouped all pending rows by channel (on SQLite a claim of 4
    # took 28.2 ms with 10,000 channels pending, 2.9 ms with 40).
    def steps_of_a_claim(channels: int) -> int:
        alias = make_alias()
        box = Outbox(DjangoStore(alias))
        now = time.time()
        body = json.dumps({"channelId": "c", "text": "x"})
        with connections[alias].cursor() as cur:
            cur.executemany(
                "INSERT INTO chatsdk_outbox (kind, channel, idempotency_key, body, status,"
                " attempts, created_at, next_attempt_at, possibly_delivered)"
                " VALUES ('message', %s, %s, %s, 'queued', 0, %s, %s, false)",
                [(f"c{i}", f"k{i}", body, now, now) for i in range(channels)],
            )
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0  # go on

        raw = connections[alias].connection
        raw.set_progress_handler(count, 1)
        claimed, _ = box.claim(4)
        raw.set_progress_handler(None, 1)
        assert len(claimed) == 4
        box.close()
        return steps[0]

    few, many = steps_of_a_claim(10), steps_of_a_claim(5000)
    # The first look reads at most 48 due entries (seen: 1,735 and 11,234 steps); before,
    # 1,412 and 375,662.
    assert many < 10 * few, (few, many)
