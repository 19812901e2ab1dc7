"""The offline outbox: a durable, multi-process queue of create operations.

An entry holds one operation (kind, wire body, idempotency key, channel), never a base URL
or an API key: the client that drains it decides where it goes. Entries move through::

    queued --claim--> sending --ack--> sent
      ^                  |  \\--fail--> failed      (permanent error, or max_attempts)
      +---reschedule-----+   \\--expire-> expired   (older than max_age)

This module is the facade: it validates, encodes, waits and wakes. The entries live in a
store (:mod:`chatsdk._outbox.store`): a SQLite file for one host
(:mod:`chatsdk._outbox.sqlite_store`) or a PostgreSQL table for a fleet
(:mod:`chatsdk._outbox.postgres`). Claims carry a lease (owner, wall-clock expiry, token):
an entry whose holder died is taken over when the lease runs out and resent with the same
key; every outcome is fenced by the token. A channel's next entry is never claimable before
the previous one left ``queued``/``sending``. The background delivery loop lives in
:mod:`chatsdk._outbox.drainer`.

Clock steps: stored times are wall-clock, but this process measures the time that passes
with a monotonic clock (:mod:`chatsdk._outbox.clock`). When the wall clock steps, the facade
moves the stored creation and due times of the entries this process holds (queued, claimed
or rescheduled here, and still pending) by the step, before any reading after the step is
used, and renews its leases. Each move is conditional on the stored times being the ones
this process last wrote or read, so two processes that saw the same step move an entry
once. An entry's age is therefore measured, within the processes that hold it, by the
monotonic clock: a backward step stalls nothing, a forward step expires nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from chatsdk import _fork, _instrument
from chatsdk._errors import OutboxError, OutboxUnavailableError, WaitTimeoutError
from chatsdk._models import Message, Reaction
from chatsdk._outbox.clock import MONOTONIC, StepWatch
from chatsdk._outbox.models import (
    FlushResult,
    Kind,
    Operation,
    OutboxEntry,
    OutboxStats,
    describe_error,
    entry_from_row,
    error_record,
)
from chatsdk._outbox.sqlite import Durability
from chatsdk._outbox.sqlite_store import SQLiteStore, owner_alive
from chatsdk._outbox.store import Follow, Row, Store, parse_target
from chatsdk._validation import check_seconds, check_wire_body

__all__ = ["Durability", "Follow", "Operation", "Outbox", "OutboxEntry", "OutboxStats"]

log = logging.getLogger(__name__)


STATUSES = ("queued", "sending", "sent", "failed", "expired")
TERMINAL = ("sent", "failed", "expired")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_POLL = 1.0  # at most this long between looks for other processes' outcomes
_UNAVAILABLE_POLL = 0.2  # between looks while the database is unreachable
#: Entries whose stored times this process remembers (to move them after a clock step);
#: beyond this many, the oldest are forgotten (they are judged by the wall clock alone).
KNOWN_MAX = 10_000
#: A database server's clock this many seconds away from this host's is warned of at open.
CLOCK_SKEW_WARNING = 2.0


class _Drainer(Protocol):
    @property
    def status(self) -> str: ...


class Outbox:
    """A durable outbox shared safely by threads and processes (and, on PostgreSQL, hosts).

    Args:
        target: a file path or ``sqlite:///path`` (one SQLite file: created mode 0600 with
            its ``-wal``/``-shm`` if missing), a ``postgresql://`` URL (a table there,
            created and migrated as needed; needs ``chatsdk[postgres]``), or a store
            object (the Django integration's, for ``CHATSDK["OUTBOX"] = "database"``):
            this Outbox's ``lease_seconds``, ``max_age`` and ``sent_retention`` apply to it.
        durability: SQLite only: ``"normal"`` survives a process crash
            (``synchronous=NORMAL``); ``"full"`` also survives power loss.
        lease_seconds: how long a claim stays exclusive without renewal before another
            process may take over.
        max_attempts: deliveries before a transiently failing entry is ``failed``; ``None``
            retries until ``max_age``.
        max_age: seconds after which an undelivered entry becomes ``expired`` (default 23 h,
            under the server's 24 h idempotency-key retention).
        sent_retention: seconds a ``sent`` entry is kept (for ``wait()``) before pruning.
        clock: wall clock for timestamps and leases (shared between processes).
        monotonic: measures the time that passes in this process, to tell a step of the
            wall clock from time passing (default ``CLOCK_BOOTTIME`` on Linux, otherwise
            ``time.monotonic``; when only ``clock`` is injected, ``clock`` itself: a fake
            clock's moves are time passing).
        schema, table: PostgreSQL only: where the entries live (default ``chatsdk.outbox``);
            each 1 to 40 bytes in UTF-8.

    Raises:
        ConfigurationError: ``target`` is a URL of another scheme than sqlite/postgresql,
            or a schema/table name is empty or too long.
        OutboxCorruptError: the file is corrupt or not an outbox; it was moved aside.
        OutboxError: written by a newer chatsdk, or cannot be opened / reached.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Store,
        *,
        durability: Durability = "normal",
        lease_seconds: float = 30.0,
        max_attempts: int | None = None,
        max_age: float = 82800.0,
        sent_retention: float = 3600.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        schema: str | None = None,
        table: str | None = None,
    ) -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        check_seconds("lease_seconds", lease_seconds, positive=True)
        check_seconds("max_age", max_age, positive=True)
        check_seconds("sent_retention", sent_retention)
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise ValueError(f"max_attempts must be an int >= 1 or None, got {max_attempts!r}")
        lease, age, retention = float(lease_seconds), float(max_age), float(sent_retention)
        self._store: Store
        if not isinstance(target, (str, os.PathLike)):
            if schema is not None or table is not None:
                raise ValueError("schema= and table= apply to a PostgreSQL outbox only")
            self._store = target
            target.lease_seconds, target.max_age, target.sent_retention = lease, age, retention
            kind = target.backend
        elif (parsed := parse_target(target))[0] == "postgresql":
            kind, where = parsed
            try:
                from chatsdk._outbox.postgres import PostgresStore  # noqa: PLC0415 - optional extra
            except ImportError as exc:  # pragma: no cover - the extra is in the test env
                raise OutboxError(
                    "a PostgreSQL outbox needs psycopg 3: pip install 'chatsdk[postgres]'"
                ) from exc
            self._store = PostgresStore(
                where,
                schema=schema,
                table=table,
                lease_seconds=lease,
                max_age=age,
                sent_retention=retention,
            )
        else:
            kind, where = parsed
            if schema is not None or table is not None:
                raise ValueError("schema= and table= apply to a PostgreSQL outbox only")
            self._store = SQLiteStore(
                os.path.abspath(where),
                durability=durability,
                lease_seconds=lease,
                max_age=age,
                sent_retention=retention,
            )
        self.backend = kind
        self.path = self._store.target
        self.durability: Durability = durability
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = max_attempts
        self.max_age = float(max_age)
        self.sent_retention = float(sent_retention)
        self._clock = clock
        if monotonic is None:
            monotonic = MONOTONIC if clock is time.time else clock
        self._watch = StepWatch(clock, monotonic)
        self._check_clock(clock)
        self._known: dict[int, tuple[float, float]] = {}  # id -> (created_at, next_attempt_at)
        self._expired_seen = self._expired()  # what flushes report is what expires after
        self._listeners: list[Callable[[], None]] = []
        self._drainers: list[_Drainer] = []
        self._signals = self._store.signals
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
        self._time_lock = threading.Lock()  # one reading at a time; a step handled under it
        self._known_lock = threading.Lock()
        self._expired_lock = threading.Lock()
        self._store.held.clear()

    @property
    def _held(self) -> set[str]:
        """Lease tokens of this process's deliveries in flight (the store keeps them)."""
        return self._store.held

    @property
    def owner(self) -> str:
        """This process's lease owner id (``host:pid:random``; a forked child gets a new one)."""
        return self._store.owner

    @property
    def poll_interval(self) -> float:
        """The longest a drainer should sleep between looks: 1 s for SQLite; for PostgreSQL
        a slow safety poll, since other processes' work wakes it (``LISTEN/NOTIFY``)."""
        return self._store.poll_interval

    # -- public API ------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each entry this process queues or re-queues."""
        with self._lock:
            self._listeners = [*self._listeners, callback]

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (a closed client's drainer); unknown ones are ignored."""
        with self._lock:
            self._listeners = [c for c in self._listeners if c != callback]
        self._store.off_wake(callback)

    def attach(self, drainer: _Drainer) -> None:
        """Report ``drainer``'s :attr:`status` in :meth:`stats` (until :meth:`detach`)."""
        with self._lock:
            self._drainers = [*self._drainers, drainer]

    def detach(self, drainer: _Drainer) -> None:
        """Stop reporting ``drainer``."""
        with self._lock:
            self._drainers = [d for d in self._drainers if d is not drainer]

    def on_remote_work(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when any process may have queued work: on PostgreSQL each
        ``NOTIFY`` (and each reconnect of the listener); on SQLite never (drainers look)."""
        self._store.on_wake(callback)

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
        connection: Any = None,
    ) -> OutboxEntry[Any]:
        """Store one operation durably; returns after the commit.

        A key already in the outbox with the same kind and body returns that entry, so a
        rerun that queues under deterministic keys queues nothing twice.

        Args:
            connection: PostgreSQL only: a psycopg 3 connection in the caller's open
                transaction. The entry is written on it and NOT committed: it exists (and
                is delivered, by any drainer) if and only if the caller commits. (Django's
                database store always writes in the current transaction, without it.)

        Raises:
            ValidationError: ``body`` is not JSON that can be sent (a lone surrogate, a
                non-finite number), or has ``attachments`` or a ``reaction`` that
                ``queue_message``/``queue_reaction`` would refuse; nothing was stored.
            ValueError: ``kind`` is unknown, or the key is in use for a different operation.
            TypeError: ``connection`` is not a psycopg 3 connection, or the outbox is
                SQLite or Django's.
            OutboxError: the store cannot be written (e.g. the database is unreachable).
        """
        if kind not in ("message", "reaction"):
            raise ValueError(f"kind must be 'message' or 'reaction', got {kind!r}")
        check_wire_body(kind, body)
        key = idempotency_key or str(uuid.uuid4())
        text = _ENCODER.encode(body)
        now = self._now()
        tracer = _instrument.tracer
        carrier = None if tracer is None else tracer.carrier()
        context = None if carrier is None else _ENCODER.encode(carrier)
        row, entry_id = self._store.insert(
            kind, channel, key, text, now, context, connection=connection
        )
        if row is not None:
            if (row[1], row[2], row[4]) != (kind, channel, text):
                raise ValueError(
                    f"idempotency key {key!r} is already used by outbox entry {row[0]} "
                    "for a different operation"
                )
            return entry_from_row(self, row)
        self._remember(entry_id, now, now)
        op = Operation(kind=kind, body=body, idempotency_key=key, channel=channel)
        entry: OutboxEntry[Any] = OutboxEntry(
            id=entry_id,
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
        # Wake this process's drainer once the entry is committed (with the caller's
        # PostgreSQL connection, its commit NOTIFYs every drainer instead).
        self._store.on_commit(self._notify, connection)
        return entry

    def get(self, entry_id: int) -> OutboxEntry[Any] | None:
        """The entry as the store has it now, or None when there is no such entry."""
        row = self._store.get(entry_id)
        return None if row is None else entry_from_row(self, row)

    def entries(
        self, status: str | None = None, *, limit: int | None = None
    ) -> list[OutboxEntry[Any]]:
        """Entries oldest first, all or those with one ``status``."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        self.expire()
        return [entry_from_row(self, row) for row in self._store.rows(status, limit)]

    def stats(self) -> OutboxStats:
        """Counts per status and the oldest pending entry's age, after expiring old entries."""
        self.expire()
        counts, oldest = self._store.counts()
        known = {status: n for status, n in counts.items() if status in STATUSES}
        age = None if oldest is None else max(0.0, self._now() - oldest)
        statuses = [d.status for d in self._drainers]
        drainer = next((s for s in statuses if s != "running"), "running" if statuses else None)
        return OutboxStats(**known, oldest_pending_age=age, drainer=drainer)

    def has_pending(self) -> bool:
        """True while an entry is ``queued`` or ``sending``, in any process (one index probe)."""
        return self._store.has_pending()

    def pending_count(self, *, own: bool = False) -> int:
        """Entries ``queued`` or ``sending``, in every process.

        With ``own``, only those this process queued (or adopted from a process that exited).
        """
        return self._store.pending_count(self.owner, own=own)

    def adopt_orphans(self) -> int:
        """Make this process the origin of the pending entries of processes that exited.

        A process on this host that no longer exists (or an entry from before origins were
        recorded) left entries nobody waits for; after this, this process's ``close()``
        waits for them too. Returns how many entries were adopted.
        """
        host = self._store.host
        dead = [o for o in self._store.origins() if o is None or not owner_alive(o, host)]
        count = self._store.adopt(dead) if dead else 0
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

        was_expired = False

        def new_key(row: Row | None) -> str:
            nonlocal was_expired
            if row is None:
                raise OutboxError(f"no outbox entry {entry_id}")
            old = entry_from_row(self, row)
            was_expired = old.status == "expired"
            if old.status not in ("failed", "expired") or (
                old.status == "expired" and old.possibly_delivered
            ):
                raise OutboxError(f"outbox entry {entry_id} is {old.status}; cannot retry it")
            rejected = old._error is not None and old._error.get("status") is not None
            if rejected or not old.possibly_delivered:
                return str(uuid.uuid4())
            return old.idempotency_key

        entry = entry_from_row(self, self._store.requeue(entry_id, self._now(), new_key))
        self._remember(entry.id, entry.created_at, entry.next_attempt_at)
        if was_expired:  # a retried failed entry leaves the expired count as it is
            self._recount_expired()
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
        count = self._store.purge(wanted)
        if "expired" in wanted:
            self._recount_expired()
        return count

    def wait(self, entry_id: int, timeout: float | None = None) -> Message | Reaction:
        """Block until entry ``entry_id`` is finished; see :meth:`OutboxEntry.wait`."""
        timeout = check_seconds("timeout", timeout, none=True)
        self._store.watch()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = self._signals.generation  # before the read: a change after it ends the wait
            remaining = _POLL if deadline is None else deadline - time.monotonic()
            try:
                entry = self.get(entry_id)
            except OutboxUnavailableError as exc:
                self._wait_out(exc, seen, remaining)
                continue
            if entry is None:
                raise OutboxError(
                    f"outbox entry {entry_id} is not in the outbox: purged, or queued in a"
                    " transaction that has not committed (or was rolled back)"
                )
            if entry.status in TERMINAL:
                result: Message | Reaction = entry.result()
                return result
            remaining = _POLL if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(
                    f"outbox entry {entry_id} still {entry.status} after {timeout}s"
                )
            self._signals.wait_changed(seen, min(_POLL, remaining))

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
        Never True when entries expired undelivered: see :meth:`drained`.
        ``timeout``: None or infinity for no limit; NaN or negative raise ``ValueError``.

        Raises:
            OutboxUnavailableError: the database was still unreachable when the wait ended
                (while it is down, the wait goes on: a restart or a failover is waited out).
            OutboxError: the outbox cannot be read (closed, say).
        """
        return bool(self.drained(timeout, give_up=give_up, own=own))

    def drained(
        self,
        timeout: float | None = None,
        *,
        give_up: Callable[[], bool] | None = None,
        own: bool = False,
    ) -> FlushResult:
        """Wait as :meth:`wait_idle` does; say what is left, and what expired.

        Returns:
            ``pending``: entries still pending (of this process with ``own``, else of all);
            ``expired``: entries (of any process) that expired undelivered since this
            process's previous wait ended (or since it opened the outbox). Falsy unless
            both are 0: a flush never reports success over entries that expired.
        """
        timeout = check_seconds("timeout", timeout, none=True)
        self._store.watch()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Read before the query: a change after it ends the wait. Only changes that may
            # leave nothing pending wake this waiter, not every delivery of a busy drain.
            seen = self._signals.settled_generation
            remaining = _POLL if deadline is None else deadline - time.monotonic()
            try:
                if not (self.pending_count(own=True) if own else self.has_pending()):
                    pending = 0
                    break
            except OutboxUnavailableError as exc:
                self._wait_out(exc, seen, remaining, give_up, settled=True)
                continue
            if remaining <= 0 or (give_up is not None and give_up()):
                pending = self.pending_count(own=own)  # counted once, not at every wake-up
                break
            self._signals.wait_changed(seen, min(_POLL, remaining), settled=True)
        return FlushResult(pending=pending, path=self.path, expired=self._newly_expired())

    def _wait_out(
        self,
        exc: OutboxUnavailableError,
        seen: int,
        remaining: float,
        give_up: Callable[[], bool] | None = None,
        *,
        settled: bool = False,
    ) -> None:
        """The database is down for now (a restart, a failover): the drainer waits it out,
        and so does a wait, until its deadline, where the error is the truth (raised)."""
        if remaining <= 0 or (give_up is not None and give_up()):
            raise exc
        log.debug("outbox %s: waiting for the database: %s", self.path, exc)
        self._signals.wait_changed(seen, min(_UNAVAILABLE_POLL, remaining), settled=settled)

    def _expired(self) -> int:
        return self._store.expired_count()

    def _newly_expired(self) -> int:
        """Entries expired since the previous call (or since the outbox was opened)."""
        count = self._expired()
        with self._expired_lock:
            new, self._expired_seen = max(0, count - self._expired_seen), count
        return new

    def _recount_expired(self) -> None:
        """After a purge or a retry took expired entries away: none of them is new."""
        count = self._expired()
        with self._expired_lock:
            self._expired_seen = min(self._expired_seen, count)

    def signal(self) -> None:
        """Wake this process's threads blocked in :meth:`wait` or :meth:`wait_idle`."""
        self._signals.signal()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._store.closed

    def close(self) -> None:
        """Close the store's connections; later calls raise :class:`OutboxError`. Idempotent."""
        self._store.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.backend != "sqlite":
            return f"<Outbox {self.path}>"
        return f"<Outbox {self.path} durability={self.durability}>"

    def drainer_thread(self) -> AbstractContextManager[None]:
        """The scope a drainer runs each of its threads in (the store may need one, e.g. to
        manage a framework's per-thread database connections)."""
        return self._store.drainer_thread()

    # -- the drainer's side ----------------------------------------------------------------

    def claim(self, limit: int) -> tuple[list[OutboxEntry[Any]], float | None]:
        """Claim up to ``limit`` due channel heads for this process, under new leases.

        Returns the claimed entries (now ``sending`` under this process's lease) and the
        wall-clock time the next unclaimed head becomes due (None when there is none).
        """
        rows, next_due = self._store.claim(limit, self._now())
        claimed = [entry_from_row(self, row) for row in rows]
        for entry in claimed:
            self._remember(entry.id, entry.created_at, entry.next_attempt_at)
        return claimed, next_due

    def renew_leases(self) -> int:
        """Extend the lease of every delivery this process has in flight; returns how many."""
        return self._store.renew(self._now() + self.lease_seconds)

    def _claimed(self, row: Row | None) -> OutboxEntry[Any] | None:
        claimed = None if row is None else entry_from_row(self, row)
        if claimed is not None:
            self._remember(claimed.id, claimed.created_at, claimed.next_attempt_at)
        self._signals.signal(settled=claimed is None)
        return claimed

    def ack(
        self, entry: OutboxEntry[Any], response: dict[str, Any], *, follow: Follow = None
    ) -> OutboxEntry[Any] | None:
        """Record a delivery: the entry is ``sent`` with the server's response.

        With ``follow``, the same transaction also claims the next entry to deliver (see
        :data:`Follow`), which is returned (None when there is none due): a worker keeps to
        its channel for one commit per message. A claim that is no longer ours (taken over
        after its lease ran out) is left as it is.
        """
        self._forget_times(entry.id)
        applied, row = self._store.ack(
            entry.id,
            entry.lease_token,
            entry.operation.channel,
            _ENCODER.encode(response),
            self._now(),
            follow,
        )
        self._fenced(applied, entry)
        return self._claimed(row)

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
        when = self._now() + max(0.0, delay)
        error_text = (describe_error(record), json.dumps(record))
        applied = self._store.reschedule(entry.id, entry.lease_token, when, error_text)
        with self._known_lock:
            created = self._known.get(entry.id, (entry.created_at, when))[0]
        if applied:
            self._remember(entry.id, created, when)
        else:
            self._forget_times(entry.id)
        self._fenced(applied, entry)
        self._signals.signal()
        return False

    def release(self, entry: OutboxEntry[Any]) -> None:
        """Give a claim back untouched (nothing was sent): ``queued``, attempt not counted."""
        self._fenced(self._store.release(entry.id, entry.lease_token), entry)

    def forget(self, entry: OutboxEntry[Any]) -> None:
        """``entry`` is no longer in flight here though no outcome could be written: its
        lease is no longer renewed, and any drainer re-takes it once the lease runs out."""
        self._store.forget(entry.lease_token)

    def _fenced(self, applied: bool, entry: OutboxEntry[Any]) -> None:
        if not applied:
            log.warning(
                "outbox entry %d: outcome not recorded, the claim is no longer ours "
                "(its lease ran out and another claim took it over)",
                entry.id,
            )

    def expedite(self) -> int:
        """Make entries backing off after transport/server errors due now (the host is back).

        Delays the server asked for (``Retry-After``) are kept. Returns how many moved.
        """
        return self._store.expedite(self._now())

    def expire(self) -> int:
        """Mark entries older than ``max_age`` ``expired``; prune old ``sent`` entries."""
        count = self._store.expire(self._now())
        if count:
            self._signals.signal()
        return count

    def _finish(
        self,
        entry: OutboxEntry[Any],
        status: str,
        record: dict[str, Any],
        *,
        possibly_delivered: bool,
        follow: Follow = None,
    ) -> OutboxEntry[Any] | None:
        self._forget_times(entry.id)
        applied, row = self._store.finish(
            entry.id,
            entry.lease_token,
            entry.operation.channel,
            status,
            (describe_error(record), json.dumps(record)),
            possibly_delivered,
            self._now(),
            follow,
        )
        self._fenced(applied, entry)
        return self._claimed(row)

    # -- time ------------------------------------------------------------------------------

    def _check_clock(self, clock: Callable[[], float]) -> None:
        """Warn when this host's clock and the database server's disagree.

        Leases and ``max_age`` are judged by the clock of the host that reads them: a host
        whose clock is ahead takes other hosts' live leases over early (the entry is resent
        under the same key), one behind leaves a dead host's entries waiting longer.
        """
        offset = self._store.clock_offset(clock)
        if offset is not None and abs(offset) >= CLOCK_SKEW_WARNING:
            log.warning(
                "outbox %s: this host's clock is %.1fs %s the database server's; leases "
                "(%gs) and max_age are judged by each host's clock: keep the hosts' clocks "
                "in sync (NTP)",
                self.path,
                abs(offset),
                "behind" if offset > 0 else "ahead of",
                self.lease_seconds,
            )

    def _now(self) -> float:
        """The wall-clock time for the store; a step of the wall clock is handled first."""
        with self._time_lock:
            now, step = self._watch.read()
            if step:
                try:
                    self._stepped(step, now)
                except BaseException:
                    self._watch.rewind(step)  # the next reading sees the step again
                    raise
            return now

    def _stepped(self, step: float, now: float) -> None:
        """Move the stored times of the entries this process holds by ``step``; renew leases.

        Called under the time lock: no thread uses a reading taken after the step before the
        stored times agree with it.
        """
        with self._known_lock:  # held throughout: the times remembered are the ones moved
            known = list(self._known.items())
            moved = set(self._store.shift([(i, c, n) for i, (c, n) in known], step))
            # An entry not moved is finished, or another process wrote it since: not ours.
            self._known = {i: (c + step, n + step) for i, (c, n) in known if i in moved}
        renewed = self._store.renew(now + self.lease_seconds)
        log.warning(
            "outbox %s: the wall clock stepped %+.1fs; moved the stored times of the %d "
            "pending entries this process holds by as much and renewed %d leases",
            self.path,
            step,
            len(moved),
            renewed,
        )

    def _remember(self, entry_id: int, created_at: float, next_attempt_at: float) -> None:
        with self._known_lock:
            self._known.pop(entry_id, None)  # re-inserted last: the newest is kept longest
            self._known[entry_id] = (created_at, next_attempt_at)
            if len(self._known) > KNOWN_MAX:
                del self._known[next(iter(self._known))]

    def _forget_times(self, entry_id: int) -> None:
        with self._known_lock:
            self._known.pop(entry_id, None)
