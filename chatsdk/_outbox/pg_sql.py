"""The PostgreSQL outbox's SQL: schema migrations and every statement the store runs.

``{t}`` is the entries table, ``{meta}`` its version table, ``{i_*}`` index names (all
quoted identifiers, composed by :func:`compose`); values always go in as parameters.
"""

# ruff: noqa: S608 - identifiers are composed by psycopg.sql.Identifier, values are parameters

from __future__ import annotations

from psycopg import sql

from chatsdk._outbox.models import COLUMNS

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "compose", "migrations", "statements"]

PENDING = "status IN ('queued', 'sending')"  # the partial indexes' condition, verbatim
FINISHED = "status IN ('sent', 'failed', 'expired')"

# MIGRATIONS[n] takes the schema from version n to n + 1, inside one transaction under
# an advisory lock; statements split on ";".
MIGRATIONS = (
    f"""
    CREATE TABLE IF NOT EXISTS {{t}} (
        id bigserial PRIMARY KEY,
        kind text NOT NULL,
        channel text NOT NULL,
        idempotency_key text NOT NULL UNIQUE,
        body text NOT NULL,
        status text NOT NULL DEFAULT 'queued',
        attempts integer NOT NULL DEFAULT 0,
        created_at double precision NOT NULL,
        next_attempt_at double precision NOT NULL,
        lease_owner text,
        lease_expires_at double precision,
        lease_token text,
        origin text,
        finished_at double precision,
        last_error text,
        error text,
        response text,
        possibly_delivered boolean NOT NULL DEFAULT false,
        trace_context text
    ) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
    CREATE INDEX IF NOT EXISTS {{i_pending}} ON {{t}} (channel, id) WHERE {PENDING};
    CREATE INDEX IF NOT EXISTS {{i_finished}} ON {{t}} (finished_at) WHERE {FINISHED}
    """,
    # 2: expired entries counted on an index of their own (a flush's look), not by
    # visiting every finished row; queued entries by due time and claims by lease expiry,
    # for a claim's first look (see CLAIM).
    """
    CREATE INDEX IF NOT EXISTS {i_expired} ON {t} (id) WHERE status = 'expired';
    CREATE INDEX IF NOT EXISTS {i_due} ON {t} (next_attempt_at, id) WHERE status = 'queued';
    CREATE INDEX IF NOT EXISTS {i_leased} ON {t} (lease_expires_at) WHERE status = 'sending'
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

CREATE_META = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {meta} (
    name text PRIMARY KEY,
    version integer NOT NULL
)
"""
VERSION = "SELECT version FROM {meta} WHERE name = %s"
SET_VERSION = """
INSERT INTO {meta} (name, version) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version
"""

_SELECT = f"SELECT {COLUMNS} FROM {{t}}"
_RETURNING = f"RETURNING {COLUMNS}"
# Each channel's head (its oldest pending entry): a skip scan over the distinct channels
# of the partial index, so finding heads costs O(channels * log n), whatever lies behind.
_HEADS = f"""
WITH RECURSIVE chans(c) AS (
    (SELECT channel FROM {{t}} WHERE {PENDING} ORDER BY channel LIMIT 1)
    UNION ALL
    SELECT (SELECT channel FROM {{t}} WHERE {PENDING} AND channel > chans.c
            ORDER BY channel LIMIT 1)
    FROM chans WHERE chans.c IS NOT NULL
), heads AS MATERIALIZED (
    SELECT h.* FROM chans CROSS JOIN LATERAL (
        SELECT id, status, created_at, next_attempt_at, lease_expires_at, lease_token FROM {{t}}
        WHERE {PENDING} AND channel = chans.c ORDER BY id LIMIT 1) h
)"""
# Due: queued and its time has come, or its lease ran out (its holder died or is cut
# off), and not old enough to expire. Re-checked on the locked row's newest version, so a
# head another transaction claimed meanwhile is not claimed twice.
_DUE_E = (
    "((e.status = 'queued' AND e.next_attempt_at <= %(now)s)"
    " OR (e.status = 'sending' AND e.lease_expires_at <= %(now)s"
    " AND NOT e.lease_token = ANY(%(held)s::text[])))"
    " AND e.created_at > %(oldest)s"
)
_TAKE = (
    """taken AS (
    UPDATE {t} SET status = 'sending', attempts = attempts + 1, lease_owner = %(owner)s,
        lease_expires_at = %(expires)s,
        lease_token = md5(random()::text || clock_timestamp())
    FROM picked WHERE {t}.id = picked.pick """
    + _RETURNING
    + ")"
)
# A claim's first look: the earliest due entries whatever their channel (queued ones by
# due time, then claims whose lease ran out), of which those that head their channel are
# taken. Most due entries are heads, so this finds a batch at a cost that hardly grows
# with the number of channels (an index's depth). When it finds fewer than asked for (a
# channel's backlog waiting behind a delivery in flight, say) the claim walks every
# channel's head instead (_HEADS), and only then says when the next head is due and
# whether one is stale.
_QUICK = f"""
cand AS MATERIALIZED (
    SELECT id, next_attempt_at FROM (
        (SELECT id, channel, next_attempt_at FROM {{t}} WHERE status = 'queued'
            AND next_attempt_at <= %(now)s AND created_at > %(oldest)s
            ORDER BY next_attempt_at, id LIMIT %(probe)s)
        UNION ALL
        (SELECT id, channel, next_attempt_at FROM {{t}} WHERE status = 'sending'
            AND lease_expires_at <= %(now)s ORDER BY lease_expires_at LIMIT %(probe)s)
    ) c WHERE id = (SELECT id FROM {{t}} WHERE {PENDING} AND channel = c.channel
        ORDER BY id LIMIT 1)
    ORDER BY next_attempt_at, id
), quick AS MATERIALIZED (
    SELECT e.id AS pick FROM cand CROSS JOIN LATERAL (
        SELECT id, status, created_at, next_attempt_at, lease_expires_at, lease_token
        FROM {{t}} WHERE id = cand.id LIMIT 1 FOR UPDATE SKIP LOCKED) e
    WHERE {_DUE_E} LIMIT %(limit)s
), enough AS MATERIALIZED (SELECT count(*) >= %(limit)s AS yes FROM quick)"""
# One statement, so one round trip and its own transaction: the due heads claimed, each
# row led by what the caller needs besides: when the next unclaimed head is due (the
# heads just claimed left out), and whether a head is old enough to expire (then the
# caller expires, and claims again). With nothing claimed, one row of those two alone.
# When the first look found enough, the walk over every head never runs (the gates on
# ``enough`` are one-time filters): more may be due at once, and none is called stale.
CLAIM = f"""{_HEADS}, {_QUICK}, walked AS (
    SELECT e.id AS pick FROM heads JOIN {{t}} e ON e.id = heads.id WHERE {_DUE_E}
    AND NOT (SELECT yes FROM enough)
    ORDER BY e.next_attempt_at, e.id LIMIT %(limit)s FOR UPDATE OF e SKIP LOCKED
), picked AS (
    SELECT pick FROM quick WHERE (SELECT yes FROM enough)
    UNION ALL
    SELECT pick FROM walked
), {_TAKE}, summary AS (
    SELECT min(CASE WHEN status = 'queued' THEN next_attempt_at ELSE lease_expires_at END)
            FILTER (WHERE (status = 'queued' OR NOT lease_token = ANY(%(held)s::text[]))
                AND id NOT IN (SELECT pick FROM picked)) AS next_due,
        coalesce(bool_or(created_at <= %(oldest)s
            AND NOT (status = 'sending' AND lease_expires_at > %(now)s)), false) AS stale
    FROM heads WHERE NOT (SELECT yes FROM enough)
)
SELECT CASE WHEN (SELECT yes FROM enough) THEN %(now)s ELSE summary.next_due END,
    summary.stale, taken.*
FROM summary LEFT JOIN taken ON true"""
# An outcome, fenced by the claim's token. The token stays on the finished row, so the
# same statement rerun (its connection lost, the outcome unknown) changes nothing and
# still reports the outcome recorded.
# ``{outcome}`` is the SET list. ``{follow}`` is ``true`` to claim the channel's next entry
# in the same statement (when the outcome applied, and that entry is due, free and not
# old enough to expire), else ``false``. Without a claim it NOTIFYs "s": the channel
# settled. Result: one row, (applied, notified, claimed entry's columns or NULLs).
_OUTCOME = f"""
WITH done AS (
    UPDATE {{{{t}}}} SET {{outcome}}, lease_owner = NULL, lease_expires_at = NULL
    WHERE id = %(id)s AND lease_token = %(token)s AND status = 'sending'
    RETURNING id
), picked AS (
    SELECT e.id AS pick FROM {{{{t}}}} e WHERE {{follow}} AND e.id = (
        SELECT id FROM {{{{t}}}} WHERE {PENDING} AND channel = %(channel)s AND id <> %(id)s
        ORDER BY id LIMIT 1)
    AND e.status = 'queued' AND e.next_attempt_at <= %(now)s AND e.created_at > %(oldest)s
    AND EXISTS (SELECT 1 FROM done)
    FOR UPDATE SKIP LOCKED
), {{take}}
SELECT EXISTS (SELECT 1 FROM done) OR EXISTS (SELECT 1 FROM {{{{t}}}}
        WHERE id = %(id)s AND lease_token = %(token)s AND status = %(final)s),
    CASE WHEN NOT EXISTS (SELECT 1 FROM taken) THEN pg_notify(%(notify)s, 's') END,
    taken.* FROM (SELECT 1) AS one LEFT JOIN taken ON true"""
_SENT = "status = 'sent', finished_at = %(now)s, response = %(response)s"
_FINISHED = """status = %(final)s, finished_at = %(now)s, last_error = %(text)s,
    error = %(record)s, possibly_delivered = %(possibly)s"""
ACK = _OUTCOME.format(outcome=_SENT, follow="false", take=_TAKE)
ACK_FOLLOW = _OUTCOME.format(outcome=_SENT, follow="true", take=_TAKE)
FINISH = _OUTCOME.format(outcome=_FINISHED, follow="false", take=_TAKE)
FINISH_FOLLOW = _OUTCOME.format(outcome=_FINISHED, follow="true", take=_TAKE)
# One statement (one round trip, its own transaction when autocommit): the row, and the
# NOTIFY that wakes every drainer once it commits.
INSERT = """
WITH ins AS (
    INSERT INTO {t} (kind, channel, idempotency_key, body, created_at, next_attempt_at, origin,
        trace_context)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id
)
SELECT id, pg_notify(%s, 'q') FROM ins
"""
NOTIFY = "SELECT pg_notify(%s, %s)"
BY_ID = _SELECT + " WHERE id = %s"
BY_ID_LOCKED = BY_ID + " FOR UPDATE"
BY_KEY = _SELECT + " WHERE idempotency_key = %s"
ALL = _SELECT + " ORDER BY id LIMIT %s"
WITH_STATUS = _SELECT + " WHERE status = %s ORDER BY id LIMIT %s"
COUNTS = "SELECT status, count(*) FROM {t} GROUP BY status"
OLDEST_PENDING = f"SELECT min(created_at) FROM {{t}} WHERE {PENDING}"
HAS_PENDING = f"SELECT EXISTS (SELECT 1 FROM {{t}} WHERE {PENDING})"
SERVER_TIME = "SELECT extract(epoch FROM clock_timestamp())::float8"
COUNT_EXPIRED = "SELECT count(*) FROM {t} WHERE status = 'expired'"  # on i_expired
COUNT_PENDING = f"SELECT count(*) FROM {{t}} WHERE {PENDING}"
COUNT_ORIGIN = f"SELECT count(*) FROM {{t}} WHERE {PENDING} AND origin IS NOT DISTINCT FROM %s"
ORIGINS = f"SELECT DISTINCT origin FROM {{t}} WHERE {PENDING}"
ADOPT = f"UPDATE {{t}} SET origin = %s WHERE {PENDING} AND origin IS NOT DISTINCT FROM %s"
RENEW = (
    "UPDATE {t} SET lease_expires_at = %s"
    " WHERE status = 'sending' AND lease_token = ANY(%s::text[])"
)
_FENCE = " WHERE id = %(id)s AND status = 'sending' AND lease_token = %(token)s"
_CLEAR = "lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL"
RESCHEDULE = f"""
UPDATE {{t}} SET status = 'queued', next_attempt_at = %(when)s, {_CLEAR},
    last_error = %(text)s, error = %(record)s"""
RESCHEDULE += _FENCE
RELEASE = f"UPDATE {{t}} SET status = 'queued', attempts = attempts - 1, {_CLEAR}" + _FENCE
DEAD_LETTER = f"""
UPDATE {{t}} SET status = 'failed', finished_at = %s, {_CLEAR}, last_error = %s, error = %s
WHERE id = %s"""
REQUEUE = f"""
UPDATE {{t}} SET status = 'queued', idempotency_key = %s, attempts = 0, created_at = %s,
    next_attempt_at = %s, {_CLEAR}, finished_at = NULL, last_error = NULL, error = NULL,
    possibly_delivered = false WHERE id = %s {_RETURNING}"""
# After a step of the wall clock: move entries' times, those still as the caller knows them.
SHIFT = """
UPDATE {t} AS e SET created_at = e.created_at + %(step)s,
    next_attempt_at = e.next_attempt_at + %(step)s
FROM unnest(%(ids)s::bigint[], %(created)s::float8[], %(due)s::float8[]) AS k(id, created, due)
WHERE e.id = k.id AND e.status IN ('queued', 'sending')
    AND e.created_at = k.created AND e.next_attempt_at = k.due
RETURNING e.id"""
PURGE = "DELETE FROM {t} WHERE status = ANY(%s::text[])"
EXPEDITE = """
UPDATE {t} SET next_attempt_at = %(now)s WHERE status = 'queued' AND next_attempt_at > %(now)s
AND NOT (coalesce(error, '{{}}')::jsonb ? 'retry_after')"""
EXPIRE = f"""
UPDATE {{t}} SET status = 'expired', finished_at = %(now)s, {_CLEAR},
    possibly_delivered = (attempts > 0), last_error = %(text)s, error = %(record)s
WHERE {PENDING} AND created_at <= %(oldest)s
    AND NOT (status = 'sending' AND lease_expires_at > %(now)s)"""
# Finished rows past the retention go in batches, so no delete holds locks for long.
PRUNE = """
DELETE FROM {t} WHERE id IN (
    SELECT id FROM {t} WHERE status = 'sent' AND finished_at <= %s LIMIT 5000)"""


def statements(schema: str, table: str) -> dict[str, str]:
    """Every statement above by name (``"CLAIM"``...), for one schema and table.

    Rendered to text once (identifiers quoted), not composed again at every execution.
    ``"MIGRATIONS"`` is not among them: see :func:`migrations`.
    """
    names = _names(schema, table)
    return {
        name: compose(text, names).as_string(None)
        for name, text in globals().items()
        if name.isupper()
        and isinstance(text, str)
        and not name.startswith("_")
        and name not in ("COLUMNS", "PENDING", "FINISHED", "CREATE_META", "SCHEMA_VERSION")
    }


def migrations(schema: str, table: str) -> tuple[list[sql.Composed], list[list[sql.Composed]]]:
    """The statements creating the version table, and each migration step's statements."""
    names = _names(schema, table)
    meta = [compose(part, names) for part in CREATE_META.split(";")]
    return meta, [[compose(part, names) for part in step.split(";")] for step in MIGRATIONS]


def _names(schema: str, table: str) -> dict[str, sql.Identifier]:
    return {
        "schema": sql.Identifier(schema),
        "t": sql.Identifier(schema, table),
        "meta": sql.Identifier(schema, "chatsdk_schema_versions"),
        "i_pending": sql.Identifier(f"{table}_pending"),
        "i_finished": sql.Identifier(f"{table}_finished"),
        "i_expired": sql.Identifier(f"{table}_expired"),
        "i_due": sql.Identifier(f"{table}_due"),
        "i_leased": sql.Identifier(f"{table}_leased"),
    }


def compose(text: str, names: dict[str, sql.Identifier]) -> sql.Composed:
    """``text`` with its ``{name}`` placeholders replaced by quoted identifiers."""
    return sql.SQL(text).format(**names)
