"""The storage contract of the outbox: what the facade and the drainer need from a backend.

:class:`~chatsdk._outbox.outbox.Outbox` validates, encodes and waits; a :class:`Store` keeps
the entries. Two implement it here: :class:`~chatsdk._outbox.sqlite_store.SQLiteStore` (one
file, one host) and :class:`~chatsdk._outbox.postgres.PostgresStore` (a fleet of hosts); the
Django integration adds a third (a model in the app's own database), passed to the Outbox
as its target.

Rows are tuples of :data:`~chatsdk._outbox.models.COLUMNS`. Every claim carries a lease: an
owner, a wall-clock expiry and a random *token*; each outcome (ack, fail, reschedule,
release) applies only while the row still holds that token (the fence), so the outcome of a
holder whose lease ran out and was taken over changes nothing. ``now`` is always the
facade's clock, so stores agree on time with the code that tests them; after a step of the
wall clock the facade moves the times it holds with :meth:`Store.shift`.

The :class:`Signals` here are the in-process wake-ups both stores share: a store that can
hear other processes (PostgreSQL's ``LISTEN``) signals them too.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from chatsdk._errors import ConfigurationError

__all__ = [
    "PROBE_MIN",
    "PROBE_PER_CLAIM",
    "Follow",
    "Row",
    "Signals",
    "Store",
    "Wakeups",
    "expiry_error",
    "parse_target",
]

Row = tuple[Any, ...]
#: What an outcome's transaction claims next: ``"channel"``, the entry's channel's next
#: entry when it is due; ``"any"``, the most overdue channel head; None, nothing.
Follow = Literal["channel", "any"] | None
_POSTGRES = ("postgresql", "postgres")


#: Due entries a claim's first look reads: this many, plus so many per entry asked for;
#: those of them that head their channel are claimed (see each store's ``claim``).
PROBE_MIN, PROBE_PER_CLAIM = 16, 8


def parse_target(target: str | os.PathLike[str]) -> tuple[Literal["sqlite", "postgresql"], str]:
    """Which store a target names: ``("sqlite", path)`` or ``("postgresql", url)``.

    A path or ``sqlite:///path`` is SQLite; ``postgresql://`` or ``postgres://`` is PostgreSQL.

    Raises:
        ConfigurationError: another URL scheme (never a SQLite file named after the URL).
    """
    text = os.fspath(target)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return "sqlite", text
    if scheme.lower() in _POSTGRES:
        return "postgresql", text
    if scheme.lower() == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigurationError(
                f"outbox {text!r}: a SQLite URL is sqlite:///relative/path or sqlite:////abs/path"
            )
        return "sqlite", rest[1:]
    raise ConfigurationError(
        f"outbox {text!r}: unsupported scheme {scheme!r}; use a file path, sqlite:///path or "
        "postgresql://..."
    )


def expiry_error(max_age: float) -> tuple[str, str]:
    """The stored error (text, JSON record) of an entry that reached ``max_age`` undelivered."""
    record = {"type": "OutboxEntryExpiredError", "message": f"max_age {max_age:g}s"}
    return f"expired undelivered after max_age {max_age:g}s", json.dumps(record)


class Signals:
    """This process's wake-ups for threads waiting on the outbox.

    Attributes:
        generation, settled_generation: how many times :meth:`signal` ran (with
            ``settled``). A waiter reads one before it looks at the store and waits
            (:meth:`wait_changed`) only while it is unchanged, so it misses no change.
    """

    def __init__(self) -> None:
        lock = threading.Lock()
        self.changed = threading.Condition(lock)
        self.settled = threading.Condition(lock)
        self.generation = self.settled_generation = 0

    def signal(self, *, settled: bool = True) -> None:
        """Wake the waiters; ``settled=False`` spares those waiting for nothing pending."""
        with self.changed:
            self.generation += 1
            self.changed.notify_all()
            if settled:
                self.settled_generation += 1
                self.settled.notify_all()

    def wait_changed(self, seen: int, timeout: float, *, settled: bool = False) -> None:
        """Wait up to ``timeout`` seconds for a signal after generation ``seen``."""
        with self.changed:
            if settled and self.settled_generation == seen:
                self.settled.wait(timeout)
            elif not settled and self.generation == seen:
                self.changed.wait(timeout)


class Wakeups(Protocol):
    """What waiters read and wait on: :class:`Signals` (or the SQLite Database's own)."""

    generation: int
    settled_generation: int

    def signal(self, *, settled: bool = True) -> None: ...

    def wait_changed(self, seen: int, timeout: float, *, settled: bool = False) -> None: ...


class Store(Protocol):
    """A backend of the outbox. Times are wall-clock seconds; rows are of ``COLUMNS``.

    Outcomes take the claim's ``token`` (the fence) and return whether they applied; those
    that may claim more (``ack``, ``finish``) return the next claimed row as ``follow`` asks.
    Every outcome forgets the token (its lease is no longer renewed).
    """

    #: ``"sqlite"``, ``"postgresql"``, or another store's name (``"django"``).
    backend: str
    #: Where the entries are, for messages (a path, or a URL without its password).
    target: str
    host: str
    #: The longest a drainer sleeps between looks when nothing wakes it.
    poll_interval: float
    #: Set by the Outbox from its own arguments.
    lease_seconds: float
    max_age: float
    sent_retention: float

    @property
    def owner(self) -> str:
        """This process's lease owner id, ``host:pid:random`` (new after a fork)."""

    @property
    def signals(self) -> Wakeups:
        """This process's wake-ups for waiters."""

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...

    def on_wake(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when another process queues work (when the store can tell)."""

    def off_wake(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (see :meth:`on_wake`)."""

    @property
    def held(self) -> set[str]:
        """Lease tokens of this process's claims in flight (empty in a forked child)."""

    def watch(self) -> None:
        """Make sure other processes' outcomes wake this process's waiters (if it can)."""

    def on_commit(self, callback: Callable[[], None], connection: Any) -> None:
        """Call ``callback()`` once the entry :meth:`insert` just wrote (with ``connection``)
        is committed: at once when insert committed it; never when the caller's commit
        wakes the drainers itself (PostgreSQL's ``NOTIFY``); rolled back, never."""

    def drainer_thread(self) -> AbstractContextManager[None]:
        """The scope of one of a drainer's own threads: every call the thread makes is in it."""

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
        """Insert a queued entry; returns ``(None, new id)`` or ``(existing row, its id)``.

        With ``connection`` (the caller's database connection, in its open transaction)
        the row is written there and not committed: it exists iff the caller commits.
        """

    def get(self, entry_id: int) -> Row | None: ...

    def rows(self, status: str | None, limit: int | None) -> list[Row]: ...

    def counts(self) -> tuple[dict[str, int], float | None]:
        """Entries per status, and the oldest pending entry's ``created_at``."""

    def has_pending(self) -> bool: ...

    def clock_offset(self, clock: Callable[[], float]) -> float | None:
        """Seconds the database server's clock is ahead of ``clock()`` (negative: behind);
        None when no other machine's clock is involved (a local file)."""

    def expired_count(self) -> int:
        """Entries ``expired``: on an index, so a flush's look costs nothing per sent row."""

    def pending_count(self, origin: str | None = None, *, own: bool = False) -> int:
        """Entries ``queued``/``sending``; with ``own``, only those ``origin`` queued."""

    def origins(self) -> list[str | None]:
        """The distinct origins of pending entries."""

    def adopt(self, origins: Iterable[str | None]) -> int:
        """Make this process the origin of the pending entries of ``origins``."""

    def claim(self, limit: int, now: float) -> tuple[list[Row], float | None]:
        """Expire what is too old, then claim up to ``limit`` due channel heads.

        A head is due when queued and its ``next_attempt_at`` has come, or when its lease
        ran out (SQLite: or its owner is a dead process of this host); this process's own
        claims in flight are never taken over by itself. Returns the claimed rows and when
        the next unclaimed head becomes due (None when there is none).
        """

    def renew(self, expires: float) -> int:
        """Extend the leases of this process's claims in flight; returns how many."""

    def forget(self, token: str | None) -> None:
        """The claim of ``token`` is no longer in flight here: its lease is not renewed."""

    def ack(
        self,
        entry_id: int,
        token: str | None,
        channel: str,
        response: str,
        now: float,
        follow: Follow,
    ) -> tuple[bool, Row | None]: ...

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
    ) -> tuple[bool, Row | None]: ...

    def reschedule(
        self, entry_id: int, token: str | None, when: float, error: tuple[str, str]
    ) -> bool: ...

    def release(self, entry_id: int, token: str | None) -> bool: ...

    def requeue(self, entry_id: int, now: float, new_key: Callable[[Row | None], str]) -> Row:
        """Re-queue an entry; ``new_key(row)`` checks it may and picks its key (or raises)."""

    def shift(self, entries: list[tuple[int, float, float]], step: float) -> list[int]:
        """Move pending entries' ``created_at`` and ``next_attempt_at`` by ``step`` seconds.

        ``entries`` are ``(id, created_at, next_attempt_at)`` as the caller last wrote or
        read them; an entry whose stored times differ (another process moved or rescheduled
        it since) or that is no longer pending is left alone. Returns the ids moved.
        """

    def purge(self, statuses: tuple[str, ...]) -> int: ...

    def expedite(self, now: float) -> int: ...

    def expire(self, now: float) -> int:
        """Expire entries older than ``max_age``; prune ``sent`` ones past their retention."""
