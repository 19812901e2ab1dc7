"""The SQLite offline outbox: a durable, multi-process queue of create operations.

An entry holds one operation (kind, wire body, idempotency key, channel), never a base URL
or an API key: the client that drains it decides where it goes. Entries move through::

    queued --claim--> sending --ack--> sent
      ^                  |  \\--fail--> failed      (permanent error, or max_attempts)
      +---reschedule-----+   \\--expire-> expired   (older than max_age)

Claims are atomic across processes (``BEGIN IMMEDIATE``) and carry a lease (owner, wall-clock
expiry, a random token): an entry whose owner died is taken over when the lease runs out, or
at once when the owner was a process on this host that no longer exists, and resent with the
same key. The drainer renews the leases of the deliveries it has in flight
(:meth:`Outbox.renew_leases`), every outcome is fenced by the claim's token (a stale holder's
ack changes nothing), and a claim of this process that is no longer in flight here (its
outcome could not be written) is re-taken once its lease runs out.

Each entry remembers the process that queued it (its *origin*): :meth:`Outbox.wait_idle`
with ``own=True`` waits only for those, which is what ``ChatClient.close()`` does; the
entries of a process on this host that exited are adopted by the next one that looks
(:meth:`Outbox.adopt_orphans`).
A channel's next entry is never claimable before the previous one left ``queued``/``sending``.
The background delivery loop lives in :mod:`chatsdk._outbox.drainer`; the SQL statements in
:mod:`chatsdk._outbox.sql`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

from chatsdk import _fork, _instrument
from chatsdk._errors import OutboxError, WaitTimeoutError
from chatsdk._models import Message, Reaction
from chatsdk._outbox import sql
from chatsdk._outbox.models import (
    Kind,
    Operation,
    OutboxEntry,
    OutboxStats,
    describe_error,
    entry_from_row,
    error_record,
    row_problem,
)
from chatsdk._outbox.sqlite import Database, Durability

__all__ = ["Durability", "Follow", "Operation", "Outbox", "OutboxEntry", "OutboxStats"]

log = logging.getLogger(__name__)


STATUSES = ("queued", "sending", "sent", "failed", "expired")
TERMINAL = ("sent", "failed", "expired")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_POLL = 1.0  # at most this long between looks at the file for other processes' work
#: What :meth:`Outbox.ack` and :meth:`Outbox.fail` claim next in the same transaction:
#: ``"channel"``, the entry's channel's next entry when it is due; ``"any"``, the most
#: overdue channel head, as :meth:`Outbox.claim` picks them; None, nothing.
Follow = Literal["channel", "any"] | None
#: ``os.kill(pid, 0)`` is a liveness probe on POSIX only (on Windows it would end the
#: process): elsewhere another process's claim is taken over when its lease runs out.
CAN_PROBE_PIDS = os.name != "nt"


class _Drainer(Protocol):
    @property
    def status(self) -> str: ...


def _owner_alive(owner: str | None, host: str) -> bool:
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
        self._db = Database(self.path, durability)
        self._run = self._db.run
        self._listeners: list[Callable[[], None]] = []
        self._drainers: list[_Drainer] = []
        self._reset()
        _fork.register(
            self,
            order=_fork.ORDER_OUTBOX,
            before=Outbox._quiesce,
            after_parent=Outbox._resume,
            after_child=Outbox._reset,
        )

    def _quiesce(self) -> None:
        self._lock.acquire()

    def _resume(self) -> None:
        self._lock.release()

    def _reset(self) -> None:
        """Process state: at construction, and in a forked child (the claims were the parent's)."""
        self._lock = threading.Lock()
        self._held: set[str] = set()  # lease tokens of this process's deliveries in flight

    @property
    def owner(self) -> str:
        """This process's lease owner id (``host:pid:random``; a forked child gets a new one)."""
        return self._db.owner

    # -- public API ------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each entry this process queues or re-queues."""
        with self._lock:
            self._listeners = [*self._listeners, callback]

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (a closed client's drainer); unknown ones are ignored."""
        with self._lock:
            self._listeners = [c for c in self._listeners if c != callback]

    def attach(self, drainer: _Drainer) -> None:
        """Report ``drainer``'s :attr:`status` in :meth:`stats` (until :meth:`detach`)."""
        with self._lock:
            self._drainers = [*self._drainers, drainer]

    def detach(self, drainer: _Drainer) -> None:
        """Stop reporting ``drainer``."""
        with self._lock:
            self._drainers = [d for d in self._drainers if d is not drainer]

    def _notify(self) -> None:
        for listener in self._listeners:  # a snapshot: the list is replaced, never mutated
            listener()

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
        tracer = _instrument.tracer
        carrier = None if tracer is None else tracer.carrier()
        context = None if carrier is None else _ENCODER.encode(carrier)

        def insert(conn: sqlite3.Connection) -> OutboxEntry[Any]:
            values = (kind, channel, key, text, now, now, self.owner, context)
            try:
                row_id = conn.execute(sql.INSERT, values).lastrowid
            except sqlite3.IntegrityError:
                row = conn.execute(sql.BY_KEY, (key,)).fetchone()
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
                trace_context=carrier,
            )

        entry = self._run(insert, write=False)  # one INSERT: SQLite's implicit transaction
        self._notify()
        return entry

    def get(self, entry_id: int) -> OutboxEntry[Any] | None:
        """The entry as the file has it now, or None when there is no such entry."""
        row = self._run(
            lambda c: c.execute(sql.BY_ID, (entry_id,)).fetchone(),
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
        query = sql.SELECT
        args: tuple[Any, ...] = ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        query += " ORDER BY id LIMIT ?"
        args += (-1 if limit is None else limit,)
        rows = self._run(lambda c: c.execute(query, args).fetchall(), write=False)
        return [entry_from_row(self, row) for row in rows]

    def stats(self) -> OutboxStats:
        """Counts per status and the oldest pending entry's age, after expiring old entries."""
        self.expire()

        def read(conn: sqlite3.Connection) -> tuple[list[Any], Any]:
            counts = conn.execute("SELECT status, count(*) FROM entries GROUP BY status")
            oldest = conn.execute(sql.OLDEST_PENDING)
            return counts.fetchall(), oldest.fetchone()[0]

        counts, oldest = self._run(read, write=False)
        known = {status: n for status, n in counts if status in STATUSES}
        age = None if oldest is None else max(0.0, self._clock() - oldest)
        statuses = [d.status for d in self._drainers]
        drainer = next((s for s in statuses if s != "running"), "running" if statuses else None)
        return OutboxStats(**known, oldest_pending_age=age, drainer=drainer)

    def has_pending(self) -> bool:
        """True while an entry is ``queued`` or ``sending``, in any process (one index probe)."""
        return bool(self._run(lambda c: c.execute(sql.HAS_PENDING).fetchone()[0], write=False))

    def pending_count(self, *, own: bool = False) -> int:
        """Entries ``queued`` or ``sending``, in every process.

        With ``own``, only those this process queued (or adopted from a process that exited).
        """
        query, args = (sql.COUNT_ORIGIN, (self.owner,)) if own else (sql.COUNT_PENDING, ())
        return int(self._run(lambda c: c.execute(query, args).fetchone()[0], write=False))

    def adopt_orphans(self) -> int:
        """Make this process the origin of the pending entries of processes that exited.

        A process on this host that no longer exists (or an entry from before origins were
        recorded) left entries nobody waits for; after this, this process's ``close()``
        waits for them too. Returns how many entries were adopted.
        """

        def adopt(conn: sqlite3.Connection) -> int:
            origins = [row[0] for row in conn.execute(sql.ORIGINS).fetchall()]
            dead = [o for o in origins if o is None or not _owner_alive(o, self._db.host)]
            return sum(conn.execute(sql.ADOPT, (self.owner, o)).rowcount for o in dead)

        count = self._run(adopt)
        if count:
            log.info("outbox %s: adopted %d entries of processes that exited", self.path, count)
        return count

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
            entry = conn.execute(sql.BY_ID, (entry_id,)).fetchone()
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
            conn.execute(sql.REQUEUE, (key, now, now, entry_id))
            return entry_from_row(self, conn.execute(sql.BY_ID, (entry_id,)).fetchone())

        entry = self._run(requeue)
        self._notify()
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
        while True:
            seen = self._db.generation  # before the read: a change after it ends the wait
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
            self._db.wait_changed(seen, min(_POLL, remaining))

    def wait_idle(
        self,
        timeout: float | None = None,
        *,
        give_up: Callable[[], bool] | None = None,
        own: bool = False,
    ) -> bool:
        """Block until no entry is ``queued`` or ``sending`` (True), or ``timeout`` passes.

        ``give_up()``, checked at every wake-up, ends the wait early with False. With
        ``own``, only the entries this process queued count (see :meth:`pending_count`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Read before the query: a change after it ends the wait. Only changes that may
            # leave nothing pending wake this waiter, not every delivery of a busy drain.
            seen = self._db.settled_generation
            if not (self.pending_count(own=True) if own else self.has_pending()):
                return True
            remaining = _POLL if deadline is None else deadline - time.monotonic()
            if remaining <= 0 or (give_up is not None and give_up()):
                return False
            self._db.wait_changed(seen, min(_POLL, remaining), settled=True)

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
        return self._run(lambda conn: self._take(conn, limit, self._clock()))

    def _take(
        self, conn: sqlite3.Connection, limit: int, now: float
    ) -> tuple[list[OutboxEntry[Any]], float | None]:
        """:meth:`claim`'s work, inside the caller's ``BEGIN IMMEDIATE`` transaction."""
        owner = self.owner
        # Raw rows: only the heads actually claimed are decoded into entries.
        heads = conn.execute(sql.HEADS).fetchall()
        if any(row[sql.CREATED] <= now - self.max_age for row in heads):
            self._expire(conn, now)
            heads = conn.execute(sql.HEADS).fetchall()
        claimed: list[OutboxEntry[Any]] = []
        next_due: float | None = None
        for row in heads:
            if row[sql.STATUS] == "queued":
                due = row[sql.NEXT_AT]
            elif row[sql.TOKEN] in self._held:
                continue  # ours, in flight (its lease is renewed)
            elif row[sql.OWNER] == owner or _owner_alive(row[sql.OWNER], self._db.host):
                # Ours but no longer in flight here (its outcome could not be written), or
                # another live process's: taken over when the lease runs out.
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

    def _claim_row(
        self, conn: sqlite3.Connection, row: tuple[Any, ...], now: float
    ) -> OutboxEntry[Any] | None:
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
        with self._lock:
            self._held.add(token)
        return entry_from_row(self, tuple(claimed))

    def renew_leases(self) -> int:
        """Extend the lease of every delivery this process has in flight; returns how many."""
        with self._lock:
            tokens = list(self._held)
        if not tokens:
            return 0
        expires = self._clock() + self.lease_seconds
        return self._run(
            lambda c: c.executemany(sql.RENEW, [(expires, t) for t in tokens]).rowcount
        )

    def forget(self, entry: OutboxEntry[Any]) -> None:
        """``entry`` is no longer in flight here (its outcome is recorded, or cannot be).

        Its lease is no longer renewed; when no outcome was written the claim is re-taken,
        by this process or another, once the lease runs out.
        """
        with self._lock:
            self._held.discard(entry.lease_token or "")

    def _follow(
        self, conn: sqlite3.Connection, entry: OutboxEntry[Any], follow: Follow, now: float
    ) -> OutboxEntry[Any] | None:
        """After ``entry``'s outcome, in the same transaction: claim what ``follow`` asks."""
        if follow == "any":
            claimed, _ = self._take(conn, 1, now)
            return claimed[0] if claimed else None
        if follow is None:
            return None
        row = conn.execute(sql.CHANNEL_HEAD, (entry.operation.channel,)).fetchone()
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

    def ack(
        self, entry: OutboxEntry[Any], response: dict[str, Any], *, follow: Follow = None
    ) -> OutboxEntry[Any] | None:
        """Record a delivery: the entry is ``sent`` with the server's response.

        With ``follow``, the same transaction also claims the next entry to deliver (see
        :data:`Follow`), which is returned (None when there is none due): a worker keeps to
        its channel for one commit per message. A claim that is no longer ours (taken over
        after its lease ran out) is left as it is.
        """
        text = _ENCODER.encode(response)

        def record(conn: sqlite3.Connection) -> OutboxEntry[Any] | None:
            now = self._clock()
            self._fenced(conn.execute(sql.ACK, (now, text, *_fence(entry))).rowcount, entry)
            return self._follow(conn, entry, follow, now)

        try:
            claimed = self._run(record)
        finally:
            self.forget(entry)
        self._db.signal(settled=claimed is None)
        return claimed

    def fail(
        self, entry: OutboxEntry[Any], error: BaseException, *, follow: Follow = None
    ) -> OutboxEntry[Any] | None:
        """Record a permanent error: the entry is ``failed`` (dead letter); the channel moves on.

        ``follow`` claims the next entry in the same transaction, as for :meth:`ack`.
        """
        record = error_record(error)
        return self._finish(entry, "failed", record, possibly_delivered=False, follow=follow)

    def reschedule(
        self,
        entry: OutboxEntry[Any],
        error: BaseException,
        delay: float,
        *,
        retry_after: float | None = None,
    ) -> bool:
        """Record a transient error: ``queued`` again after ``delay`` seconds.

        After ``max_attempts`` deliveries the entry is ``failed`` instead, marked possibly
        delivered (a lost response may hide a success).

        Returns:
            True when the entry was ``failed`` (a dead letter) instead of rescheduled.
        """
        record = error_record(error, retry_after=retry_after)
        if self.max_attempts is not None and entry.attempts >= self.max_attempts:
            self._finish(entry, "failed", record, possibly_delivered=True)
            return True
        when = self._clock() + max(0.0, delay)
        args = (when, describe_error(record), json.dumps(record), *_fence(entry))
        try:
            self._run(lambda c: self._fenced(c.execute(sql.RESCHEDULE, args).rowcount, entry))
        finally:
            self.forget(entry)
        self._db.signal()
        return False

    def release(self, entry: OutboxEntry[Any]) -> None:
        """Give a claim back untouched (nothing was sent): ``queued``, attempt not counted."""
        try:
            self._run(lambda c: self._fenced(c.execute(sql.RELEASE, _fence(entry)).rowcount, entry))
        finally:
            self.forget(entry)

    def _fenced(self, rowcount: int, entry: OutboxEntry[Any]) -> None:
        if not rowcount:
            log.warning(
                "outbox entry %d: outcome not recorded, the claim is no longer ours "
                "(its lease ran out and another claim took it over)",
                entry.id,
            )

    def expedite(self) -> int:
        """Make entries backing off after transport/server errors due now (the host is back).

        Delays the server asked for (``Retry-After``) are kept. Returns how many moved.
        """
        now = self._clock()
        return self._run(lambda c: c.execute(sql.EXPEDITE, (now, now)).rowcount)

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
            sql.EXPIRE, (now, text, json.dumps(record), now - self.max_age, now)
        ).rowcount
        if count:
            log.warning("outbox %s: %d entries expired undelivered", self.path, count)
        conn.execute(sql.PRUNE_SENT, (now - self.sent_retention,))
        return int(count)

    def _finish(
        self,
        entry: OutboxEntry[Any],
        status: str,
        record: dict[str, Any],
        *,
        possibly_delivered: bool,
        follow: Follow = None,
    ) -> OutboxEntry[Any] | None:
        args = (describe_error(record), json.dumps(record), possibly_delivered, *_fence(entry))

        def finish(conn: sqlite3.Connection) -> OutboxEntry[Any] | None:
            now = self._clock()
            self._fenced(conn.execute(sql.FINISH, (status, now, *args)).rowcount, entry)
            return self._follow(conn, entry, follow, now)

        try:
            claimed = self._run(finish)
        finally:
            self.forget(entry)
        self._db.signal(settled=claimed is None)
        return claimed


def _fence(entry: OutboxEntry[Any]) -> tuple[Any, ...]:
    """The parameters of the claim-still-ours condition, for a claimed entry."""
    return (entry.id, entry.lease_token)
