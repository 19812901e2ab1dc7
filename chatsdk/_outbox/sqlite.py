"""The outbox's SQLite file: opening, schema migrations, corruption, locking and fork safety.

This module knows nothing of entries' meaning (that is :mod:`chatsdk._outbox.outbox`); it hands out
the process's one connection behind a lock and runs work on it:

- the file and its ``-wal``/``-shm`` are created mode 0600 (SQLite gives the side files the
  database file's mode); an existing one other users can open is tightened to 0600 with a
  WARNING; WAL journal, ``synchronous`` NORMAL or FULL;
- ``PRAGMA application_id`` tells an outbox from a foreign database, ``PRAGMA user_version``
  is the schema version, migrated step by step under ``BEGIN IMMEDIATE``;
- a file that is not an outbox (the application's own ``db.sqlite3``, a text file) is
  refused with :class:`~chatsdk.OutboxFileError` and left untouched; only a file that is
  recognisably an outbox (its header carries our application id) and fails SQLite's
  ``quick_check`` or cannot be read is moved aside (never deleted), with its side files;
- SQLITE_BUSY is waited out by sleeping *outside* the lock (SQLite's own busy handler is
  off), so one thread waiting for another process never holds up this process's other
  threads, and "database is locked" never reaches a caller;
- the file deleted (or replaced) while open is noticed on the next call: the entries still
  pending in the deleted file are copied into a fresh one at the same path;
- around ``fork()`` (:mod:`chatsdk._fork`) the lock is held so no SQLite call is in flight;
  the child abandons the inherited connection (closing it could disturb the parent's locks)
  and opens its own lazily, on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable
from typing import Literal, NoReturn, TypeVar

from chatsdk import _fork
from chatsdk._errors import OutboxCorruptError, OutboxError, OutboxFileError

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "Database", "Durability"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Durability = Literal["normal", "full"]

#: ``PRAGMA application_id`` of an outbox file ("CHOB"): tells ours from a foreign database.
APPLICATION_ID = 0x43484F42
SCHEMA_VERSION = 5
_HEADER = b"SQLite format 3\x00"
_APPLICATION_ID_OFFSET = 68  # where the file header stores PRAGMA application_id
BUSY_DEADLINE = 120.0  # seconds we keep retrying SQLITE_BUSY before giving up
_MAX_BUSY_SLEEP = 0.05

# _MIGRATIONS[n] takes a file from user_version n to n + 1; statements split on ";".
_MIGRATIONS = (
    """
    CREATE TABLE entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        channel TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_expires_at REAL,
        finished_at REAL,
        last_error TEXT,
        error TEXT,
        response TEXT
    );
    CREATE INDEX entries_pending ON entries(channel, id) WHERE status IN ('queued', 'sending')
    """,
    """
    ALTER TABLE entries ADD COLUMN possibly_delivered INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX entries_finished ON entries(status, finished_at)
        WHERE status NOT IN ('queued', 'sending')
    """,
    # origin: the owner id of the process that queued the entry (what close() waits for);
    # lease_token: a random token per claim, fencing every outcome to the claim's holder.
    """
    ALTER TABLE entries ADD COLUMN origin TEXT;
    ALTER TABLE entries ADD COLUMN lease_token TEXT
    """,
    # The W3C trace context of the span that queued the entry (JSON), for delivery spans.
    """
    ALTER TABLE entries ADD COLUMN trace_context TEXT
    """,
    # Queued entries by due time and claims by lease expiry: a claim's first look.
    """
    CREATE INDEX entries_due ON entries(next_attempt_at, id) WHERE status = 'queued';
    CREATE INDEX entries_leased ON entries(lease_expires_at) WHERE status = 'sending'
    """,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

# Connections a forked child inherited: closing them could disturb the parent's locks and
# WAL, so they stay referenced (never closed, never collected) and unused.
_ABANDONED: list[sqlite3.Connection] = []


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _identity(path: str) -> tuple[int, int] | None:
    """The file's (device, inode), or None when there is no file at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _tighten(path: str) -> None:
    """An existing outbox file (or ``-wal``/``-shm``) other users may read goes back to 0600.

    A copy, a restore or an archive extraction does not keep 0600. Only files this process's
    user owns are changed (another user's file is theirs to fix: a WARNING says so).
    """
    if os.name == "nt":  # pragma: no cover - POSIX permission bits only
        return
    for name in (path, path + "-wal", path + "-shm"):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o077:
            continue
        if st.st_uid != os.geteuid():
            log.warning(
                "outbox file %s is mode %04o (other users can open it) and owned by uid %d,"
                " not by this process's user: left as it is",
                name,
                mode,
                st.st_uid,
            )
            continue
        os.chmod(name, 0o600)
        log.warning(
            "outbox file %s was mode %04o (other users could open it); tightened to 0600",
            name,
            mode,
        )


class Database:
    """The process's connection to one outbox file, behind a lock.

    Attributes:
        path: the absolute path of the file.
        owner: this process's lease owner id, ``host:pid:random`` (new after a fork).
        changed: a condition notified whenever this process changes an entry's status.
        settled: a condition notified by the changes that may leave nothing pending (not by
            an outcome whose transaction also claimed the next entry: work remains).
        generation, settled_generation: how many times each was notified. A waiter reads
            one before it looks at the file and waits (:meth:`wait_changed`) only while it
            is unchanged, so it neither misses a change nor holds the lock while it queries.
        on_reset: called (no lock held) after the process state was reset in a forked child.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: Durability,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.durability = durability
        self.host = socket.gethostname().replace(":", "_")
        self._sleep = sleep
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._reset_process_state()
        self._conn = self._open()
        self._identity = _identity(self.path)
        _fork.register(
            self,
            order=_fork.ORDER_SQLITE,
            before=Database._quiesce,
            after_parent=Database._resume,
            after_child=Database.after_fork,
        )

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self.owner = f"{self.host}:{self._pid}:{uuid.uuid4().hex[:12]}"
        self._lock = threading.RLock()
        signals = threading.Lock()
        self.changed = threading.Condition(signals)
        self.settled = threading.Condition(signals)
        self.generation = self.settled_generation = 0

    # -- fork ------------------------------------------------------------------------------

    def _quiesce(self) -> None:
        self._lock.acquire()  # no SQLite call of ours is in flight while the process is copied

    def _resume(self) -> None:
        self._lock.release()

    def after_fork(self) -> None:
        """In a forked child: abandon the parent's connection; the next call opens our own."""
        if self._conn is not None:
            _ABANDONED.append(self._conn)
        self._conn = None
        self._reset_process_state()

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            with open(self.path, "rb") as handle:
                header = handle.read(len(_HEADER))
            if header and header != _HEADER:
                raise OutboxFileError(self.path, "not an SQLite database") from None
            _tighten(self.path)
        deadline = time.monotonic() + BUSY_DEADLINE
        while True:
            try:
                return self._connect(check=True)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() > deadline:
                    raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                self._corrupt(f"corrupt database: {exc}")
            self._sleep(0.005 + 0.01 * random.random())

    def _connect(self, *, check: bool = False) -> sqlite3.Connection:
        """A new connection; with ``check``, the file is vetted and migrated first.

        The foreign-file check comes before anything that writes (``journal_mode=WAL``
        rewrites the header): a file that is not ours is never modified.
        """
        # timeout=0: SQLite's busy handler would sleep while we hold the lock; run() waits
        # out SQLITE_BUSY itself, outside the lock.
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            if check:
                self._check_foreign(conn)
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute(f"PRAGMA synchronous={self.durability.upper()}")
            if check:
                self._check_schema(conn)
                self._check_integrity(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_foreign(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id or objects):
            raise OutboxFileError(
                self.path, f"an SQLite database with application_id {app_id}, {objects} objects"
            )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self.path} has schema {version}, newer than this chatsdk's "
                f"{SCHEMA_VERSION}: upgrade chatsdk"
            )
        if version < SCHEMA_VERSION:
            self._migrate(conn)

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """Corruption anywhere in the file (not only page 1): ``PRAGMA quick_check``."""
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            conn.close()
            self._corrupt(f"corrupt database: {'; '.join(problems)}")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step].split(";"):
                    conn.execute(statement)
                log.info("outbox %s: migrated schema %d -> %d", self.path, step, step + 1)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:  # a failed step: leave the file as it was
                conn.execute("ROLLBACK")

    def _corrupt(self, reason: str) -> NoReturn:
        """Move the file aside when it is recognisably an outbox; otherwise refuse it."""
        with open(self.path, "rb") as handle:
            header = handle.read(_APPLICATION_ID_OFFSET + 4)
        ours = header.startswith(_HEADER) and header[_APPLICATION_ID_OFFSET:] == (
            APPLICATION_ID.to_bytes(4, "big")
        )
        if not ours:
            raise OutboxFileError(self.path, f"unreadable and not recognisably one: {reason}")
        self._move_aside(reason)

    def _move_aside(self, reason: str) -> NoReturn:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        base = moved_to = f"{self.path}.corrupt-{stamp}-{os.getpid()}"
        n = 0
        while os.path.exists(moved_to):
            n += 1
            moved_to = f"{base}-{n}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.rename(self.path + suffix, moved_to + suffix)
        log.error("outbox %s is corrupt (%s); moved aside to %s", self.path, reason, moved_to)
        raise OutboxCorruptError(self.path, moved_to, reason)

    def _connection(self) -> sqlite3.Connection:
        """The live connection (lock held): opened lazily, replaced if the file is gone."""
        current = _identity(self.path)
        conn = self._conn
        if conn is not None and current == self._identity:
            return conn
        if conn is None and current == self._identity:  # first use in a forked child
            conn = self._connect()
        elif conn is None:  # a forked child, and the file changed since it was checked
            conn = self._open()
        else:
            conn = self._replace_deleted(conn)
        self._conn, self._identity = conn, _identity(self.path)
        return conn

    def _replace_deleted(self, old: sqlite3.Connection) -> sqlite3.Connection:
        """The file was deleted or replaced under us: recreate it with what was pending.

        The old connection still reads the deleted file, so nothing pending is lost; the
        unique idempotency key keeps another process doing the same from copying twice.
        """
        rows = old.execute(
            "SELECT kind, channel, idempotency_key, body, created_at, origin FROM entries"
            " WHERE status IN ('queued', 'sending') ORDER BY id"
        ).fetchall()
        if _identity(self.path) is None:
            # The old connection still uses its -wal and -shm through open descriptors; a
            # new file must not pick them up by name.
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path + suffix)
        new = self._open()  # raises (the old connection kept) if the path is now foreign
        try:
            new.execute("BEGIN IMMEDIATE")
            new.executemany(
                "INSERT OR IGNORE INTO entries (kind, channel, idempotency_key, body,"
                " created_at, next_attempt_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, c, key, b, at, at, o) for k, c, key, b, at, o in rows],
            )
            new.execute("COMMIT")
        except BaseException:
            new.close()  # rolls the copy back
            raise
        old.close()
        log.error(
            "outbox %s was deleted or replaced while in use; recreated it with the %d "
            "entries still pending in the old file",
            self.path,
            len(rows),
        )
        return new

    # -- running work ----------------------------------------------------------------------

    def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run ``fn(conn)``; in one ``BEGIN IMMEDIATE`` transaction when ``write``.

        SQLITE_BUSY reruns ``fn`` from the start after a short sleep taken without the lock,
        for up to :data:`BUSY_DEADLINE` seconds; other SQLite failures become
        :class:`OutboxError`. With ``write=False`` a single write statement still commits on
        its own (SQLite's implicit transaction): the cheapest durable insert.
        """
        deadline: float | None = None
        delay = 0.001
        while True:
            if self._pid != os.getpid():  # forked without the at-fork hook running
                self.after_fork()
            try:
                with self._lock:
                    if self._closed:
                        raise OutboxError(f"outbox {self.path} is closed")
                    conn = self._connection()
                    if not write:
                        return fn(conn)
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(conn)
                        conn.execute("COMMIT")
                    finally:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    return result
            except sqlite3.OperationalError as exc:
                now = time.monotonic()
                deadline = now + BUSY_DEADLINE if deadline is None else deadline
                if not is_busy(exc) or now > deadline:
                    raise OutboxError(f"outbox {self.path}: {exc}") from exc
                log.debug("outbox %s busy (%s); retrying", self.path, exc)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.DatabaseError as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            self._sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, _MAX_BUSY_SLEEP)

    def signal(self, *, settled: bool = True) -> None:
        """Wake this process's threads waiting on :attr:`changed` (and :attr:`settled`).

        ``settled=False`` spares the :attr:`settled` waiters: the change left work pending.
        """
        with self.changed:
            self.generation += 1
            self.changed.notify_all()
            if settled:
                self.settled_generation += 1
                self.settled.notify_all()

    def wait_changed(self, seen: int, timeout: float, *, settled: bool = False) -> None:
        """Wait up to ``timeout`` seconds for a signal after generation ``seen``.

        With ``settled``, ``seen`` is a :attr:`settled_generation` and only signals that
        may leave nothing pending end the wait.
        """
        with self.changed:  # the lock the two conditions share
            if settled and self.settled_generation == seen:
                self.settled.wait(timeout)
            elif not settled and self.generation == seen:
                self.changed.wait(timeout)

    def close(self) -> None:
        """Close the connection (in the process that opened it); idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._conn is not None and self._pid == os.getpid():
                    self._conn.close()
        self.signal()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed
