"""The PostgreSQL outbox store (psycopg 3): one queue for a fleet of hosts.

- Claims lock channel heads with ``FOR UPDATE SKIP LOCKED``, a batch per statement; a
  channel's next entry is no head while the previous one is pending, so each channel keeps
  its order across every process and host. A lease (owner, expiry, random token) is
  renewed while the delivery runs; when it runs out (a dead host, a partition) any drainer
  takes the entry over and resends it under the same idempotency key. Outcomes are fenced
  by the token.
- Round trips: a claim is one statement (a transaction only when a head is old enough to
  expire); an outcome is one statement that also claims the channel's next entry (the
  drainer's ``follow="channel"``) or NOTIFYs that the channel settled. Statements run on
  autocommit, so no BEGIN/COMMIT is sent for them; the token stays on a finished row, so
  an outcome rerun after a lost connection finds itself recorded.
- Wake-ups: ``NOTIFY`` in the transaction that queues (or settles) work, ``LISTEN`` on a
  connection of its own in a daemon thread; drainers otherwise look only every
  :data:`SAFETY_POLL` seconds.
- The schema is created and migrated here (a version table; every step under a
  transaction-scoped advisory lock, so processes starting together do it once).
- Connection loss: a pooled connection found dead is replaced and the transaction rerun
  when it cannot have committed; connecting backs off (up to :data:`MAX_BACKOFF`). Until the
  database answers every call raises :class:`~chatsdk.OutboxError` at once.
- After ``fork()`` the child never touches the parent's sockets (their descriptors are
  pointed at ``/dev/null`` in the child, so not even a goodbye reaches the server).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import psycopg
from psycopg import conninfo

from chatsdk import _fork
from chatsdk._errors import ConfigurationError, OutboxError, OutboxUnavailableError
from chatsdk._outbox import pg_sql
from chatsdk._outbox.models import describe_error, row_problem
from chatsdk._outbox.sql import TOKEN
from chatsdk._outbox.store import PROBE_MIN, PROBE_PER_CLAIM, Follow, Row, Signals, expiry_error

__all__ = ["MAX_BACKOFF", "SAFETY_POLL", "PostgresStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

SAFETY_POLL = 15.0  # seconds between looks when no NOTIFY arrives
POOL_SIZE = 8  # connections a store opens at most, by default
MAX_NAME_BYTES = 40  # a schema's or a table's name, in UTF-8
MAX_BACKOFF = 2.0  # the longest pause between two connection attempts
APPLICATION = "chatsdk-outbox"
_ABANDONED: list[psycopg.Connection[Any]] = []  # a forked child's inherited connections


def split_names(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``schema=``/``table=``/``pool_size=`` query parameters (chatsdk's,
    not libpq's), and those: ``postgresql://host/db?schema=app&table=outbox&pool_size=16``."""
    # Only the query is taken apart: urlunsplit would turn postgresql:///db (a Unix socket)
    # into postgresql:/db, which libpq refuses.
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    names = {k: v for k, v in pairs if k in ("schema", "table", "pool_size")}
    rest = urlencode([(k, v) for k, v in pairs if k not in names])
    return (f"{base}?{rest}" if rest else base), names


def redact(url: str) -> str:
    """``postgresql://user@host:port/db``: the URL without its password, for messages."""
    try:
        info = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"invalid PostgreSQL URL: {exc}") from None
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


class PostgresStore:
    """The outbox's entries in one PostgreSQL table (see the module docstring).

    Args:
        url: a libpq URL (``postgresql://user:password@host:port/dbname?sslmode=...``).
        schema, table: where the entries live (created if missing); also accepted as the
            URL's ``?schema=...&table=...``; default ``chatsdk.outbox``; each 1 to 40
            bytes in UTF-8 (PostgreSQL cuts names at 63 bytes; the indexes' add to it).
        lease_seconds, max_age, sent_retention: as :class:`~chatsdk.Outbox` has them.
        connect_timeout: seconds one connection attempt may take.
        pool_size: connections this process's store opens at most (each kept for reuse;
            default 8, also accepted as the URL's ``?pool_size=``);
            a call waits for a free one up to ``connect_timeout``, then raises
            :class:`~chatsdk.OutboxUnavailableError`. The ``LISTEN`` connection is apart.
    """

    backend = "postgresql"
    poll_interval = SAFETY_POLL

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        table: str | None = None,
        lease_seconds: float = 30.0,
        max_age: float = 82800.0,
        sent_retention: float = 3600.0,
        connect_timeout: float = 5.0,
        pool_size: int | None = None,
    ) -> None:
        url, named = split_names(url)
        if pool_size is None:
            text = named.get("pool_size", str(POOL_SIZE))
            pool_size = int(text) if text.isdigit() else -1  # refused below, with the text
        schema = named.get("schema", "chatsdk") if schema is None else schema
        table = named.get("table", "outbox") if table is None else table
        for name, value in (("schema", schema), ("table", table)):
            # PostgreSQL cuts names at 63 bytes; the indexes' names add up to 9 to the table's.
            if not value or len(value.encode()) > MAX_NAME_BYTES or "\x00" in value:
                raise ConfigurationError(
                    f"{name} must be 1 to {MAX_NAME_BYTES} bytes in UTF-8, got {value!r}"
                )
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(
                f"pool_size must be an int >= 1, got {named.get('pool_size', pool_size)!r}"
            )
        self.target = redact(url)
        self.host = socket.gethostname().replace(":", "_")
        self.schema, self.table = schema, table
        self.lease_seconds, self.max_age = lease_seconds, max_age
        self.sent_retention = sent_retention
        self._url, self._timeout, self._pool_size = url, connect_timeout, pool_size
        self._q = pg_sql.statements(schema, table)
        # A NOTIFY channel is at most 63 bytes: two outboxes whose names share that prefix
        # share a channel (each only wakes the other's drainers once in a while).
        channel = f"chatsdk_outbox {schema}.{table}".encode()[:63]
        self.channel = channel.decode(errors="ignore")  # never half a character
        self._callbacks: list[Callable[[], None]] = []
        self._closed = False
        self._reset_process_state()
        _fork.register(self, order=_fork.ORDER_SQLITE, after_child=PostgresStore.after_fork)
        try:
            self._run(self._migrate)
        except BaseException:
            self.close()
            raise

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self.owner = f"{self.host}:{self._pid}:{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._slots = threading.BoundedSemaphore(self._pool_size)  # open connections
        self._down_until, self._delay, self._down_reason = 0.0, 0.0, ""
        self.held: set[str] = set()
        self._listener: threading.Thread | None = None
        self._listen_conn: psycopg.Connection[Any] | None = None
        self.signals = Signals()

    def after_fork(self) -> None:
        """In a forked child: leave the parent's connections alone and start afresh."""
        inherited = [*self._idle, *([self._listen_conn] if self._listen_conn else [])]
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for conn in inherited:
                with contextlib.suppress(OSError, psycopg.Error):
                    os.dup2(devnull, conn.fileno())
                _ABANDONED.append(conn)
        finally:
            os.close(devnull)
        self._reset_process_state()

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        now = time.monotonic()
        if now < self._down_until:
            raise OutboxUnavailableError(
                f"outbox {self.target}: database unreachable ({self._down_reason}); "
                f"next attempt in {self._down_until - now:.2f}s"
            )
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._timeout)),
                application_name=APPLICATION,
            )
        except psycopg.Error as exc:
            self._delay = min(MAX_BACKOFF, max(0.05, self._delay * 2))
            self._down_until = time.monotonic() + self._delay * (0.5 + random.random() / 2)
            self._down_reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "?"
            raise OutboxUnavailableError(
                f"outbox {self.target}: database unreachable: {exc}"
            ) from exc
        self._delay = 0.0
        return conn

    def _checkout(self) -> tuple[psycopg.Connection[Any], bool]:
        if self._pid != os.getpid():  # forked without the at-fork hook running
            self.after_fork()
        with self._lock:
            if self._closed:
                raise OutboxError(f"outbox {self.target} is closed")
            if self._idle:
                return self._idle.pop(), False
        return self._connect(), True

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if not self._closed and not conn.closed:  # at most pool_size exist (_slots)
                self._idle.append(conn)
                return
        conn.close()

    def _run(self, fn: Callable[[psycopg.Cursor[Any]], T], *, single: bool = False) -> T:
        """Run ``fn(cursor)`` in one transaction on a pooled connection.

        A dead pooled connection (the server restarted) is replaced and ``fn`` rerun when
        the transaction cannot have committed; other failures become OutboxError. With
        ``single`` (``fn`` runs one idempotent write statement, so a rerun after an unknown
        outcome is safe) no BEGIN/COMMIT is sent: the statement is its own transaction.
        """
        slots = self._slots  # the one acquired is released, if a fork replaces it meanwhile
        if not slots.acquire(timeout=self._timeout):
            raise OutboxUnavailableError(
                f"outbox {self.target}: all {self._pool_size} connections of this process "
                f"were busy for {self._timeout:g}s (pool_size)"
            )
        try:
            return self._run_on_slot(fn, single)
        finally:
            slots.release()

    def _run_on_slot(self, fn: Callable[[psycopg.Cursor[Any]], T], single: bool) -> T:
        for attempt in (1, 2):
            conn, fresh = self._checkout()
            committing = False
            try:
                if single:
                    with conn.cursor() as cur:
                        result = fn(cur)
                else:
                    with conn.transaction(), conn.cursor() as cur:
                        result = fn(cur)
                        committing = True
            except psycopg.Error as exc:
                if not conn.broken:
                    self._checkin(conn)
                    raise OutboxError(f"outbox {self.target}: {exc}") from exc
                conn.close()
                if attempt == 1 and not fresh and not committing:
                    log.info("outbox %s: connection lost (%s); reconnecting", self.target, exc)
                    continue
                raise OutboxUnavailableError(
                    f"outbox {self.target}: connection lost: {exc}"
                ) from exc
            except BaseException:  # fn's own error: rolled back, the connection is fine
                self._checkin(conn)
                raise
            self._checkin(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _migrate(self, cur: psycopg.Cursor[Any]) -> None:
        name = f"{self.schema}.{self.table}"
        digest = hashlib.blake2b(f"chatsdk-outbox:{name}".encode(), digest_size=8).digest()
        cur.execute(
            "SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(digest, "big", signed=True),)
        )
        meta, steps = pg_sql.migrations(self.schema, self.table)
        for statement in meta:
            cur.execute(statement)
        row = cur.execute(self._q["VERSION"], (name,)).fetchone()
        version = 0 if row is None else int(row[0])
        if version > pg_sql.SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self.target} table {name} has schema {version}, newer than this "
                f"chatsdk's {pg_sql.SCHEMA_VERSION}: upgrade chatsdk"
            )
        for step in range(version, pg_sql.SCHEMA_VERSION):
            for statement in steps[step]:
                cur.execute(statement)
            log.info("outbox %s: migrated %s schema %d -> %d", self.target, name, step, step + 1)
        if version != pg_sql.SCHEMA_VERSION:
            cur.execute(self._q["SET_VERSION"], (name, pg_sql.SCHEMA_VERSION))

    # -- wake-ups --------------------------------------------------------------------------

    def on_wake(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when any process queues work; starts the listener."""
        with self._lock:
            self._callbacks = [*self._callbacks, callback]
        self.watch()

    def off_wake(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        with self._lock:
            self._callbacks = [c for c in self._callbacks if c != callback]

    def watch(self) -> None:
        """Start the ``LISTEN`` thread in this process, if it is not running."""
        if self._pid != os.getpid():
            self.after_fork()
        with self._lock:
            if self._closed or (self._listener is not None and self._listener.is_alive()):
                return
            self._listener = threading.Thread(
                target=self._listen, name=f"chatsdk-outbox-listen-{self.table}", daemon=True
            )
            self._listener.start()

    def on_commit(self, callback: Callable[[], None], connection: Any) -> None:
        """``callback()`` now when :meth:`insert` committed; with the caller's connection
        its commit ``NOTIFY``s every drainer, this process's listener included."""
        if connection is None:
            callback()

    def drainer_thread(self) -> AbstractContextManager[None]:
        """Nothing to set up: the pool's connections are this store's own."""
        return contextlib.nullcontext()

    def _listen(self) -> None:
        pid, delay = os.getpid(), 0.05
        stop = threading.Event()
        while not self._closed and self._pid == pid:
            try:
                conn = psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._timeout)),
                    application_name=APPLICATION,
                )
            except psycopg.Error as exc:
                log.debug("outbox %s: listener cannot connect: %s", self.target, exc)
                stop.wait(delay)
                delay = min(MAX_BACKOFF, delay * 2)
                continue
            self._listen_conn = conn
            try:
                conn.execute(
                    psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel))
                )
                delay = 0.05
                self._dispatch("q")  # notifications may have been missed while away
                while not self._closed and self._pid == pid:
                    for note in conn.notifies(timeout=1.0):
                        self._dispatch(note.payload)
            except psycopg.Error as exc:
                log.info("outbox %s: listener connection lost: %s", self.target, exc)
            finally:
                conn.close()  # this thread runs in the process that opened it

    def _dispatch(self, payload: str) -> None:
        if payload == "q":
            for callback in self._callbacks:
                callback()
        self.signals.signal(settled=payload != "q")

    def _notify(self, cur: psycopg.Cursor[Any], payload: str) -> None:
        cur.execute(self._q["NOTIFY"], (self.channel, payload))

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
        values = (kind, channel, key, body, now, now, self.owner, trace_context, self.channel)

        def insert(cur: psycopg.Cursor[Any]) -> tuple[Row | None, int]:
            row = cur.execute(self._q["INSERT"], values).fetchone()
            if row is None:
                existing = cur.execute(self._q["BY_KEY"], (key,)).fetchone()
                assert existing is not None  # the conflict was on this key
                return tuple(existing), int(existing[0])
            return None, int(row[0])

        if connection is None:
            return self._run(insert, single=True)
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(
                "connection= takes a psycopg 3 connection (for SQLAlchemy: "
                "session.connection().connection.driver_connection), got "
                f"{type(connection).__name__}"
            )
        try:
            with connection.cursor() as cur:
                return insert(cur)
        except psycopg.Error as exc:
            raise OutboxError(f"outbox {self.target}: on the caller's connection: {exc}") from exc

    def get(self, entry_id: int) -> Row | None:
        return self._run(lambda c: c.execute(self._q["BY_ID"], (entry_id,)).fetchone())

    def rows(self, status: str | None, limit: int | None) -> list[Row]:
        if status is None:
            query, args = self._q["ALL"], (limit,)
        else:
            query, args = self._q["WITH_STATUS"], (status, limit)  # type: ignore[assignment]
        return self._run(lambda c: c.execute(query, args).fetchall())

    def counts(self) -> tuple[dict[str, int], float | None]:
        def read(cur: psycopg.Cursor[Any]) -> tuple[dict[str, int], float | None]:
            counts = dict(cur.execute(self._q["COUNTS"]).fetchall())
            oldest = cur.execute(self._q["OLDEST_PENDING"]).fetchone()
            return counts, None if oldest is None else oldest[0]

        return self._run(read)

    def has_pending(self) -> bool:
        row = self._run(lambda c: c.execute(self._q["HAS_PENDING"]).fetchone())
        return bool(row and row[0])

    def clock_offset(self, clock: Callable[[], float]) -> float | None:
        def read(cur: psycopg.Cursor[Any]) -> float:
            before = clock()
            row = cur.execute(self._q["SERVER_TIME"]).fetchone()
            after = clock()
            assert row is not None
            return float(row[0]) - (before + after) / 2  # the reading's midpoint

        return self._run(read, single=True)

    def expired_count(self) -> int:
        row = self._run(lambda c: c.execute(self._q["COUNT_EXPIRED"]).fetchone())
        return int(row[0]) if row else 0

    def pending_count(self, origin: str | None = None, *, own: bool = False) -> int:
        if not own:
            row = self._run(lambda c: c.execute(self._q["COUNT_PENDING"]).fetchone())
        else:
            row = self._run(lambda c: c.execute(self._q["COUNT_ORIGIN"], (origin,)).fetchone())
        return int(row[0]) if row else 0

    def origins(self) -> list[str | None]:
        return [row[0] for row in self._run(lambda c: c.execute(self._q["ORIGINS"]).fetchall())]

    def adopt(self, origins: Iterable[str | None]) -> int:
        wanted = list(origins)
        return self._run(
            lambda c: sum(c.execute(self._q["ADOPT"], (self.owner, o)).rowcount for o in wanted)
        )

    # -- claims and outcomes ---------------------------------------------------------------

    def claim(self, limit: int, now: float) -> tuple[list[Row], float | None]:
        """Claim up to ``limit`` due heads; see :meth:`chatsdk._outbox.store.Store.claim`.

        One statement (one round trip); only when a head is old enough to expire does a
        transaction expire what is due to and claim again. Rerun after a lost connection,
        the claims an unseen first run made (if it committed) wait out their lease and are
        then taken over, as a dead drainer's are.
        """
        rows, due, stale = self._run(lambda cur: self._take(cur, limit, now), single=True)
        if stale:

            def expire_and_take(cur: psycopg.Cursor[Any]) -> tuple[list[Row], float | None]:
                self._expire(cur, now)
                again, due, _ = self._take(cur, limit - len(rows), now)
                return again, due

            more, due = self._run(expire_and_take)
            rows = sorted([*rows, *more], key=lambda r: r[0])
        return rows, now if len(rows) >= limit else due

    def _take(
        self, cur: psycopg.Cursor[Any], limit: int, now: float
    ) -> tuple[list[Row], float | None, bool]:
        """The claimed rows, when the next unclaimed head is due, and whether one is stale."""
        args = {
            "now": now,
            "held": list(self.held),
            "limit": limit,
            "probe": PROBE_MIN + PROBE_PER_CLAIM * limit,
            "oldest": now - self.max_age,
            "owner": self.owner,
            "expires": now + self.lease_seconds,
        }
        result = cur.execute(self._q["CLAIM"], args).fetchall()
        rows = sorted((r[2:] for r in result if r[2] is not None), key=lambda r: r[0])
        return self._decodable(cur, rows, now), result[0][0], result[0][1]

    def _decodable(self, cur: psycopg.Cursor[Any], rows: list[Row], now: float) -> list[Row]:
        """Hold the claims of ``rows``; an undecodable one becomes a dead letter instead."""
        good = []
        for row in rows:
            problem = row_problem(row)
            if problem is None:
                good.append(row)
                continue
            record = {"type": "OutboxError", "message": f"undecodable entry: {problem}"}
            args = (now, describe_error(record), json.dumps(record), row[0])
            cur.execute(self._q["DEAD_LETTER"], args)
            log.error("outbox %s: entry %d is a dead letter: %s", self.target, row[0], problem)
        self._hold(good)
        return good

    def _hold(self, rows: list[Row]) -> None:
        with self._lock:
            self.held.update(row[TOKEN] for row in rows)

    def forget(self, token: str | None) -> None:
        """The claim of ``token`` is no longer in flight here: its lease is not renewed."""
        with self._lock:
            self.held.discard(token or "")

    def renew(self, expires: float) -> int:
        """Extend the leases of every claim this process has in flight."""
        with self._lock:
            tokens = list(self.held)
        if not tokens:
            return 0
        return self._run(lambda c: c.execute(self._q["RENEW"], (expires, tokens)).rowcount)

    def _outcome(
        self, query: str, args: dict[str, Any], channel: str, now: float, follow: Follow
    ) -> tuple[bool, Row | None]:
        """Record an outcome (``ACK``/``FINISH``) and claim what ``follow`` says.

        ``"channel"`` and None take one statement; ``"any"`` a transaction that records,
        then claims the most overdue head (which may be this channel's next entry).
        """
        args = {
            **args,
            "channel": channel,
            "now": now,
            "oldest": now - self.max_age,
            "owner": self.owner,
            "expires": now + self.lease_seconds,
            "notify": self.channel,
        }

        def record(cur: psycopg.Cursor[Any]) -> tuple[bool, Row | None]:
            name = query + ("_FOLLOW" if follow == "channel" else "")
            row = cur.execute(self._q[name], args).fetchone()
            assert row is not None  # the statement always returns one row
            claimed = self._decodable(cur, [] if row[2] is None else [row[2:]], now)
            if follow == "any":
                claimed = self._take(cur, 1, now)[0]
            return bool(row[0]), claimed[0] if claimed else None

        try:
            return self._run(record, single=follow != "any")
        finally:
            self.forget(args["token"])

    def ack(
        self,
        entry_id: int,
        token: str | None,
        channel: str,
        response: str,
        now: float,
        follow: Follow,
    ) -> tuple[bool, Row | None]:
        args = {"id": entry_id, "token": token, "final": "sent", "response": response}
        return self._outcome("ACK", args, channel, now, follow)

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
        args = {
            "id": entry_id,
            "token": token,
            "final": status,
            "text": error[0],
            "record": error[1],
            "possibly": possibly_delivered,
        }
        return self._outcome("FINISH", args, channel, now, follow)

    def reschedule(
        self, entry_id: int, token: str | None, when: float, error: tuple[str, str]
    ) -> bool:
        args = {"id": entry_id, "token": token, "when": when, "text": error[0], "record": error[1]}
        return self._simple("RESCHEDULE", args)

    def release(self, entry_id: int, token: str | None) -> bool:
        return self._simple("RELEASE", {"id": entry_id, "token": token})

    def _simple(self, query: str, args: dict[str, Any]) -> bool:
        def update(cur: psycopg.Cursor[Any]) -> bool:
            applied = cur.execute(self._q[query], args).rowcount > 0
            if applied:
                self._notify(cur, "q")
            return applied

        try:
            return self._run(update)
        finally:
            self.forget(args["token"])

    def requeue(self, entry_id: int, now: float, new_key: Callable[[Row | None], str]) -> Row:
        def requeue(cur: psycopg.Cursor[Any]) -> Row:
            key = new_key(cur.execute(self._q["BY_ID_LOCKED"], (entry_id,)).fetchone())
            row = cur.execute(self._q["REQUEUE"], (key, now, now, entry_id)).fetchone()
            self._notify(cur, "q")
            assert row is not None
            return tuple(row)

        return self._run(requeue)

    def shift(self, entries: list[tuple[int, float, float]], step: float) -> list[int]:
        """Move pending entries' times by ``step``; see :meth:`.store.Store.shift`."""
        args = {
            "step": step,
            "ids": [e[0] for e in entries],
            "created": [e[1] for e in entries],
            "due": [e[2] for e in entries],
        }
        return [r[0] for r in self._run(lambda c: c.execute(self._q["SHIFT"], args).fetchall())]

    def purge(self, statuses: tuple[str, ...]) -> int:
        return self._run(lambda c: c.execute(self._q["PURGE"], (list(statuses),)).rowcount)

    def expedite(self, now: float) -> int:
        return self._run(lambda c: c.execute(self._q["EXPEDITE"], {"now": now}).rowcount)

    def expire(self, now: float) -> int:
        def expire(cur: psycopg.Cursor[Any]) -> int:
            count = self._expire(cur, now)
            cur.execute(self._q["PRUNE"], (now - self.sent_retention,))
            return count

        return self._run(expire)

    def _expire(self, cur: psycopg.Cursor[Any], now: float) -> int:
        error = expiry_error(self.max_age)
        args = {"now": now, "oldest": now - self.max_age, "text": error[0], "record": error[1]}
        count = cur.execute(self._q["EXPIRE"], args).rowcount
        if count:
            log.warning("outbox %s: %d entries expired undelivered", self.target, count)
            self._notify(cur, "s")
        return count

    # -- closing ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the connections (the listener ends within a second); idempotent."""
        if self._pid != os.getpid():  # forked without the hook: the pool is the parent's
            self.after_fork()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self.signals.signal()
