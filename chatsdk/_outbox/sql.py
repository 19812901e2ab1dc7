"""The outbox's SQL: every statement :mod:`chatsdk._outbox.outbox` runs, and row positions.

Statements are built from the constants here only; values always go in as parameters.
"""

from __future__ import annotations

from chatsdk._outbox.models import COLUMNS

__all__ = [
    "ACK",
    "ADOPT",
    "ATTEMPTS",
    "BY_ID",
    "BY_KEY",
    "CHANNEL_HEAD",
    "CLAIM",
    "COUNT_ORIGIN",
    "COUNT_PENDING",
    "COUNT_EXPIRED",
    "CREATED",
    "EXPEDITE",
    "EXPIRE",
    "FINISH",
    "HAS_PENDING",
    "DEAD_LETTER",
    "HEADS",
    "QUICK_HEADS",
    "INSERT",
    "LEASE_EXPIRES",
    "NEXT_AT",
    "OLDEST_PENDING",
    "ORIGINS",
    "OWNER",
    "PENDING",
    "PRUNE_SENT",
    "RELEASE",
    "RENEW",
    "REQUEUE",
    "RESCHEDULE",
    "SELECT",
    "SHIFT",
    "STATUS",
    "TOKEN",
]

PENDING = "status IN ('queued', 'sending')"  # the partial index's condition, verbatim

# Positions in a row of COLUMNS, for the claim's hot loop.
STATUS, ATTEMPTS, CREATED, NEXT_AT, OWNER, LEASE_EXPIRES, TOKEN = 5, 6, 7, 8, 9, 10, 15
assert [c.strip() for c in COLUMNS.split(",")][5:11] == [
    "status",
    "attempts",
    "created_at",
    "next_attempt_at",
    "lease_owner",
    "lease_expires_at",
]
assert COLUMNS.split(",")[TOKEN].strip() == "lease_token"

INSERT = (
    "INSERT INTO entries (kind, channel, idempotency_key, body, created_at, next_attempt_at,"
    " origin, trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT = f"SELECT {COLUMNS} FROM entries"  # noqa: S608
BY_ID = f"{SELECT} WHERE id = ?"
BY_KEY = f"{SELECT} WHERE idempotency_key = ?"
COUNT_PENDING = f"SELECT count(*) FROM entries WHERE {PENDING}"  # noqa: S608
COUNT_EXPIRED = "SELECT count(*) FROM entries WHERE status = 'expired'"  # on entries_finished
HAS_PENDING = f"SELECT EXISTS (SELECT 1 FROM entries WHERE {PENDING})"  # noqa: S608
# Entries a process queued (its origin) that are still pending: what its close() waits for.
COUNT_ORIGIN = f"SELECT count(*) FROM entries WHERE {PENDING} AND origin IS ?"  # noqa: S608
ORIGINS = f"SELECT DISTINCT origin FROM entries WHERE {PENDING}"  # noqa: S608
ADOPT = f"UPDATE entries SET origin = ? WHERE {PENDING} AND origin IS ?"  # noqa: S608
OLDEST_PENDING = f"SELECT min(created_at) FROM entries WHERE {PENDING}"  # noqa: S608
# Each channel's head (its oldest pending entry): a recursive walk over the distinct
# channels of the partial index, so a claim costs O(channels * log n), not O(pending).
HEADS = f"""
WITH RECURSIVE chans(c) AS (
    SELECT (SELECT min(channel) FROM entries WHERE {PENDING})
    UNION ALL
    SELECT (SELECT min(channel) FROM entries WHERE {PENDING} AND channel > chans.c)
    FROM chans WHERE chans.c IS NOT NULL
)
SELECT {", ".join("e." + c.strip() for c in COLUMNS.split(","))}
FROM chans JOIN entries e ON e.id = (
    SELECT id FROM entries WHERE {PENDING} AND channel = chans.c ORDER BY id LIMIT 1)
ORDER BY e.next_attempt_at, e.id
"""  # noqa: S608
# A claim's first look: the earliest due queued entries and the claims whose lease ran out,
# whatever their channel, of which those that head their channel. Its cost hardly grows
# with the number of channels pending (HEADS walks them all).
QUICK_HEADS = f"""
SELECT {", ".join("e." + c.strip() for c in COLUMNS.split(","))} FROM entries e
WHERE e.id IN (
    SELECT id FROM (SELECT id FROM entries WHERE status = 'queued' AND next_attempt_at <= :now
        AND created_at > :oldest ORDER BY next_attempt_at, id LIMIT :probe)
    UNION ALL
    SELECT id FROM (SELECT id FROM entries WHERE status = 'sending'
        AND lease_expires_at <= :now AND created_at > :oldest
        ORDER BY lease_expires_at LIMIT :probe))
AND e.id = (SELECT id FROM entries WHERE {PENDING} AND channel = e.channel ORDER BY id LIMIT 1)
ORDER BY e.next_attempt_at, e.id
"""  # noqa: S608
# One channel's head: what a worker that just finished the previous head claims next.
CHANNEL_HEAD = f"{SELECT} WHERE {PENDING} AND channel = ? ORDER BY id LIMIT 1"
CLAIM = (
    "UPDATE entries SET status = 'sending', attempts = attempts + 1, lease_owner = ?,"
    " lease_expires_at = ?, lease_token = ? WHERE id = ?"
)
# Outcomes apply only while the claim is still ours: the WHERE of the next five is the
# fence (a takeover writes a new lease_token); see _fence() in chatsdk._outbox.outbox.
_FENCE = "WHERE id = ? AND status = 'sending' AND lease_token = ?"
ACK = f"""
UPDATE entries SET status = 'sent', finished_at = ?, response = ?, lease_owner = NULL,
    lease_expires_at = NULL, lease_token = NULL {_FENCE}
"""  # noqa: S608
RESCHEDULE = f"""
UPDATE entries SET status = 'queued', next_attempt_at = ?, lease_owner = NULL,
    lease_expires_at = NULL, lease_token = NULL, last_error = ?, error = ? {_FENCE}
"""  # noqa: S608
FINISH = f"""
UPDATE entries SET status = ?, finished_at = ?, lease_owner = NULL, lease_expires_at = NULL,
    lease_token = NULL, last_error = ?, error = ?, possibly_delivered = ? {_FENCE}
"""  # noqa: S608
RELEASE = f"""
UPDATE entries SET status = 'queued', attempts = attempts - 1, lease_owner = NULL,
    lease_expires_at = NULL, lease_token = NULL {_FENCE}
"""  # noqa: S608
RENEW = "UPDATE entries SET lease_expires_at = ? WHERE status = 'sending' AND lease_token = ?"
# A claimed row that cannot be decoded: a dead letter, with the reason.
DEAD_LETTER = (
    "UPDATE entries SET status = 'failed', finished_at = ?, lease_owner = NULL,"
    " lease_expires_at = NULL, lease_token = NULL, last_error = ?, error = ? WHERE id = ?"
)
REQUEUE = (
    "UPDATE entries SET status = 'queued', idempotency_key = ?, attempts = 0, created_at = ?,"
    " next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,"
    " finished_at = NULL,"
    " last_error = NULL, error = NULL, possibly_delivered = 0 WHERE id = ?"
)
EXPEDITE = f"""
UPDATE entries SET next_attempt_at = ? WHERE {PENDING} AND status = 'queued'
AND next_attempt_at > ? AND json_extract(error, '$.retry_after') IS NULL
"""  # noqa: S608
EXPIRE = f"""
UPDATE entries SET status = 'expired', finished_at = ?, lease_owner = NULL,
    lease_expires_at = NULL, lease_token = NULL, possibly_delivered = (attempts > 0),
    last_error = ?, error = ?
WHERE {PENDING} AND created_at <= ? AND NOT (status = 'sending' AND lease_expires_at > ?)
"""  # noqa: S608
# After a step of the wall clock: move an entry's times, if they are still the ones known.
SHIFT = f"""
UPDATE entries SET created_at = created_at + ?, next_attempt_at = next_attempt_at + ?
WHERE id = ? AND {PENDING} AND created_at = ? AND next_attempt_at = ?
"""  # noqa: S608
PRUNE_SENT = "DELETE FROM entries WHERE status = 'sent' AND finished_at <= ?"
