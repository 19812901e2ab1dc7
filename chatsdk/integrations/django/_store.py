"""The outbox store in the Django database: the :class:`~.models.Entry` table.

``CHATSDK["OUTBOX"] = "database"`` puts the outbox beside the app's own data, so an entry
queued inside ``transaction.atomic()`` is part of that transaction: :meth:`DjangoStore.insert`
writes on Django's connection of the calling thread (a savepoint in the open transaction),
and the drainer is woken by ``transaction.on_commit``: rolled back, the entry never existed.

The storage contract is :mod:`chatsdk._outbox.store`'s, with the same semantics as the
SQLite and PostgreSQL stores (per-channel order, leases fenced by a token, dead letters,
expiry). Claims lock the channel heads with ``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL (re-checked on the newest row version, so a head claimed meanwhile by another
process is skipped); on SQLite a claim's transaction starts with a write, so it holds the
database's write lock before it reads (SQLite serialises writers; a deferred transaction
that reads first could not wait for the lock).

Connections: the drainer's threads wrap every call in ``django.db.close_old_connections()``
(Slack Bolt's Django adapter does the same), so a connection that broke or outlived
``CONN_MAX_AGE`` is replaced, and they close their connections when they end. Calls in any
other thread use that thread's connection (and its open transaction, if any) and leave it
as they found it: a connection they had to open is closed again outside a transaction,
so no connection is left behind in a thread that had none (e.g. a gunicorn ``--preload``
master about to fork). Wake-ups: this process's own (``transaction.on_commit``, outcomes);
other processes' work is found by polling every :attr:`DjangoStore.poll_interval` seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from django.db import (
    DatabaseError,
    IntegrityError,
    close_old_connections,
    connections,
    router,
    transaction,
)
from django.db.models import (
    Case,
    Count,
    F,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)

from chatsdk._errors import OutboxError
from chatsdk._outbox.models import COLUMNS, describe_error, row_problem
from chatsdk._outbox.sql import ATTEMPTS, CREATED, LEASE_EXPIRES, NEXT_AT, OWNER, STATUS, TOKEN
from chatsdk._outbox.store import PROBE_MIN, PROBE_PER_CLAIM, Follow, Row, Signals, expiry_error
from chatsdk.integrations.django.models import PENDING, Entry

__all__ = ["DjangoStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

FIELDS = tuple(c.strip() for c in COLUMNS.split(","))
_CLEAR = {"lease_owner": None, "lease_expires_at": None, "lease_token": None}
# The first statement of a SQLite write transaction: it takes the write lock (waiting out
# another writer with the busy timeout) before anything is read.
_SQLITE_LOCK = f"UPDATE {Entry._meta.db_table} SET id = id WHERE 0"  # noqa: S608


def _asked_delay(error: str | None) -> bool:
    """Whether a stored error records a delay the server asked for (``Retry-After``)."""
    try:
        record = json.loads(error or "{}")
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("retry_after") is not None


class DjangoStore:
    """The outbox's entries in the Django database (see the module docstring).

    Args:
        using: the database alias; default: where Django's routers write ``Entry`` rows.
        poll_interval: seconds between a drainer's looks for other processes' work.
    """

    backend = "django"

    def __init__(
        self,
        using: str | None = None,
        *,
        poll_interval: float = 1.0,
    ) -> None:
        self.alias: str = using or router.db_for_write(Entry)
        self.target = f"django:{self.alias}"
        self.host = socket.gethostname().replace(":", "_")
        # Set by the Outbox built on this store, from its own arguments.
        self.lease_seconds, self.max_age, self.sent_retention = 30.0, 82800.0, 3600.0
        self.poll_interval = poll_interval
        self._closed = False
        self._local = threading.local()
        self._pid = -1
        self._process_state()

    def _process_state(self) -> None:
        """Owner id, claims and wake-ups of this process (new ones after a fork)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._owner = f"{self.host}:{self._pid}:{uuid.uuid4().hex[:12]}"
            self._held_lock = threading.Lock()
            self._held: set[str] = set()
            self._signals = Signals()

    @property
    def owner(self) -> str:
        self._process_state()
        return self._owner

    @property
    def held(self) -> set[str]:
        self._process_state()
        return self._held

    @property
    def signals(self) -> Signals:
        self._process_state()
        return self._signals

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse further calls (the connections are Django's); idempotent."""
        self._closed = True
        self.signals.signal()

    def on_wake(self, callback: Callable[[], None]) -> None:
        """Nothing to do: other processes' work is found by polling."""

    def off_wake(self, callback: Callable[[], None]) -> None:
        """Nothing to do (see :meth:`on_wake`)."""

    def watch(self) -> None:
        """Nothing to do (see :meth:`on_wake`)."""

    def on_commit(self, callback: Callable[[], None], connection: Any) -> None:
        """``callback()`` when the transaction that queued the entry commits (now, outside one)."""
        if connections[self.alias].in_atomic_block:
            transaction.on_commit(callback, using=self.alias)
        else:
            callback()

    @contextlib.contextmanager
    def drainer_thread(self) -> Iterator[None]:
        """Mark the calling thread as a drainer's: its calls refresh stale connections, and
        its connections are closed when it ends."""
        self._local.drainer = True
        try:
            yield
        finally:
            self._local.drainer = False
            connections.close_all()  # this thread's connections only

    # -- running a call --------------------------------------------------------------------

    def _run(self, fn: Callable[[], T], *, atomic: bool = True) -> T:
        """Run ``fn()`` on this thread's connection, in a transaction unless ``atomic=False``.

        Database errors become :class:`OutboxError`.
        """
        if self._closed:
            raise OutboxError(f"outbox {self.target} is closed")
        drainer = getattr(self._local, "drainer", False)
        conn = connections[self.alias]
        if drainer:
            close_old_connections()
        opened_here = not drainer and conn.connection is None and not conn.in_atomic_block
        try:
            if not atomic:
                return fn()
            with transaction.atomic(using=self.alias):
                if conn.vendor == "sqlite":
                    with conn.cursor() as cursor:
                        cursor.execute(_SQLITE_LOCK)
                return fn()
        except DatabaseError as exc:
            raise OutboxError(f"outbox {self.target}: {exc}") from exc
        finally:
            if drainer:
                close_old_connections()
            elif opened_here and not conn.in_atomic_block:
                conn.close()

    def _all(self) -> QuerySet[Entry]:
        return Entry.objects.using(self.alias)

    def _pending(self) -> QuerySet[Entry]:
        return self._all().filter(status__in=PENDING)

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
        """Write the entry on this thread's connection, in its open transaction if any."""
        if connection is not None:
            raise TypeError(
                "the Django database outbox writes on Django's own connection, in the "
                "transaction.atomic() block you are in: pass no connection="
            )

        def insert() -> tuple[Row | None, int]:
            try:
                # A savepoint: a duplicate key leaves the caller's transaction usable.
                with transaction.atomic(using=self.alias):
                    entry = self._all().create(
                        kind=kind,
                        channel=channel,
                        idempotency_key=key,
                        body=body,
                        created_at=now,
                        next_attempt_at=now,
                        origin=self.owner,
                        trace_context=trace_context,
                    )
            except IntegrityError:
                row = self._all().filter(idempotency_key=key).values_list(*FIELDS).first()
                if row is None:
                    raise
                return tuple(row), int(row[0])
            return None, int(entry.pk)

        return self._run(insert, atomic=False)

    def get(self, entry_id: int) -> Row | None:
        def get() -> Row | None:
            row = self._all().filter(id=entry_id).values_list(*FIELDS).first()
            return None if row is None else tuple(row)

        return self._run(get, atomic=False)

    def rows(self, status: str | None, limit: int | None) -> list[Row]:
        query = self._all().order_by("id")
        if status is not None:
            query = query.filter(status=status)
        selected = query.values_list(*FIELDS)
        if limit is not None:
            selected = selected[:limit]
        return self._run(lambda: [tuple(r) for r in selected], atomic=False)

    def counts(self) -> tuple[dict[str, int], float | None]:
        def read() -> tuple[dict[str, int], float | None]:
            per = self._all().order_by().values_list("status").annotate(n=Count("id"))
            oldest = self._pending().aggregate(oldest=Min("created_at"))["oldest"]
            return {status: int(n) for status, n in per}, oldest

        return self._run(read, atomic=False)  # a read: never SQLite's write lock

    def clock_offset(self, clock: Callable[[], float]) -> float | None:
        return None  # not measured: the project's hosts are expected to keep NTP time

    def has_pending(self) -> bool:
        return bool(self._run(self._pending().exists, atomic=False))

    def expired_count(self) -> int:
        return int(self._run(self._all().filter(status="expired").count, atomic=False))

    def pending_count(self, origin: str | None = None, *, own: bool = False) -> int:
        query = self._pending().filter(origin=origin) if own else self._pending()
        return int(self._run(query.count, atomic=False))

    def origins(self) -> list[str | None]:
        query = self._pending().order_by().values_list("origin", flat=True).distinct()
        return self._run(lambda: list(query), atomic=False)

    def adopt(self, origins: Iterable[str | None]) -> int:
        wanted = list(origins)
        return int(
            self._run(
                lambda: sum(
                    self._pending().filter(origin=o).update(origin=self.owner) for o in wanted
                )
            )
        )

    # -- claims and outcomes ---------------------------------------------------------------

    def claim(self, limit: int, now: float) -> tuple[list[Row], float | None]:
        def claim() -> tuple[list[Row], float | None]:
            quick = self._quick_heads(limit, now)
            if len(quick) >= limit:
                claimed, _ = self._take(limit, now, quick)
                return claimed, now  # more may be due at once
            # Expiring scans the pending rows: only when a head is too old (the drainer's
            # periodic sweep expires the rest), as the other stores do.
            heads = self._heads()
            if any(row[CREATED] <= now - self.max_age for row in heads):
                self._expire(now)
                heads = self._heads()
            return self._take(limit, now, heads)

        return self._run(claim)

    def _quick_heads(self, limit: int, now: float) -> list[Row]:
        """A claim's first look: of the earliest due entries whatever their channel (queued
        ones by due time, then claims whose lease ran out), those that head their channel.

        Its cost hardly grows with the channels pending (an index's depth); that of
        :meth:`_heads` grows with each one.
        """
        probe = PROBE_MIN + PROBE_PER_CLAIM * limit
        fresh = self._all().filter(created_at__gt=now - self.max_age)
        due = fresh.filter(status="queued", next_attempt_at__lte=now)
        lapsed = fresh.filter(status="sending", lease_expires_at__lte=now)
        ids = [
            *due.order_by("next_attempt_at", "id").values_list("id", flat=True)[:probe],
            *lapsed.order_by("lease_expires_at").values_list("id", flat=True)[:probe],
        ]
        if not ids:
            return []
        head = self._pending().filter(channel=OuterRef("channel")).order_by("id").values("id")
        query = (
            self._all()
            .filter(id__in=ids)
            .annotate(head=Subquery(head[:1]))
            .filter(id=F("head"))
            .order_by("next_attempt_at", "id")
        )
        held = self.held
        return [tuple(r) for r in query.values_list(*FIELDS) if r[TOKEN] not in held]

    def _heads(self) -> list[Row]:
        """Each channel's oldest pending entry, the most overdue first."""
        firsts = self._pending().order_by().values("channel").annotate(first=Min("id"))
        query = self._all().filter(id__in=firsts.values("first"))
        return [tuple(r) for r in query.order_by("next_attempt_at", "id").values_list(*FIELDS)]

    def _take(
        self, limit: int, now: float, heads: list[Row] | None = None
    ) -> tuple[list[Row], float | None]:
        """:meth:`claim`'s work, inside its transaction (after expiry), over ``heads``
        (read now when not given)."""
        held = self.held
        picks: list[Row] = []
        next_due: float | None = None
        for row in self._heads() if heads is None else heads:
            if row[STATUS] == "queued":
                due = row[NEXT_AT]
            elif row[TOKEN] in held:
                continue  # ours, in flight (its lease is renewed)
            else:
                due = row[LEASE_EXPIRES] or 0.0
            if due <= now and len(picks) < limit:
                picks.append(row)
            elif next_due is None or due < next_due:
                next_due = due
        if not picks:
            return [], next_due
        # Lock what is still due on its newest version; PostgreSQL skips the heads another
        # transaction holds (SQLite has no row locks: the write lock already serialises).
        due_now = Q(status="queued", next_attempt_at__lte=now) | Q(
            status="sending", lease_expires_at__lte=now
        )
        if held:
            due_now &= ~Q(lease_token__in=held)
        locked = self._all().select_for_update(skip_locked=True)
        fresh = {
            r[0]: tuple(r)
            for r in locked.filter(due_now, id__in=[r[0] for r in picks]).values_list(*FIELDS)
        }
        claimed = [self._claim_row(fresh[r[0]], now) for r in picks if r[0] in fresh]
        return [r for r in claimed if r is not None], next_due

    def _claim_row(self, row: Row, now: float) -> Row | None:
        """Claim ``row`` (a due head, locked) for this process; returns it as claimed.

        A row that cannot be decoded becomes a dead letter with the reason (None is
        returned), so it never stops its channel nor the drainer.
        """
        problem = row_problem(row)
        if problem is not None:
            record = {"type": "OutboxError", "message": f"undecodable entry: {problem}"}
            self._all().filter(id=row[0]).update(
                status="failed",
                finished_at=now,
                last_error=describe_error(record),
                error=json.dumps(record),
                **_CLEAR,
            )
            log.error("outbox %s: entry %d is a dead letter: %s", self.target, row[0], problem)
            return None
        owner, expires, token = self.owner, now + self.lease_seconds, uuid.uuid4().hex
        self._all().filter(id=row[0]).update(
            status="sending",
            attempts=F("attempts") + 1,
            lease_owner=owner,
            lease_expires_at=expires,
            lease_token=token,
        )
        claimed = list(row)
        claimed[STATUS], claimed[ATTEMPTS] = "sending", row[ATTEMPTS] + 1
        claimed[OWNER], claimed[LEASE_EXPIRES], claimed[TOKEN] = owner, expires, token
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
        query = self._all().filter(status="sending", lease_token__in=tokens)
        return int(self._run(lambda: query.update(lease_expires_at=expires), atomic=False))

    def _fence(self, entry_id: int, token: str | None) -> QuerySet[Entry]:
        """The entry while the claim of ``token`` still holds it (none without a token)."""
        if token is None:
            return self._all().none()
        return self._all().filter(id=entry_id, status="sending", lease_token=token)

    def _follow(self, channel: str, follow: Follow, now: float) -> Row | None:
        if follow == "any":
            claimed, _ = self._take(1, now)
            return claimed[0] if claimed else None
        if follow is None:
            return None
        # Only a queued, due, unexpired head: anything else (a backoff, another process's
        # lease, an entry to expire) is the loop's to sort out, as it is for every head.
        head = self._pending().filter(channel=channel).order_by("id").values("id")[:1]
        rows = (
            self._all()
            .select_for_update(skip_locked=True)
            .filter(
                id=Subquery(head),
                status="queued",
                next_attempt_at__lte=now,
                created_at__gt=now - self.max_age,
            )
            .values_list(*FIELDS)
        )
        found = [tuple(r) for r in rows]
        return self._claim_row(found[0], now) if found else None

    def _outcome(
        self,
        entry_id: int,
        token: str | None,
        channel: str,
        now: float,
        follow: Follow,
        fields: dict[str, Any],
    ) -> tuple[bool, Row | None]:
        def record() -> tuple[bool, Row | None]:
            applied = self._fence(entry_id, token).update(**fields) > 0
            return applied, self._follow(channel, follow, now)

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
        fields = {"status": "sent", "finished_at": now, "response": response, **_CLEAR}
        return self._outcome(entry_id, token, channel, now, follow, fields)

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
        fields = {
            "status": status,
            "finished_at": now,
            "last_error": error[0],
            "error": error[1],
            "possibly_delivered": possibly_delivered,
            **_CLEAR,
        }
        return self._outcome(entry_id, token, channel, now, follow, fields)

    def reschedule(
        self, entry_id: int, token: str | None, when: float, error: tuple[str, str]
    ) -> bool:
        fields = {
            "status": "queued",
            "next_attempt_at": when,
            "last_error": error[0],
            "error": error[1],
            **_CLEAR,
        }
        query = self._fence(entry_id, token)
        try:
            return bool(self._run(lambda: query.update(**fields) > 0, atomic=False))
        finally:
            self.forget(token)

    def release(self, entry_id: int, token: str | None) -> bool:
        query = self._fence(entry_id, token)
        fields = {"status": "queued", "attempts": F("attempts") - 1, **_CLEAR}
        try:
            return bool(self._run(lambda: query.update(**fields) > 0, atomic=False))
        finally:
            self.forget(token)

    def requeue(self, entry_id: int, now: float, new_key: Callable[[Row | None], str]) -> Row:
        def requeue() -> Row:
            one = self._all().filter(id=entry_id)
            row = one.select_for_update().values_list(*FIELDS).first()
            key = new_key(None if row is None else tuple(row))
            one.update(
                status="queued",
                idempotency_key=key,
                attempts=0,
                created_at=now,
                next_attempt_at=now,
                finished_at=None,
                last_error=None,
                error=None,
                possibly_delivered=False,
                **_CLEAR,
            )
            return tuple(one.values_list(*FIELDS).get())

        return self._run(requeue)

    def shift(self, entries: list[tuple[int, float, float]], step: float) -> list[int]:
        """Move pending entries' times by ``step`` (see :meth:`.store.Store.shift`)."""

        def shift() -> list[int]:
            moved = []
            for entry_id, created, due in entries:
                known = self._pending().filter(id=entry_id, created_at=created, next_attempt_at=due)
                if known.update(
                    created_at=F("created_at") + step, next_attempt_at=F("next_attempt_at") + step
                ):
                    moved.append(entry_id)
            return moved

        return self._run(shift)

    def purge(self, statuses: tuple[str, ...]) -> int:
        query = self._all().filter(status__in=statuses)
        return int(self._run(lambda: query.delete()[0], atomic=False))

    def expedite(self, now: float) -> int:
        def expedite() -> int:
            waiting = self._all().filter(status="queued", next_attempt_at__gt=now)
            ids = [i for i, error in waiting.values_list("id", "error") if not _asked_delay(error)]
            return waiting.filter(id__in=ids).update(next_attempt_at=now) if ids else 0

        return self._run(expedite)

    def expire(self, now: float) -> int:
        def expire() -> int:
            count = self._expire(now)
            self._all().filter(status="sent", finished_at__lte=now - self.sent_retention).delete()
            return count

        return self._run(expire)

    def _expire(self, now: float) -> int:
        text, record = expiry_error(self.max_age)
        count = (
            self._pending()
            .filter(created_at__lte=now - self.max_age)
            .exclude(status="sending", lease_expires_at__gt=now)
            .update(
                status="expired",
                finished_at=now,
                possibly_delivered=Case(
                    When(attempts__gt=0, then=Value(True)), default=Value(False)
                ),
                last_error=text,
                error=record,
                **_CLEAR,
            )
        )
        if count:
            log.warning("outbox %s: %d entries expired undelivered", self.target, count)
        return int(count)
