"""The outbox conformance suite: every semantic test runs on every store.

Order, leases and fencing, dead letters, expiry, retries, waits: one set of tests
parametrised over the stores (``backend``), so they cannot drift apart: the SQLite file,
PostgreSQL, and the Django database store on SQLite and on PostgreSQL. A fake clock.
Tests about one store's own machinery live in test_outbox_db.py (the SQLite file) and
test_outbox_postgres.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatsdk._errors import (
    APIError,
    BadRequestError,
    ConnectError,
    IdempotencyKeyReusedError,
    NotFoundError,
    OutboxEntryExpiredError,
    OutboxError,
    RateLimitedError,
    ServerError,
    WaitTimeoutError,
)
from chatsdk._models import Message, Reaction
from chatsdk._outbox.models import (
    Operation,
    OutboxEntry,
    OutboxStats,
    describe_error,
    error_record,
)
from chatsdk._outbox.outbox import Outbox
from chatsdk._outbox.sqlite_store import owner_alive as _owner_alive
from tests.helpers import FakeClock

T0 = 1_700_000_000.0


def body(channel: str = "c1", text: str = "hi") -> dict[str, Any]:
    return {"channelId": channel, "text": text, "attachments": [], "parentId": None}


def message_json(mid: str = "m1", channel: str = "c1") -> dict[str, Any]:
    return {
        "id": mid,
        "channelId": channel,
        "text": "hi",
        "attachments": [],
        "parentId": None,
        "userId": "u1",
        "createdAt": "2024-01-01T00:00:00Z",
        "updatedAt": None,
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(params=["sqlite", "postgresql", "django-sqlite", "django-postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def django_alias(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Django database alias of this test's own, migrated (SQLite file or PG schema)."""
    pytest.importorskip("django")
    from tests.django_db import migrated_alias

    vendor = backend.removeprefix("django-")
    pg: dict[str, str] = {}
    if vendor == "postgresql":
        pg = {
            "postgres_url": request.getfixturevalue("postgres_url"),
            "schema": request.getfixturevalue("pg_schema"),
        }
    blocker = request.getfixturevalue("django_db_blocker")
    with migrated_alias(vendor, tmp_path, blocker, **pg) as alias:
        yield alias


@pytest.fixture
def make_outbox(
    backend: str, tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Outbox]]:
    """Outbox(**kwargs) on this test's backend (a file in tmp_path, or a schema of its own)."""
    made: list[Outbox] = []
    target: Any = tmp_path / "outbox.db"
    extra: dict[str, Any] = {}
    if backend == "postgresql":
        target = request.getfixturevalue("postgres_url")
        extra = {"schema": request.getfixturevalue("pg_schema")}
    alias = request.getfixturevalue("django_alias") if backend.startswith("django") else None

    def make(**kwargs: Any) -> Outbox:
        kwargs.setdefault("clock", clock)
        if alias is not None:
            from chatsdk.integrations.django._store import DjangoStore

            box = Outbox(DjangoStore(alias), **kwargs)
        else:
            box = Outbox(target, **extra, **kwargs)
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()


@pytest.fixture
def outbox(make_outbox: Callable[..., Outbox]) -> Outbox:
    return make_outbox(lease_seconds=30.0, max_age=3600.0)


def put(box: Outbox, channel: str = "c1", text: str = "hi", **kw: Any) -> OutboxEntry[Any]:
    return box.enqueue("message", channel, body(channel, text), **kw)


def raw(box: Outbox, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on the store behind ``box`` (``entries`` is its table, ``?`` a value)."""
    store: Any = box._store
    if box.backend == "django":
        from django.db import connections

        text = sql.replace("?", "%s").replace("entries", "chatsdk_outbox")
        with connections[store.alias].cursor() as cur:
            cur.execute(text, args)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
    if box.backend == "sqlite":
        conn = sqlite3.connect(box.path, isolation_level=None)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    import psycopg

    text = sql.replace("?", "%s").replace("entries", f'"{store.schema}"."{store.table}"')
    with psycopg.connect(store._url, autocommit=True) as pg:
        cur = pg.execute(text, args)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


# -- construction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"durability": "fast"},
        {"lease_seconds": 0},
        {"max_age": 0},
        {"sent_retention": -1},
        {"max_attempts": 0},
        {"max_attempts": True},
        {"max_attempts": "3"},
    ],
)
def test_bad_arguments_raise_before_any_file(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Outbox(tmp_path / "x.db", **kwargs)
    assert not (tmp_path / "x.db").exists()


def test_context_manager_repr_owner_and_close(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db", durability="full", max_attempts=3) as box:
        assert "durability=full" in repr(box)
        host, pid, rand = box.owner.split(":")
        assert pid == str(os.getpid()) and len(rand) == 12 and host
        assert not getattr(box, "closed")  # noqa: B009 - a property mypy would narrow
    assert getattr(box, "closed")  # noqa: B009
    box.close()  # idempotent
    with pytest.raises(OutboxError, match="closed"):
        box.stats()


def test_a_store_object_as_target_takes_the_outbox_arguments(tmp_path: Path) -> None:
    from chatsdk._outbox.sqlite_store import SQLiteStore

    store = SQLiteStore(str(tmp_path / "store.db"))
    with pytest.raises(ValueError, match="schema"):
        Outbox(store, schema="s")
    with Outbox(store, lease_seconds=5, max_age=60, sent_retention=1) as box:
        assert (store.lease_seconds, store.max_age, store.sent_retention) == (5, 60, 1)
        assert box.backend == "sqlite" and box.path == store.target


# -- enqueue and reading ----------------------------------------------------------------


def test_enqueue_returns_committed_snapshot(outbox: Outbox, clock: FakeClock) -> None:
    calls: list[int] = []
    outbox.add_listener(lambda: calls.append(1))
    entry = put(outbox, idempotency_key="k-1")
    assert (entry.id, entry.status, entry.attempts, entry.idempotency_key) == (
        1,
        "queued",
        0,
        "k-1",
    )
    assert entry.operation == Operation(
        kind="message", body=body(), idempotency_key="k-1", channel="c1"
    )
    assert entry.created_at == entry.next_attempt_at == T0
    assert calls == [1]
    # Visible to another connection at once: committed.
    assert raw(outbox, "SELECT idempotency_key, status FROM entries") == [("k-1", "queued")]
    assert outbox.get(1) == entry
    assert outbox.get(99) is None


def test_generated_keys_are_unique(outbox: Outbox) -> None:
    keys = {put(outbox).idempotency_key for _ in range(20)}
    assert len(keys) == 20


def test_same_key_same_operation_returns_existing_entry(outbox: Outbox) -> None:
    first = put(outbox, idempotency_key="dup")
    again = put(outbox, idempotency_key="dup")
    assert again.id == first.id
    assert outbox.pending_count() == 1
    with pytest.raises(ValueError, match="different operation"):
        put(outbox, text="other", idempotency_key="dup")


def test_enqueue_rejects_unknown_kind(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="kind"):
        outbox.enqueue("poll", "c1", {})  # type: ignore[arg-type]


def test_entries_filters_and_limits(outbox: Outbox) -> None:
    for i in range(3):
        put(outbox, text=f"t{i}")
    assert [e.id for e in outbox.entries()] == [1, 2, 3]
    assert [e.id for e in outbox.entries(limit=2)] == [1, 2]
    assert outbox.entries(status="sent") == []
    assert len(outbox.entries(status="queued")) == 3
    with pytest.raises(ValueError, match="status"):
        outbox.entries(status="bogus")


def test_stats_counts_and_oldest_age(outbox: Outbox, clock: FakeClock) -> None:
    assert outbox.stats() == OutboxStats()
    put(outbox)
    clock.advance(5)
    put(outbox, channel="c2")
    clock.advance(5)
    stats = outbox.stats()
    assert (stats.queued, stats.pending, stats.oldest_pending_age) == (2, 2, 10.0)
    # A status this version does not know (a newer writer) is not counted, not fatal.
    raw(outbox, "UPDATE entries SET status = 'archived' WHERE id = 2")
    assert outbox.stats().queued == 1


# -- claiming and per-channel order ------------------------------------------------------


def test_claim_takes_one_head_per_channel_in_order(outbox: Outbox) -> None:
    a1, a2, b1 = put(outbox, "a", "1"), put(outbox, "a", "2"), put(outbox, "b", "1")
    claimed, next_due = outbox.claim(10)
    assert [e.id for e in claimed] == [a1.id, b1.id]
    assert all(e.status == "sending" and e.attempts == 1 for e in claimed)
    assert next_due is None  # a2 waits behind a1, our own claim: nothing else due
    assert outbox.claim(10) == ([], None)
    outbox.ack(claimed[0], message_json())
    claimed2, _ = outbox.claim(10)
    assert [e.id for e in claimed2] == [a2.id]


def test_claim_limit_and_next_due(outbox: Outbox, clock: FakeClock) -> None:
    put(outbox, "a"), put(outbox, "b"), put(outbox, "c")
    claimed, next_due = outbox.claim(1)
    assert len(claimed) == 1 and next_due == T0
    outbox.reschedule(claimed[0], ConnectError("refused"), 7.0)
    rest, _ = outbox.claim(5)
    assert len(rest) == 2
    assert outbox.claim(5) == ([], T0 + 7.0)
    clock.advance(7)
    assert [e.id for e in outbox.claim(5)[0]] == [claimed[0].id]


def test_failed_head_lets_channel_move_on(outbox: Outbox) -> None:
    first, second = put(outbox, "a", "1"), put(outbox, "a", "2")
    claimed, _ = outbox.claim(5)
    outbox.fail(claimed[0], BadRequestError(400, "invalid_request", "text: bad"))
    assert outbox.get(first.id).status == "failed"  # type: ignore[union-attr]
    assert [e.id for e in outbox.claim(5)[0]] == [second.id]


def test_live_foreign_lease_blocks_until_expiry(outbox: Outbox, clock: FakeClock) -> None:
    entry = put(outbox)
    other = "otherhost:123:abc"
    raw(
        outbox,
        "UPDATE entries SET status='sending', attempts=1, lease_owner=?, lease_expires_at=?",
        (other, T0 + 30),
    )
    assert outbox.claim(5) == ([], T0 + 30)
    clock.advance(30)
    claimed, _ = outbox.claim(5)
    assert [(e.id, e.attempts, e.lease_owner) for e in claimed] == [(entry.id, 2, outbox.owner)]
    # The old owner's late outcome is fenced off: the claim is no longer its own.
    stale: OutboxEntry[Any] = OutboxEntry(
        id=entry.id,
        idempotency_key=entry.idempotency_key,
        status="sending",
        attempts=1,
        last_error=None,
        operation=entry.operation,
        created_at=T0,
        next_attempt_at=T0,
        lease_owner=other,
        outbox=outbox,
    )
    outbox.reschedule(stale, ConnectError("late"), 0)
    outbox.fail(stale, BadRequestError(400, None, "late"))
    outbox.release(stale)
    outbox.ack(stale, message_json("late"))  # a stale holder's ack changes nothing either
    now = outbox.get(entry.id)
    assert now is not None and (now.status, now.lease_token) == ("sending", claimed[0].lease_token)


def test_dead_local_owner_is_taken_over_at_once(tmp_path: Path, clock: FakeClock) -> None:
    """SQLite only: a dead process on this host is known dead (PostgreSQL waits the lease)."""
    outbox = Outbox(tmp_path / "dead.db", clock=clock)
    put(outbox)
    dead = f"{outbox.owner.split(':')[0]}:999999999:abc"
    raw(
        outbox,
        "UPDATE entries SET status='sending', attempts=1, lease_owner=?, lease_expires_at=?",
        (dead, T0 + 30),
    )
    claimed, _ = outbox.claim(5)
    assert [e.attempts for e in claimed] == [2]
    outbox.close()


def test_owner_alive_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    host = "h"
    assert _owner_alive(None, host)
    assert _owner_alive("garbage", host)
    assert _owner_alive("other:1:x", host)
    assert _owner_alive("h:notapid:x", host)
    assert _owner_alive(f"h:{os.getpid()}:x", host)
    assert not _owner_alive("h:999999999:x", host)

    def eperm(_pid: int, _sig: int) -> None:
        raise PermissionError

    monkeypatch.setattr(os, "kill", eperm)
    assert _owner_alive("h:1:x", host)


# -- an outcome that claims the next entry in the same transaction ------------------------


def test_ack_follow_channel_claims_the_channels_next_entry(outbox: Outbox) -> None:
    a1, b1, a2 = put(outbox, "a", "1"), put(outbox, "b", "1"), put(outbox, "a", "2")
    (claimed,), _ = outbox.claim(1)
    assert claimed.id == a1.id
    following = outbox.ack(claimed, message_json("m1"), follow="channel")
    assert following is not None and (following.id, following.status) == (a2.id, "sending")
    assert (following.attempts, following.lease_owner) == (1, outbox.owner)
    assert following.operation.body["text"] == "2"
    assert following == outbox.get(a2.id)  # what the file holds, without a read back
    assert outbox.get(a1.id).status == "sent"  # type: ignore[union-attr]
    assert outbox.get(b1.id).status == "queued"  # type: ignore[union-attr]
    assert outbox.ack(following, message_json("m2"), follow="channel") is None  # a is empty
    assert outbox.ack(following, message_json("m2")) is None  # no follow: nothing claimed


def test_follow_channel_leaves_what_is_not_due_to_the_loop(
    outbox: Outbox, clock: FakeClock
) -> None:
    # A next entry that is not due yet (a backoff, say) waits for the loop.
    put(outbox, "a", "1")
    (a1,), _ = outbox.claim(1)
    later = put(outbox, "a", "2")
    raw(outbox, "UPDATE entries SET next_attempt_at = ? WHERE id = ?", (T0 + 60, later.id))
    assert outbox.ack(a1, message_json(), follow="channel") is None
    assert outbox.claim(5) == ([], T0 + 60)
    # Another process's live lease on the next entry: not ours to take.
    c1 = put(outbox, "c", "1")
    (claimed,), _ = outbox.claim(1)
    assert claimed.id == c1.id
    put(outbox, "c", "2")
    raw(
        outbox,
        "UPDATE entries SET status='sending', lease_owner='otherhost:1:x', lease_expires_at=?"
        " WHERE channel = 'c' AND status = 'queued'",
        (clock.now + 30,),
    )
    assert outbox.ack(claimed, message_json(), follow="channel") is None


def test_follow_channel_leaves_an_entry_to_expire_to_the_loop(
    outbox: Outbox, clock: FakeClock
) -> None:
    put(outbox, "a", "1")
    (a1,), _ = outbox.claim(1)
    old = put(outbox, "a", "2")
    raw(outbox, "UPDATE entries SET created_at = ? WHERE id = ?", (T0 - 3600, old.id))
    assert outbox.ack(a1, message_json(), follow="channel") is None
    assert outbox.claim(5) == ([], None)  # the loop's claim expires it
    assert outbox.get(old.id).status == "expired"  # type: ignore[union-attr]


def test_follow_any_takes_the_most_overdue_head(outbox: Outbox, clock: FakeClock) -> None:
    a1 = put(outbox, "a", "1")
    clock.advance(1)
    b1, a2 = put(outbox, "b", "1"), put(outbox, "a", "2")
    (claimed,), _ = outbox.claim(1)
    assert claimed.id == a1.id
    following = outbox.ack(claimed, message_json(), follow="any")
    assert following is not None and following.id == b1.id  # due before a2: b's turn
    following = outbox.ack(following, message_json(), follow="any")
    assert following is not None and following.id == a2.id
    assert outbox.ack(following, message_json(), follow="any") is None


def test_fail_follow_moves_the_channel_on_in_one_transaction(outbox: Outbox) -> None:
    poison, after = put(outbox, "a", "1"), put(outbox, "a", "2")
    (claimed,), _ = outbox.claim(1)
    following = outbox.fail(claimed, BadRequestError(400, None, "bad"), follow="channel")
    assert following is not None and following.id == after.id
    assert outbox.get(poison.id).status == "failed"  # type: ignore[union-attr]
    # A fenced-off outcome (the claim was taken over) claims nothing after it either.
    raw(outbox, "UPDATE entries SET lease_token = 'taken-over' WHERE id = ?", (after.id,))
    assert outbox.fail(following, BadRequestError(400, None, "x"), follow="channel") is None
    assert outbox.get(after.id).status == "sending"  # type: ignore[union-attr]


def test_has_pending(outbox: Outbox) -> None:
    assert not outbox.has_pending()
    put(outbox)
    assert outbox.has_pending()
    (claimed,), _ = outbox.claim(1)
    assert outbox.has_pending()
    outbox.ack(claimed, message_json())
    assert not outbox.has_pending()


def test_idle_waiters_sleep_through_outcomes_that_claimed_more(outbox: Outbox) -> None:
    db = outbox._signals
    put(outbox, "a", "1"), put(outbox, "a", "2")
    (claimed,), _ = outbox.claim(1)
    changes, settles = db.generation, db.settled_generation
    following = outbox.ack(claimed, message_json(), follow="channel")
    assert following is not None  # work remains: only entry waiters are woken
    assert (db.generation, db.settled_generation) == (changes + 1, settles)
    db.wait_changed(settles, 0.0, settled=True)  # nothing to wait for: returns at once
    db.wait_changed(changes, 0.0)
    assert outbox.ack(following, message_json(), follow="channel") is None
    assert (db.generation, db.settled_generation) == (changes + 2, settles + 1)


def test_waiters_wake_on_a_change_after_their_read(outbox: Outbox) -> None:
    """A signal between a waiter's read of the file and its wait ends the wait at once."""
    db = outbox._signals
    seen, settled_seen = db.generation, db.settled_generation
    db.signal()
    db.wait_changed(seen, 60.0)  # would block a minute had the signal been missed
    db.wait_changed(settled_seen, 60.0, settled=True)


# -- outcomes ----------------------------------------------------------------------------


def test_ack_stores_response_and_wait_returns_message(outbox: Outbox) -> None:
    entry = put(outbox)
    (claimed,), _ = outbox.claim(1)
    outbox.ack(claimed, message_json("m7"))
    done = outbox.get(entry.id)
    assert done is not None and done.status == "sent" and done.lease_owner is None
    message = entry.wait(0)
    assert isinstance(message, Message) and message.id == "m7"
    outbox.ack(claimed, message_json("m8"))  # a second ack changes nothing
    assert entry.wait(0).id == "m7"


def test_reaction_entry_wait_returns_reaction(outbox: Outbox) -> None:
    entry = outbox.enqueue("reaction", "reaction/m1", {"messageId": "m1", "reaction": "+1"})
    (claimed,), _ = outbox.claim(1)
    reaction = {
        "messageId": "m1",
        "reaction": "+1",
        "userId": "u",
        "createdAt": "2024-01-01T00:00:00Z",
    }
    outbox.ack(claimed, reaction)
    assert isinstance(entry.wait(1), Reaction)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (BadRequestError(400, "invalid_request", "text: bad"), BadRequestError),
        (NotFoundError(404, "not_found", "no parent"), NotFoundError),
        (IdempotencyKeyReusedError(422, "idempotency_key_reused", "x"), IdempotencyKeyReusedError),
        (APIError(418, None, "teapot"), APIError),
        (ServerError(599, None, "odd"), ServerError),
    ],
)
def test_failed_entry_wait_raises_rebuilt_api_error(
    outbox: Outbox, error: APIError, expected: type[APIError]
) -> None:
    entry = put(outbox)
    (claimed,), _ = outbox.claim(1)
    outbox.fail(claimed, error)
    with pytest.raises(expected) as info:
        entry.wait(0)
    exc = info.value
    assert type(exc) is expected
    assert (exc.status, exc.code, exc.message) == (error.status, error.code, error.message)
    assert exc.attempts == 1 and exc.idempotency_key == entry.idempotency_key
    assert outbox.get(entry.id).last_error == describe_error(error_record(error))  # type: ignore[union-attr]


def test_max_attempts_fails_possibly_delivered(
    make_outbox: Callable[..., Outbox], clock: FakeClock
) -> None:
    with make_outbox(max_attempts=2) as box:
        entry = put(box)
        (c1,), _ = box.claim(1)
        box.reschedule(c1, ConnectError("reset"), 0.0)
        (c2,), _ = box.claim(1)
        box.reschedule(c2, ConnectError("reset again"), 0.0)
        done = box.get(entry.id)
        assert done is not None
        assert (done.status, done.possibly_delivered, done.attempts) == ("failed", True, 2)
        assert done.last_error == "ConnectError: reset again"
        with pytest.raises(OutboxError, match="reset again") as info:
            entry.wait(0)
        assert type(info.value) is OutboxError
        # Possibly delivered: retry keeps the key so the server can deduplicate.
        again = box.retry(entry.id)
        assert (again.status, again.idempotency_key, again.attempts) == (
            "queued",
            entry.idempotency_key,
            0,
        )


def test_release_does_not_count_the_attempt(outbox: Outbox) -> None:
    entry = put(outbox)
    (claimed,), _ = outbox.claim(1)
    outbox.release(claimed)
    again = outbox.get(entry.id)
    assert again is not None and (again.status, again.attempts) == ("queued", 0)


def test_expedite_skips_server_requested_delays(outbox: Outbox, clock: FakeClock) -> None:
    put(outbox, "a"), put(outbox, "b")
    (ca, cb), _ = outbox.claim(2)
    outbox.reschedule(ca, ConnectError("refused"), 60.0)
    limited = RateLimitedError(429, "rate_limited", "slow down")
    outbox.reschedule(cb, limited, 60.0, retry_after=60.0)
    assert outbox.expedite() == 1
    claimed, next_due = outbox.claim(5)
    assert [e.id for e in claimed] == [ca.id]
    assert next_due == T0 + 60.0


# -- expiry and retention ----------------------------------------------------------------


def test_expiry_marks_and_flags_possibly_delivered(outbox: Outbox, clock: FakeClock) -> None:
    tried, untried = put(outbox, "a"), put(outbox, "b")
    (claimed,), _ = outbox.claim(1)
    outbox.reschedule(claimed, ConnectError("x"), 0.0)
    clock.advance(3600)
    assert outbox._store.expired_count() == 0
    assert outbox.claim(5) == ([], None)  # both heads too old: expired, not sent
    assert outbox._store.expired_count() == 2 == outbox.stats().expired
    states = {e.id: (e.status, e.possibly_delivered) for e in outbox.entries()}
    assert states == {tried.id: ("expired", True), untried.id: ("expired", False)}
    with pytest.raises(OutboxEntryExpiredError, match="possibly delivered"):
        tried.wait(0)
    with pytest.raises(OutboxEntryExpiredError) as info:
        untried.wait(0)
    assert "possibly" not in str(info.value)
    with pytest.raises(OutboxError, match="cannot retry"):
        outbox.retry(tried.id)
    fresh = outbox.retry(untried.id)
    assert fresh.status == "queued" and fresh.idempotency_key != untried.idempotency_key
    assert fresh.created_at == clock.now


def test_a_claim_expires_through_heads_and_leaves_the_rest_to_the_sweep(
    outbox: Outbox, clock: FakeClock
) -> None:
    # Expiring scans the pending entries, so a claim does it only when a head is too old;
    # an older entry behind a fresh head (a retried entry keeps its place) waits for
    # expire(), the drainer's periodic sweep.
    first, behind = put(outbox, "a", "1"), put(outbox, "a", "2")
    (claimed,), _ = outbox.claim(1)
    outbox.fail(claimed, BadRequestError(400, None, "bad"))
    clock.advance(1800)
    outbox.retry(first.id)  # queued again, created now, still channel a's head
    clock.advance(1800)  # behind is 3600 s old (max_age), first 1800 s
    (head,), _ = outbox.claim(5)
    assert head.id == first.id
    assert outbox.get(behind.id).status == "queued"  # type: ignore[union-attr]
    assert outbox.expire() == 1
    assert outbox.get(behind.id).status == "expired"  # type: ignore[union-attr]


def test_expire_spares_live_claims_and_prunes_old_sent(
    make_outbox: Callable[..., Outbox], clock: FakeClock
) -> None:
    with make_outbox(max_age=100.0, sent_retention=50.0) as box:
        done, flying = put(box, "a"), put(box, "b")
        claims, _ = box.claim(2)
        box.ack(claims[0], message_json())
        assert box.expire() == 0
        clock.advance(60)
        assert box.expire() == 0
        assert box.get(done.id) is None  # sent 60 s ago, retention 50 s: pruned
        clock.advance(50)  # 110 s old, but its lease (30 s) ran out at 30 s: expire
        assert box.expire() == 1
        assert box.get(flying.id).status == "expired"  # type: ignore[union-attr]
        with pytest.raises(OutboxError, match="not in the outbox"):
            done.wait(0)


def test_expire_keeps_entries_in_flight_under_live_lease(
    make_outbox: Callable[..., Outbox], clock: FakeClock
) -> None:
    with make_outbox(max_age=10.0, lease_seconds=100.0) as box:
        entry = put(box)
        box.claim(1)
        clock.advance(20)
        assert box.expire() == 0
        assert box.stats().sending == 1
        assert box.get(entry.id).status == "sending"  # type: ignore[union-attr]


# -- retry and purge ---------------------------------------------------------------------


def test_retry_rules(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="no outbox entry"):
        outbox.retry(42)
    entry = put(outbox)
    with pytest.raises(OutboxError, match="queued"):
        outbox.retry(entry.id)
    (claimed,), _ = outbox.claim(1)
    outbox.fail(claimed, BadRequestError(400, "invalid_request", "x"))
    calls: list[int] = []
    outbox.add_listener(lambda: calls.append(1))
    again = outbox.retry(entry.id)
    assert again.id == entry.id and again.idempotency_key != entry.idempotency_key
    assert (again.status, again.attempts, again.last_error) == ("queued", 0, None)
    assert calls == [1]


def test_purge(outbox: Outbox) -> None:
    put(outbox, "a"), put(outbox, "b"), put(outbox, "c")
    (a, b, _c), _ = outbox.claim(3)
    outbox.ack(a, message_json())
    outbox.fail(b, BadRequestError(400, None, "x"))
    assert outbox.purge("failed") == 1
    assert outbox.purge() == 1
    assert outbox.purge(["sent", "expired"]) == 0
    assert outbox.stats().sending == 1
    for bad in ("queued", ["sent", "sending"], []):
        with pytest.raises(ValueError, match="purge"):
            outbox.purge(bad)


# -- waiting ------------------------------------------------------------------------------


def test_wait_times_out_and_wakes_on_outcome(outbox: Outbox) -> None:
    entry = put(outbox)
    with pytest.raises(WaitTimeoutError, match="still queued"):
        entry.wait(0.01)
    (claimed,), _ = outbox.claim(1)
    ready = threading.Event()

    def finish() -> None:
        ready.wait(5)
        outbox.ack(claimed, message_json("late"))

    thread = threading.Thread(target=finish)
    thread.start()
    ready.set()
    assert entry.wait(None).id == "late"
    thread.join()


def test_wait_idle(outbox: Outbox) -> None:
    assert outbox.wait_idle(0)
    put(outbox)
    assert not outbox.wait_idle(0.01)
    assert not outbox.wait_idle(None, give_up=lambda: True)
    (claimed,), _ = outbox.claim(1)
    thread = threading.Thread(target=outbox.ack, args=(claimed, message_json()))
    thread.start()
    assert outbox.wait_idle(None)
    thread.join()
    outbox.signal()


def test_result_of_unfinished_entry_is_an_error(outbox: Outbox) -> None:
    entry = put(outbox)
    with pytest.raises(OutboxError, match="not finished"):
        entry.result()


# -- stored errors -----------------------------------------------------------------------


def test_error_records() -> None:
    plain = error_record(ConnectError("boom"), retry_after=3.0)
    assert plain == {"type": "ConnectError", "message": "boom", "retry_after": 3.0}
    assert describe_error(plain) == "ConnectError: boom"
    api = error_record(BadRequestError(400, "invalid_request", "text", body={"error": {}}))
    assert api["body"] == {"error": {}} and describe_error(api) == "HTTP 400 invalid_request: text"
    bare = error_record(ServerError(502, None, "proxy page", body="<html>"))
    assert "body" not in bare and describe_error(bare) == "HTTP 502: proxy page"
    json.dumps([plain, api, bare])
