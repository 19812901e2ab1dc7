"""The reference server's data: messages, reactions, idempotency records, realtime tokens.

Plays the part of the database: it survives a server ``stop()``/``start()``. Every method
is thread-safe (one lock): the server's event loop thread writes, test threads inspect.
Returned dicts are copies in wire form (camelCase, API.md).
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from chatsdk.testing._wire import rfc3339

__all__ = ["IDEMPOTENCY_RETENTION", "Counters", "IdempotencyOutcome", "Store", "user_id_for"]

#: How long idempotency records are kept (seconds); API.md asks for at least 24 h.
IDEMPOTENCY_RETENTION = 24 * 3600.0

IdempotencyOutcome = Literal["new", "replay", "in_progress", "mismatch"]


def user_id_for(api_key: str) -> str:
    """The user an API key acts as (a digest, so the key itself never shows)."""
    return "u_" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


class Counters:
    """Named integer counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def snapshot(self, defaults: tuple[str, ...] = ()) -> dict[str, int]:
        """A copy of every counter, with ``defaults`` present as 0 when never counted."""
        with self._lock:
            values = dict.fromkeys(defaults, 0)
            values.update(self._values)
            return values

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._values.clear()


@dataclass
class _IdempotencyRecord:
    fingerprint: str
    created: float
    done: bool = False
    status: int = 0
    body: Any = None


@dataclass
class _MessageRow:
    seq: int
    wire: dict[str, Any]
    deleted: bool = False


class Store:
    """Thread-safe in-memory storage.

    Args:
        clock: wall clock in seconds since the epoch (timestamps, token expiry, retention).
        idempotency_retention: seconds an idempotency record is kept.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        idempotency_retention: float = IDEMPOTENCY_RETENTION,
    ) -> None:
        self._clock = clock
        self._retention = idempotency_retention
        self._lock = threading.Lock()
        self._seq = 0
        self._messages: dict[str, _MessageRow] = {}
        self._channels: dict[str, list[str]] = {}
        self._reactions: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._idempotency: dict[tuple[str, str], _IdempotencyRecord] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._next_sweep = 0.0

    # -- idempotency -------------------------------------------------------------------

    def idempotency_begin(
        self, scope: tuple[str, str], fingerprint: str
    ) -> tuple[IdempotencyOutcome, int, Any]:
        """Reserve ``scope`` (API key, Idempotency-Key) for a request with ``fingerprint``.

        Returns:
            ``("new", 0, None)`` when the caller must process the request and then call
            :meth:`idempotency_finish` (or :meth:`idempotency_abandon`);
            ``("replay", status, body)`` for a finished first request with the same body;
            ``("in_progress", 0, None)`` while the first one runs;
            ``("mismatch", 0, None)`` for a different body.
        """
        now = self._clock()
        with self._lock:
            self._sweep(now)
            record = self._idempotency.get(scope)
            if record is not None and now - record.created >= self._retention:
                del self._idempotency[scope]
                record = None
            if record is None:
                self._idempotency[scope] = _IdempotencyRecord(fingerprint, now)
                return "new", 0, None
            if record.fingerprint != fingerprint:
                return "mismatch", 0, None
            if not record.done:
                return "in_progress", 0, None
            return "replay", record.status, copy.deepcopy(record.body)

    def idempotency_finish(self, scope: tuple[str, str], status: int, body: Any) -> None:
        """Store the final answer of the request that reserved ``scope``."""
        with self._lock:
            record = self._idempotency.get(scope)
            if record is not None:
                record.done = True
                record.status = status
                record.body = copy.deepcopy(body)

    def idempotency_abandon(self, scope: tuple[str, str]) -> None:
        """Forget an unfinished reservation (the request failed before committing)."""
        with self._lock:
            record = self._idempotency.get(scope)
            if record is not None and not record.done:
                del self._idempotency[scope]

    def abandon_in_progress(self) -> int:
        """Forget every unfinished reservation (after a crash); returns how many."""
        with self._lock:
            stale = [k for k, r in self._idempotency.items() if not r.done]
            for key in stale:
                del self._idempotency[key]
            return len(stale)

    def idempotency_records(self) -> int:
        """How many idempotency records are kept."""
        with self._lock:
            self._sweep(self._clock(), force=True)
            return len(self._idempotency)

    def _sweep(self, now: float, *, force: bool = False) -> None:
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        cutoff = now - self._retention
        expired = [k for k, r in self._idempotency.items() if r.created <= cutoff and r.done]
        for key in expired:
            del self._idempotency[key]

    # -- messages ----------------------------------------------------------------------

    def create_message(self, fields: dict[str, Any], user_id: str) -> dict[str, Any]:
        """Create a message from validated wire fields; returns its wire JSON."""
        now = self._clock()
        with self._lock:
            self._seq += 1
            message_id = "msg_" + uuid.uuid4().hex
            wire = {
                "id": message_id,
                "channelId": fields["channelId"],
                "text": fields["text"],
                "attachments": copy.deepcopy(fields["attachments"]),
                "parentId": fields["parentId"],
                "userId": user_id,
                "createdAt": rfc3339(now),
                "updatedAt": None,
            }
            self._messages[message_id] = _MessageRow(self._seq, wire)
            self._channels.setdefault(fields["channelId"], []).append(message_id)
            return copy.deepcopy(wire)

    def get_message(self, message_id: str) -> dict[str, Any] | None:
        """A live (not deleted) message, or ``None``."""
        with self._lock:
            row = self._messages.get(message_id)
            if row is None or row.deleted:
                return None
            return copy.deepcopy(row.wire)

    def edit_message(self, message_id: str, text: str) -> dict[str, Any] | None:
        """Replace a live message's text; ``None`` when absent or deleted."""
        now = self._clock()
        with self._lock:
            row = self._messages.get(message_id)
            if row is None or row.deleted:
                return None
            row.wire["text"] = text
            row.wire["updatedAt"] = rfc3339(now)
            return copy.deepcopy(row.wire)

    def delete_message(self, message_id: str) -> tuple[bool, dict[str, Any] | None]:
        """Delete a message.

        Returns:
            ``(exists, message)``: ``exists`` is false for an id never created; ``message``
            is the deleted message when this call deleted it, ``None`` when it already was.
        """
        with self._lock:
            row = self._messages.get(message_id)
            if row is None:
                return False, None
            if row.deleted:
                return True, None
            row.deleted = True
            return True, copy.deepcopy(row.wire)

    def message_exists(self, message_id: str) -> bool:
        """Whether a message with this id was ever created."""
        with self._lock:
            return message_id in self._messages

    def list_messages(
        self, channel_id: str, limit: int, before: str | None
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page of live messages, newest first, and whether older ones remain.

        Returns ``None`` when ``before`` names no message of this channel.
        """
        with self._lock:
            ids = self._channels.get(channel_id, [])
            end = len(ids)
            if before is not None:
                row = self._messages.get(before)
                if row is None or row.wire["channelId"] != channel_id:
                    return None
                end = ids.index(before)
            page: list[dict[str, Any]] = []
            index = end - 1
            while index >= 0 and len(page) < limit:
                row = self._messages[ids[index]]
                if not row.deleted:
                    page.append(copy.deepcopy(row.wire))
                index -= 1
            has_more = any(not self._messages[ids[i]].deleted for i in range(index, -1, -1))
            return page, has_more

    def messages(self, channel_id: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every message of a channel, oldest first."""
        with self._lock:
            rows = [self._messages[i] for i in self._channels.get(channel_id, [])]
            return [copy.deepcopy(r.wire) for r in rows if include_deleted or not r.deleted]

    def all_messages(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every message of every channel, in creation order."""
        with self._lock:
            rows = sorted(self._messages.values(), key=lambda r: r.seq)
            return [copy.deepcopy(r.wire) for r in rows if include_deleted or not r.deleted]

    # -- reactions ---------------------------------------------------------------------

    def add_reaction(
        self, message_id: str, reaction: str, user_id: str
    ) -> tuple[dict[str, Any], bool] | None:
        """Add a reaction; ``(reaction, created)``, or ``None`` when the message is gone."""
        now = self._clock()
        with self._lock:
            row = self._messages.get(message_id)
            if row is None or row.deleted:
                return None
            key = (message_id, user_id, reaction)
            existing = self._reactions.get(key)
            if existing is not None:
                return copy.deepcopy(existing), False
            wire = {
                "messageId": message_id,
                "reaction": reaction,
                "userId": user_id,
                "createdAt": rfc3339(now),
            }
            self._reactions[key] = wire
            return copy.deepcopy(wire), True

    def remove_reaction(
        self, message_id: str, reaction: str, user_id: str
    ) -> dict[str, Any] | None:
        """Remove a reaction; returns it when it existed."""
        with self._lock:
            removed = self._reactions.pop((message_id, user_id, reaction), None)
            return copy.deepcopy(removed) if removed is not None else None

    def reactions(self, message_id: str) -> list[dict[str, Any]]:
        """Every reaction on a message, oldest first."""
        with self._lock:
            found = [r for (m, _u, _r), r in self._reactions.items() if m == message_id]
            return copy.deepcopy(found)

    def channel_of(self, message_id: str) -> str | None:
        """The channel of a message (deleted ones included)."""
        with self._lock:
            row = self._messages.get(message_id)
            return None if row is None else str(row.wire["channelId"])

    # -- realtime tokens ---------------------------------------------------------------

    def issue_token(self, user_id: str, ttl: float) -> tuple[str, float]:
        """A new realtime token for ``user_id``; ``(token, expires_at)``."""
        token = secrets.token_urlsafe(24)
        expires_at = self._clock() + ttl
        with self._lock:
            self._tokens[token] = (user_id, expires_at)
        return token, expires_at

    def token_info(self, token: str) -> tuple[str, float] | None:
        """``(user_id, expires_at)`` of a token ever issued, or ``None``."""
        with self._lock:
            return self._tokens.get(token)

    def now(self) -> float:
        """The store's clock."""
        return self._clock()
