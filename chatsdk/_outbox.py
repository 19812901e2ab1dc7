"""The SQLite offline outbox: a durable, multi-process queue of create operations.

An entry holds one operation (kind, wire body, idempotency key, channel), never a base URL
or an API key: the client that drains it decides where it goes. Entries move through::

    queued --claim--> sending --ack--> sent
      ^                  |  \\--fail--> failed      (permanent error, or max_attempts)
      +---reschedule-----+   \\--expire-> expired   (older than max_age)

Claims are atomic across processes (``BEGIN IMMEDIATE``) and carry a lease (owner, wall-clock
expiry): an entry whose owner died is taken over when the lease runs out, or at once when
the owner was a process on this host that no longer exists, and resent with the same key.
A channel's next entry is never claimable before the previous one left ``queued``/``sending``.
The background delivery loop lives in :mod:`chatsdk._drainer`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from chatsdk._exceptions import OutboxError, WaitTimeoutError
from chatsdk._models import Message, Reaction
from chatsdk._outbox_db import Database, Durability
from chatsdk._outbox_models import (
    COLUMNS,
    Kind,
    Operation,
    OutboxEntry,
    OutboxStats,
    describe_error,
    entry_from_row,
    error_record,
)

__all__ = ["Durability", "Operation", "Outbox", "OutboxEntry", "OutboxStats"]

log = logging.getLogger(__name__)


STATUSES = ("queued", "sending", "sent", "failed", "expired")
TERMINAL = ("sent", "failed", "expired")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_POLL = 1.0  # at most this long between looks at the file for other processes' work
_PENDING = "status IN ('queued', 'sending')"  # the partial index's condition, verbatim

# Positions in a row of COLUMNS, for the claim's hot loop.
_STATUS, _ATTEMPTS, _CREATED, _NEXT_AT, _OWNER, _LEASE_EXPIRES = 5, 6, 7, 8, 9, 10
assert [c.strip() for c in COLUMNS.split(",")][5:11] == [
    "status",
    "attempts",
    "created_at",
    "next_attempt_at",
    "lease_owner",
    "lease_expires_at",
]

# Every statement is built from the constants here; values always go in as parameters.
_INSERT = (
    "INSERT INTO entries (kind, channel, idempotency_key, body, created_at, next_attempt_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT = f"SELECT {COLUMNS} FROM entries"  # noqa: S608
_BY_ID = f"{_SELECT} WHERE id = ?"
_BY_KEY = f"{_SELECT} WHERE idempotency_key = ?"
_COUNT_PENDING = f"SELECT count(*) FROM entries WHERE {_PENDING}"  # noqa: S608
_OLDEST_PENDING = f"SELECT min(created_at) FROM entries WHERE {_PENDING}"  # noqa: S608
# Each channel's head (its oldest pending entry): a recursive walk over the distinct
# channels of the partial index, so a claim costs O(channels * log n), not O(pending).
_HEADS = f"""
WITH RECURSIVE chans(c) AS (
    SELECT (SELECT min(channel) FROM entries WHERE {_PENDING})
    UNION ALL
    SELECT (SELECT min(channel) FROM entries WHERE {_PENDING} AND channel > chans.c)
    FROM chans WHERE chans.c IS NOT NULL
)
SELECT {", ".join("e." + c.strip() for c in COLUMNS.split(","))}
FROM chans JOIN entries e ON e.id = (
    SELECT id FROM entries WHERE {_PENDING} AND channel = chans.c ORDER BY id LIMIT 1)
ORDER BY e.next_attempt_at, e.id
"""  # noqa: S608
_CLAIM = (
    "UPDATE entries SET status = 'sending', attempts = attempts + 1, lease_owner = ?,"
    " lease_expires_at = ? WHERE id = ?"
)
_ACK = (
    "UPDATE entries SET status = 'sent', finished_at = ?, response = ?, lease_owner = NULL,"
    " lease_expires_at = NULL WHERE id = ? AND status != 'sent'"
)
# Outcomes apply only while the claim is still ours (the WHERE of the next three: a
# takeover bumps attempts); see _fence().
_RESCHEDULE = (
    "UPDATE entries SET status = 'queued', next_attempt_at = ?, lease_owner = NULL,"
    " lease_expires_at = NULL, last_error = ?, error = ?"
    " WHERE id = ? AND status = 'sending' AND lease_owner = ? AND attempts = ?"
)
_FINISH = (
    "UPDATE entries SET status = ?, finished_at = ?, lease_owner = NULL,"
    " lease_expires_at = NULL, last_error = ?, error = ?, possibly_delivered = ?"
    " WHERE id = ? AND status = 'sending' AND lease_owner = ? AND attempts = ?"
)
_RELEASE = (
    "UPDATE entries SET status = 'queued', attempts = attempts - 1, lease_owner = NULL,"
    " lease_expires_at = NULL"
    " WHERE id = ? AND status = 'sending' AND lease_owner = ? AND attempts = ?"
)
_REQUEUE = (
    "UPDATE entries SET status = 'queued', idempotency_key = ?, attempts = 0, created_at = ?,"
    " next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL, finished_at = NULL,"
    " last_error = NULL, error = NULL, possibly_delivered = 0 WHERE id = ?"
)
_EXPEDITE = f"""
UPDATE entries SET next_attempt_at = ? WHERE {_PENDING} AND status = 'queued'
AND next_attempt_at > ? AND json_extract(error, '$.retry_after') IS NULL
"""  # noqa: S608
_EXPIRE = f"""
UPDATE entries SET status = 'expired', finished_at = ?, lease_owner = NULL,
    lease_expires_at = NULL, possibly_delivered = (attempts > 0), last_error = ?, error = ?
WHERE {_PENDING} AND created_at <= ? AND NOT (status = 'sending' AND lease_expires_at > ?)
"""  # noqa: S608
_PRUNE_SENT = "DELETE FROM entries WHERE status = 'sent' AND finished_at <= ?"


def _owner_alive(owner: str | None, host: str) -> bool:
    """False only when ``owner`` was a process on this host that no longer exists."""
    parts = (owner or "").split(":")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


class Outbox:
    """A durable outbox in one SQLite file, shared safely by threads and processes.

    Args:
        path: the database file; created (mode 0600, with its ``-wal``/``-shm``) if missing.
        durability: ``"normal"`` survives a process crash (``synchronous=NORMAL``);
            ``"full"`` also survives power loss (``synchronous=FULL``).
        lease_seconds: how long a claim stays exclusive before another process may take over.
        max_attempts: deliveries before a transiently failing entry is ``failed``; ``None``
            retries until ``max_age``.
        max_age: seconds after which an undelivered entry becomes ``expired`` (default 23 h,
            under the server's 24 h idempotency-key retention).
        sent_retention: seconds a ``sent`` entry is kept (for ``wait()``) before pruning.
        clock: wall clock for timestamps and leases (shared between processes).

    Raises:
        OutboxCorruptError: the file is corrupt or not an outbox; it was moved aside.
        OutboxError: the file was written by a newer chatsdk, or cannot be opened.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "normal",
        lease_seconds: float = 30.0,
        max_attempts: int | None = None,
        max_age: float = 82800.0,
        sent_retention: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        if not lease_seconds > 0 or not max_age > 0 or not sent_retention >= 0:
            raise ValueError("lease_seconds and max_age must be > 0, sent_retention >= 0")
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise ValueError(f"max_attempts must be an int >= 1 or None, got {max_attempts!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.durability: Durability = durability
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = max_attempts
        self.max_age = float(max_age)
        self.sent_retention = float(sent_retention)
        self._clock = clock
        self._listeners: list[Callable[[], None]] = []
        self._db = Database(self.path, durability)
        self._run = self._db.run

    @property
    def owner(self) -> str:
        """This process's lease owner id (``host:pid:random``; a forked child gets a new one)."""
        return self._db.owner

    # -- public API ------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each entry this process queues or re-queues."""
        self._listeners.append(callback)

    def enqueue(
        self,
        kind: Kind,
        channel: str,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> OutboxEntry[Any]:
        """Store one operation durably; returns after the commit.

        A key already in the outbox with the same kind and body returns that entry, so a
        rerun that queues under deterministic keys queues nothing twice.

        Raises:
            ValueError: ``kind`` is unknown, or the key is in use for a different operation.
            OutboxError: the file cannot be written.
        """
        if kind not in ("message", "reaction"):
            raise ValueError(f"kind must be 'message' or 'reaction', got {kind!r}")
        key = idempotency_key or str(uuid.uuid4())
        text = _ENCODER.encode(body)
        now = self._clock()

        def insert(conn: sqlite3.Connection) -> OutboxEntry[Any]:
            try:
                row_id = conn.execute(_INSERT, (kind, channel, key, text, now, now)).lastrowid
            except sqlite3.IntegrityError:
                row = conn.execute(_BY_KEY, (key,)).fetchone()
                if (row[1], row[2], row[4]) != (kind, channel, text):
                    raise ValueError(
                        f"idempotency key {key!r} is already used by outbox entry {row[0]} "
                        "for a different operation"
                    ) from None
                return entry_from_row(self, row)
            op = Operation(kind=kind, body=body, idempotency_key=key, channel=channel)
            return OutboxEntry(
                id=int(row_id or 0),
                idempotency_key=key,
                status="queued",
                attempts=0,
                last_error=None,
                operation=op,
                created_at=now,
                next_attempt_at=now,
                outbox=self,
            )

        entry = self._run(insert, write=False)  # one INSERT: SQLite's implicit transaction
        for listener in self._listeners:
            listener()
        return entry

    def get(self, entry_id: int) -> OutboxEntry[Any] | None:
        """The entry as the file has it now, or None when there is no such entry."""
        row = self._run(
            lambda c: c.execute(_BY_ID, (entry_id,)).fetchone(),
            write=False,
        )
        return None if row is None else entry_from_row(self, row)

    def entries(
        self, status: str | None = None, *, limit: int | None = None
    ) -> list[OutboxEntry[Any]]:
        """Entries oldest first, all or those with one ``status``."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        self.expire()
        sql = _SELECT
        args: tuple[Any, ...] = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        sql += " ORDER BY id LIMIT ?"
        args += (-1 if limit is None else limit,)
        rows = self._run(lambda c: c.execute(sql, args).fetchall(), write=False)
        return [entry_from_row(self, row) for row in rows]

    def stats(self) -> OutboxStats:
        """Counts per status and the oldest pending entry's age, after expiring old entries."""
        self.expire()

        def read(conn: sqlite3.Connection) -> tuple[list[Any], Any]:
            counts = conn.execute("SELECT status, count(*) FROM entries GROUP BY status")
            oldest = conn.execute(_OLDEST_PENDING)
            return counts.fetchall(), oldest.fetchone()[0]

        counts, oldest = self._run(read, write=False)
        known = {status: n for status, n in counts if status in STATUSES}
        age = None if oldest is None else max(0.0, self._clock() - oldest)
        return OutboxStats(**known, oldest_pending_age=age)

    def pending_count(self) -> int:
        """Entries ``queued`` or ``sending``, in every process."""
        return int(
            self._run(
                lambda c: c.execute(_COUNT_PENDING).fetchone()[0],
                write=False,
            )
        )

    def retry(self, entry_id: int) -> OutboxEntry[Any]:
        """Re-queue a ``failed`` entry (or an ``expired`` one never attempted).

        A permanent API error created nothing, so the entry gets a new idempotency key (the
        old one is bound to the rejected request); an entry that may have been delivered
        keeps its key, so the server can still deduplicate it. The entry keeps its id and
        therefore its place in its channel.

        Raises:
            OutboxError: no such entry, or it is not in a state that can be retried.
        """
        now = self._clock()

        def requeue(conn: sqlite3.Connection) -> OutboxEntry[Any]:
            entry = conn.execute(_BY_ID, (entry_id,)).fetchone()
            if entry is None:
                raise OutboxError(f"no outbox entry {entry_id}")
            old = entry_from_row(self, entry)
            if old.status not in ("failed", "expired") or (
                old.status == "expired" and old.possibly_delivered
            ):
                raise OutboxError(f"outbox entry {entry_id} is {old.status}; cannot retry it")
            rejected = old._error is not None and old._error.get("status") is not None
            key = (
                str(uuid.uuid4()) if rejected or not old.possibly_delivered else old.idempotency_key
            )
            conn.execute(_REQUEUE, (key, now, now, entry_id))
            return entry_from_row(self, conn.execute(_BY_ID, (entry_id,)).fetchone())

        entry = self._run(requeue)
        for listener in self._listeners:
            listener()
        return entry

    def purge(self, status: str | Iterable[str] = TERMINAL) -> int:
        """Delete finished entries (``sent``, ``failed``, ``expired``); returns how many.

        Raises:
            ValueError: a status is not a finished one (pending entries are never purged).
        """
        wanted = (status,) if isinstance(status, str) else tuple(status)
        bad = [s for s in wanted if s not in TERMINAL]
        if bad or not wanted:
            raise ValueError(f"purge takes statuses among {', '.join(TERMINAL)}; got {bad}")
        return self._run(
            lambda c: sum(
                c.execute("DELETE FROM entries WHERE status = ?", (s,)).rowcount for s in wanted
            )
        )

    def wait(self, entry_id: int, timeout: float | None = None) -> Message | Reaction:
        """Block until entry ``entry_id`` is finished; see :meth:`OutboxEntry.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._db.changed:
            while True:
                entry = self.get(entry_id)
                if entry is None:
                    raise OutboxError(f"outbox entry {entry_id} is no longer in the outbox")
                if entry.status in TERMINAL:
                    result: Message | Reaction = entry.result()
                    return result
                remaining = _POLL if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeoutError(
                        f"outbox entry {entry_id} still {entry.status} after {timeout}s"
                    )
                self._db.changed.wait(min(_POLL, remaining))

    def wait_idle(
        self, timeout: float | None = None, *, give_up: Callable[[], bool] | None = None
    ) -> bool:
        """Block until no entry is ``queued`` or ``sending`` (True), or ``timeout`` passes.

        ``give_up()``, checked at every wake-up, ends the wait early with False.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._db.changed:
            while self.pending_count():
                remaining = _POLL if deadline is None else deadline - time.monotonic()
                if remaining <= 0 or (give_up is not None and give_up()):
                    return False
                self._db.changed.wait(min(_POLL, remaining))
        return True

    def signal(self) -> None:
        """Wake this process's threads blocked in :meth:`wait` or :meth:`wait_idle`."""
        self._db.signal()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._db.closed

    def close(self) -> None:
        """Close the connection; later calls raise :class:`OutboxError`. Idempotent."""
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Outbox {self.path} durability={self.durability}>"

    # -- the drainer's side ----------------------------------------------------------------

    def claim(self, limit: int) -> tuple[list[OutboxEntry[Any]], float | None]:
        """Claim up to ``limit`` due channel heads for this process (``BEGIN IMMEDIATE``).

        Returns the claimed entries (now ``sending`` under this process's lease) and the
        wall-clock time the next unclaimed head becomes due (None when there is none).
        """
        owner = self.owner
        host = self._db.host

        def take(conn: sqlite3.Connection) -> tuple[list[OutboxEntry[Any]], float | None]:
            now = self._clock()
            # Raw rows: only the heads actually claimed are decoded into entries.
            heads = conn.execute(_HEADS).fetchall()
            if any(row[_CREATED] <= now - self.max_age for row in heads):
                self._expire(conn, now)
                heads = conn.execute(_HEADS).fetchall()
            claimed: list[OutboxEntry[Any]] = []
            next_due: float | None = None
            for row in heads:
                if row[_STATUS] == "queued":
                    due = row[_NEXT_AT]
                elif row[_OWNER] == owner:
                    continue  # ours, in flight
                elif _owner_alive(row[_OWNER], host):
                    due = row[_LEASE_EXPIRES] or 0.0
                else:
                    due = now
                if due <= now and len(claimed) < limit:
                    expires = now + self.lease_seconds
                    conn.execute(_CLAIM, (owner, expires, row[0]))
                    row = list(row)  # noqa: PLW2901
                    row[_STATUS], row[_ATTEMPTS] = "sending", row[_ATTEMPTS] + 1
                    row[_OWNER], row[_LEASE_EXPIRES] = owner, expires
                    claimed.append(entry_from_row(self, tuple(row)))
                elif next_due is None or due < next_due:
                    next_due = due
            return claimed, next_due

        return self._run(take)

    def ack(self, entry: OutboxEntry[Any], response: dict[str, Any]) -> None:
        """Record a delivery: the entry is ``sent`` with the server's response."""
        now = self._clock()
        self._run(lambda c: c.execute(_ACK, (now, _ENCODER.encode(response), entry.id)))
        self._db.signal()

    def fail(self, entry: OutboxEntry[Any], error: BaseException) -> None:
        """Record a permanent error: the entry is ``failed`` (dead letter); the channel moves on."""
        record = error_record(error)
        self._finish(entry, "failed", record, possibly_delivered=False)

    def reschedule(
        self,
        entry: OutboxEntry[Any],
        error: BaseException,
        delay: float,
        *,
        retry_after: float | None = None,
    ) -> None:
        """Record a transient error: ``queued`` again after ``delay`` seconds.

        After ``max_attempts`` deliveries the entry is ``failed`` instead, marked possibly
        delivered (a lost response may hide a success).
        """
        record = error_record(error, retry_after=retry_after)
        if self.max_attempts is not None and entry.attempts >= self.max_attempts:
            self._finish(entry, "failed", record, possibly_delivered=True)
            return
        when = self._clock() + max(0.0, delay)
        self._run(
            lambda c: c.execute(
                _RESCHEDULE,
                (when, describe_error(record), json.dumps(record), *_fence(entry)),
            )
        )
        self._db.signal()

    def release(self, entry: OutboxEntry[Any]) -> None:
        """Give a claim back untouched (nothing was sent): ``queued``, attempt not counted."""
        self._run(lambda c: c.execute(_RELEASE, _fence(entry)))

    def expedite(self) -> int:
        """Make entries backing off after transport/server errors due now (the host is back).

        Delays the server asked for (``Retry-After``) are kept. Returns how many moved.
        """
        now = self._clock()
        return self._run(lambda c: c.execute(_EXPEDITE, (now, now)).rowcount)

    def expire(self) -> int:
        """Mark entries older than ``max_age`` ``expired``; prune old ``sent`` entries."""
        count = self._run(lambda c: self._expire(c, self._clock()))
        if count:
            self._db.signal()
        return count

    def _expire(self, conn: sqlite3.Connection, now: float) -> int:
        record = {"type": "OutboxEntryExpiredError", "message": f"max_age {self.max_age:g}s"}
        text = f"expired undelivered after max_age {self.max_age:g}s"
        count = conn.execute(
            _EXPIRE, (now, text, json.dumps(record), now - self.max_age, now)
        ).rowcount
        if count:
            log.warning("outbox %s: %d entries expired undelivered", self.path, count)
        conn.execute(_PRUNE_SENT, (now - self.sent_retention,))
        return int(count)

    def _finish(
        self,
        entry: OutboxEntry[Any],
        status: str,
        record: dict[str, Any],
        *,
        possibly_delivered: bool,
    ) -> None:
        now = self._clock()
        self._run(
            lambda c: c.execute(
                _FINISH,
                (
                    status,
                    now,
                    describe_error(record),
                    json.dumps(record),
                    possibly_delivered,
                    *_fence(entry),
                ),
            )
        )
        self._db.signal()


def _fence(entry: OutboxEntry[Any]) -> tuple[Any, ...]:
    """The parameters of the claim-still-ours condition, for a claimed entry."""
    return (entry.id, entry.lease_owner, entry.attempts)
