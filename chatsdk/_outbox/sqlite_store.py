"""The SQLite outbox store: the entries of one host in one file (see :mod:`.store`).

Claims are atomic across processes (``BEGIN IMMEDIATE``). A head whose lease ran out is
taken over, and at once when its owner was a process on this host that no longer exists.
The file itself (opening, migrations, corruption, busy waits, fork safety) is
:mod:`chatsdk._outbox.sqlite`'s; the statements are :mod:`chatsdk._outbox.sql`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from chatsdk._outbox import sql
from chatsdk._outbox.models import describe_error, row_problem
from chatsdk._outbox.sqlite import Database, Durability
from chatsdk._outbox.store import PROBE_MIN, PROBE_PER_CLAIM, Follow, Row, expiry_error

__all__ = ["CAN_PROBE_PIDS", "SQLiteStore", "owner_alive"]

log = logging.getLogger(__name__)
#: ``os.kill(pid, 0)`` is a liveness probe on POSIX only (on Windows it would end the
#: process): elsewhere another process's claim is taken over when its lease runs out.
CAN_PROBE_PIDS = os.name != "nt"


def owner_alive(owner: str | None, host: str) -> bool:
    """False only when ``owner`` was a process on this host that no longer exists."""
    parts = (owner or "").split(":")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or not CAN_PROBE_PIDS:
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


class SQLiteStore:
    """The outbox's entries in one SQLite file, shared by this host's processes."""

    backend = "sqlite"
    poll_interval = 1.0  # no cross-process wake-ups: look at the file this often

    def __init__(
        self,
        path: str,
        *,
        durability: Durability = "normal",
        lease_seconds: float = 30.0,
        max_age: float = 82800.0,
        sent_retention: float = 3600.0,
    ) -> None:
        self._db = Database(path, durability)
        self._run = self._db.run
        self.target = self.path = self._db.path
        self.host = self._db.host
        self.signals = self._db
        self.lease_seconds, self.max_age = lease_seconds, max_age
        self.sent_retention = sent_retention
        self._pid = -1
        self._held_lock = threading.Lock()
        self._held: set[str] = set()

    @property
    def owner(self) -> str:
        return self._db.owner

    @property
    def held(self) -> set[str]:
        """Lease tokens of this process's claims in flight (forgotten in a forked child)."""
        if self._pid != os.getpid():
            self._pid, self._held_lock, self._held = os.getpid(), threading.Lock(), set()
        return self._held

    @property
    def closed(self) -> bool:
        return self._db.closed

    def close(self) -> None:
        self._db.close()

    def on_wake(self, callback: Callable[[], None]) -> None:
        """Nothing to do: another process's work is found by looking (``poll_interval``)."""

    def off_wake(self, callback: Callable[[], None]) -> None:
        """Nothing to do (see :meth:`on_wake`)."""

    def watch(self) -> None:
        """Nothing to do (see :meth:`on_wake`)."""

    def on_commit(self, callback: Callable[[], None], connection: Any) -> None:
        """:meth:`insert` commits (it takes no caller's connection): ``callback()`` now."""
        callback()

    def drainer_thread(self) -> AbstractContextManager[None]:
        """Nothing to set up: the file's connection is this store's own."""
        return contextlib.nullcontext()

    # -- entries ---------------------------------------------------------------------------

    def insert(
        self,
        kind: str,
        channel: str,
        key: str,
        body: str,
        now: float,
        trace_context: str | None = None,
        *,
        connection: Any = None,
    ) -> tuple[Row | None, int]:
        if connection is not None:
            raise TypeError(
                "connection= (enqueue in the caller's transaction) needs a PostgreSQL "
                "outbox (postgresql://...); this one is a SQLite file"
            )
        values = (kind, channel, key, body, now, now, self.owner, trace_context)

        def insert(conn: sqlite3.Connection) -> tuple[Row | None, int]:
            try:
                return None, int(conn.execute(sql.INSERT, values).lastrowid or 0)
            except sqlite3.IntegrityError:
                row = conn.execute(sql.BY_KEY, (key,)).fetchone()
                return row, int(row[0])

        return self._run(insert, write=False)  # one INSERT: SQLite's implicit transaction

    def get(self, entry_id: int) -> Row | None:
        row: Row | None = self._run(
            lambda c: c.execute(sql.BY_ID, (entry_id,)).fetchone(), write=False
        )
        return row

    def rows(self, status: str | None, limit: int | None) -> list[Row]:
        query, args = sql.SELECT, tuple[Any, ...]()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        query += " ORDER BY id LIMIT ?"
        args += (-1 if limit is None else limit,)
        return self._run(lambda c: c.execute(query, args).fetchall(), write=False)

    def counts(self) -> tuple[dict[str, int], float | None]:
        def read(conn: sqlite3.Connection) -> tuple[dict[str, int], float | None]:
            counts = conn.execute("SELECT status, count(*) FROM entries GROUP BY status")
            oldest = conn.execute(sql.OLDEST_PENDING)
            return dict(counts.fetchall()), oldest.fetchone()[0]

        return self._run(read, write=False)

    def clock_offset(self, clock: Callable[[], float]) -> float | None:
        return None  # one machine's file: every process reads the same clock

    def has_pending(self) -> bool:
        return bool(self._run(lambda c: c.execute(sql.HAS_PENDING).fetchone()[0], write=False))

    def expired_count(self) -> int:
        return int(self._run(lambda c: c.execute(sql.COUNT_EXPIRED).fetchone()[0], write=False))

    def pending_count(self, origin: str | None = None, *, own: bool = False) -> int:
        query, args = (sql.COUNT_ORIGIN, (origin,)) if own else (sql.COUNT_PENDING, ())
        return int(self._run(lambda c: c.execute(query, args).fetchone()[0], write=False))

    def origins(self) -> list[str | None]:
        return [r[0] for r in self._run(lambda c: c.execute(sql.ORIGINS).fetchall(), write=False)]

    def adopt(self, origins: Iterable[str | None]) -> int:
        wanted = list(origins)
        return self._run(
            lambda c: sum(c.execute(sql.ADOPT, (self.owner, o)).rowcount for o in wanted)
        )

    # -- claims and outcomes ---------------------------------------------------------------

    def claim(self, limit: int, now: float) -> tuple[list[Row], float | None]:
        return self._run(lambda conn: self._take(conn, limit, now))

    def _take(
        self, conn: sqlite3.Connection, limit: int, now: float
    ) -> tuple[list[Row], float | None]:
        """:meth:`claim`'s work, inside the caller's ``BEGIN IMMEDIATE`` transaction.

        First the earliest due entries whatever their channel, of which the channel heads
        are claimed (most due entries are heads); when those are fewer than ``limit``,
        every channel's head is walked, which also tells when the next one is due.
        """
        held = self.held
        probe = PROBE_MIN + PROBE_PER_CLAIM * limit
        args = {"now": now, "oldest": now - self.max_age, "probe": probe}
        quick = [r for r in conn.execute(sql.QUICK_HEADS, args) if r[sql.TOKEN] not in held]
        if len(quick) >= limit:
            taken = (self._claim_row(conn, row, now) for row in quick[:limit])
            return [row for row in taken if row is not None], now  # more may be due at once
        # Raw rows: only the heads actually claimed are copied.
        heads = conn.execute(sql.HEADS).fetchall()
        if any(row[sql.CREATED] <= now - self.max_age for row in heads):
            self._expire(conn, now)
            heads = conn.execute(sql.HEADS).fetchall()
        claimed: list[Row] = []
        next_due: float | None = None
        for row in heads:
            if row[sql.STATUS] == "queued":
                due = row[sql.NEXT_AT]
            elif row[sql.TOKEN] in held:
                continue  # ours, in flight (its lease is renewed)
            elif row[sql.OWNER] == self.owner or owner_alive(row[sql.OWNER], self.host):
                due = row[sql.LEASE_EXPIRES] or 0.0
            else:
                due = now
            if due <= now and len(claimed) < limit:
                entry = self._claim_row(conn, row, now)
                if entry is not None:
                    claimed.append(entry)
            elif next_due is None or due < next_due:
                next_due = due
        return claimed, next_due

    def _claim_row(self, conn: sqlite3.Connection, row: Row, now: float) -> Row | None:
        """Claim the entry of ``row`` (a due head) for this process; returns it as claimed.

        A row that cannot be decoded becomes a dead letter with the reason (None is
        returned), so it never stops its channel nor the drainer.
        """
        problem = row_problem(row)
        if problem is not None:
            record = {"type": "OutboxError", "message": f"undecodable entry: {problem}"}
            conn.execute(sql.DEAD_LETTER, (now, describe_error(record), json.dumps(record), row[0]))
            log.error("outbox %s: entry %d is a dead letter: %s", self.path, row[0], problem)
            return None
        owner, expires, token = self.owner, now + self.lease_seconds, uuid.uuid4().hex
        conn.execute(sql.CLAIM, (owner, expires, token, row[0]))
        claimed = list(row)
        claimed[sql.STATUS], claimed[sql.ATTEMPTS] = "sending", row[sql.ATTEMPTS] + 1
        claimed[sql.OWNER], claimed[sql.LEASE_EXPIRES] = owner, expires
        claimed[sql.TOKEN] = token
        with self._held_lock:
            self.held.add(token)
        return tuple(claimed)

    def forget(self, token: str | None) -> None:
        with self._held_lock:
            self.held.discard(token or "")

    def renew(self, expires: float) -> int:
        with self._held_lock:
            tokens = list(self.held)
        if not tokens:
            return 0
        return self._run(
            lambda c: c.executemany(sql.RENEW, [(expires, t) for t in tokens]).rowcount
        )

    def _follow(
        self, conn: sqlite3.Connection, channel: str, follow: Follow, now: float
    ) -> Row | None:
        if follow == "any":
            claimed, _ = self._take(conn, 1, now)
            return claimed[0] if claimed else None
        if follow is None:
            return None
        row = conn.execute(sql.CHANNEL_HEAD, (channel,)).fetchone()
        # Only a queued, due, unexpired head: anything else (a backoff, another process's
        # lease, an entry to expire) is the loop's to sort out, as it is for every head.
        if (
            row is None
            or row[sql.STATUS] != "queued"
            or row[sql.NEXT_AT] > now
            or row[sql.CREATED] <= now - self.max_age
        ):
            return None
        return self._claim_row(conn, row, now)

    def _outcome(
        self, query: str, args: tuple[Any, ...], token: str | None, channel: str, now: float,
        follow: Follow,
    ) -> tuple[bool, Row | None]:  # fmt: skip
        def record(conn: sqlite3.Connection) -> tuple[bool, Row | None]:
            applied = conn.execute(query, args).rowcount > 0
            return applied, self._follow(conn, channel, follow, now)

        try:
            return self._run(record)
        finally:
            self.forget(token)

    def ack(
        self,
        entry_id: int,
        token: str | None,
        channel: str,
        response: str,
        now: float,
        follow: Follow,
    ) -> tuple[bool, Row | None]:
        args = (now, response, entry_id, token)
        return self._outcome(sql.ACK, args, token, channel, now, follow)

    def finish(
        self,
        entry_id: int,
        token: str | None,
        channel: str,
        status: str,
        error: tuple[str, str],
        possibly_delivered: bool,
        now: float,
        follow: Follow,
    ) -> tuple[bool, Row | None]:
        args = (status, now, *error, possibly_delivered, entry_id, token)
        return self._outcome(sql.FINISH, args, token, channel, now, follow)

    def reschedule(
        self, entry_id: int, token: str | None, when: float, error: tuple[str, str]
    ) -> bool:
        args = (when, *error, entry_id, token)
        try:
            return bool(self._run(lambda c: c.execute(sql.RESCHEDULE, args).rowcount))
        finally:
            self.forget(token)

    def release(self, entry_id: int, token: str | None) -> bool:
        try:
            return bool(self._run(lambda c: c.execute(sql.RELEASE, (entry_id, token)).rowcount))
        finally:
            self.forget(token)

    def requeue(self, entry_id: int, now: float, new_key: Callable[[Row | None], str]) -> Row:
        def requeue(conn: sqlite3.Connection) -> Row:
            key = new_key(conn.execute(sql.BY_ID, (entry_id,)).fetchone())
            conn.execute(sql.REQUEUE, (key, now, now, entry_id))
            row: Row = conn.execute(sql.BY_ID, (entry_id,)).fetchone()
            return row

        return self._run(requeue)

    def shift(self, entries: list[tuple[int, float, float]], step: float) -> list[int]:
        def shift(conn: sqlite3.Connection) -> list[int]:
            args = ((step, step, i, created, due) for i, created, due in entries)
            return [a[2] for a in args if conn.execute(sql.SHIFT, a).rowcount]

        return self._run(shift)

    def purge(self, statuses: tuple[str, ...]) -> int:
        return self._run(
            lambda c: sum(
                c.execute("DELETE FROM entries WHERE status = ?", (s,)).rowcount for s in statuses
            )
        )

    def expedite(self, now: float) -> int:
        return self._run(lambda c: c.execute(sql.EXPEDITE, (now, now)).rowcount)

    def expire(self, now: float) -> int:
        return self._run(lambda c: self._expire(c, now))

    def _expire(self, conn: sqlite3.Connection, now: float) -> int:
        error = expiry_error(self.max_age)
        count = conn.execute(sql.EXPIRE, (now, *error, now - self.max_age, now)).rowcount
        if count:
            log.warning("outbox %s: %d entries expired undelivered", self.path, count)
        conn.execute(sql.PRUNE_SENT, (now - self.sent_retention,))
        return int(count)
