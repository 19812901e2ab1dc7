"""Value types of the outbox: operations, entry snapshots, statistics, stored errors."""

from __future__ import annotations

import json
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

import attrs

from chatsdk._errors import (
    APIError,
    ChatSDKError,
    OutboxEntryExpiredError,
    OutboxError,
)
from chatsdk._http.retry import error_class
from chatsdk._models import Message, Reaction

__all__ = [
    "COLUMNS",
    "FlushResult",
    "Kind",
    "Operation",
    "OutboxEntry",
    "OutboxStats",
    "describe_error",
    "entry_from_row",
    "error_record",
    "row_problem",
]

Kind = Literal["message", "reaction"]
#: What an entry's delivery returns: Message for message entries, Reaction for reactions.
R = TypeVar("R")

#: The ``entries`` columns, in the order :func:`entry_from_row` reads them.
COLUMNS = (
    "id, kind, channel, idempotency_key, body, status, attempts, created_at, "
    "next_attempt_at, lease_owner, lease_expires_at, last_error, error, response, "
    "possibly_delivered, lease_token, trace_context"
)


class _Waiter(Protocol):
    def wait(self, entry_id: int, timeout: float | None = None) -> Message | Reaction: ...


@attrs.frozen(kw_only=True)
class Operation:
    """One create operation as the drainer hands it to ``deliver``.

    Attributes:
        kind: ``"message"`` (``POST /api/messages``) or ``"reaction"`` (``POST /api/reactions``).
        body: the wire JSON body (camelCase).
        idempotency_key: the key chosen at enqueue time, kept across every resend.
        channel: the ordering lane: the channel id, or ``reaction/<message id>``.
    """

    kind: Kind
    body: dict[str, Any]
    idempotency_key: str
    channel: str


@attrs.frozen(kw_only=True)
class OutboxStats:
    """Counts per status, the age in seconds of the oldest pending entry (or None), and
    how this process's drainer is doing.

    What a monitor alerts on: :attr:`oldest_pending_age` (delivery is stuck) and
    :attr:`dead_letters` (messages that will not arrive unless retried).

    Attributes:
        drainer: None when no drainer of this process drains the outbox; ``"running"``;
            otherwise why one is not delivering (``"stopped"``, ``"stopped: ..."`` after a
            401/403, ``"paused: ..."`` while a circuit is open, ``"dead: ..."`` if one of
            its threads ended).
    """

    queued: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    expired: int = 0
    oldest_pending_age: float | None = None
    drainer: str | None = None

    @property
    def pending(self) -> int:
        """Entries still to deliver (``queued`` + ``sending``)."""
        return self.queued + self.sending

    @property
    def dead_letters(self) -> int:
        """Entries that will not be delivered unless retried: ``failed`` + ``expired``."""
        return self.failed + self.expired

    def to_json(self) -> dict[str, Any]:
        """The statistics as a JSON object (what ``chatsdk outbox status --json`` prints)."""
        return {
            "queued": self.queued,
            "sending": self.sending,
            "sent": self.sent,
            "failed": self.failed,
            "expired": self.expired,
            "pending": self.pending,
            "dead_letters": self.dead_letters,
            "oldest_pending_age": self.oldest_pending_age,
        }


@attrs.frozen(kw_only=True)
class FlushResult:
    """What :meth:`ChatClient.flush` or :meth:`ChatClient.close` left undelivered.

    True (as a boolean) when nothing is left and nothing expired: ``if not chat.flush(5): ...``.

    Attributes:
        pending: entries still ``queued`` or ``sending`` (for ``close()``: those this
            process queued; for ``flush()``: every process's). They stay on disk, and the
            next client on the file delivers them.
        path: the outbox file (None for a client without an outbox).
        expired: ``flush()`` only: entries that expired undelivered (``max_age``) since this
            process's previous flush, or since it opened the outbox; they are dead letters.
    """

    pending: int = 0
    path: str | None = None
    expired: int = 0

    def __bool__(self) -> bool:
        return self.pending == 0 and self.expired == 0


@attrs.frozen(kw_only=True)
class OutboxEntry(Generic[R]):
    """A snapshot of one outbox entry, read from the file at one moment.

    Attributes:
        id: the entry's id in the file.
        idempotency_key: the operation's ``Idempotency-Key``.
        status: ``queued``, ``sending``, ``sent``, ``failed`` or ``expired``.
        attempts: deliveries started so far.
        last_error: the last failure, as text (``None`` when there was none).
        operation: what is delivered.
        created_at: enqueue time (wall clock, seconds since the epoch; moved by a step of
            the wall clock while a running process holds the entry, see the README).
        next_attempt_at: earliest time of the next attempt (wall clock, moved likewise).
        possibly_delivered: a ``failed``/``expired`` entry that may have reached the server.
        trace_context: the trace context stored with the entry when tracing was on.
    """

    id: int
    idempotency_key: str
    status: str
    attempts: int
    last_error: str | None
    operation: Operation = attrs.field(repr=False)
    created_at: float = attrs.field(repr=False)
    next_attempt_at: float = attrs.field(repr=False)
    possibly_delivered: bool = attrs.field(default=False, repr=False)
    lease_owner: str | None = attrs.field(default=None, repr=False)
    lease_expires_at: float | None = attrs.field(default=None, repr=False)
    lease_token: str | None = attrs.field(default=None, repr=False, eq=False)
    #: the trace context of the span that queued the entry (W3C ``traceparent``...), if any.
    trace_context: dict[str, str] | None = attrs.field(default=None, repr=False, eq=False)
    _outbox: _Waiter = attrs.field(repr=False, eq=False)
    _error: dict[str, Any] | None = attrs.field(default=None, repr=False, eq=False)
    _response: str | None = attrs.field(default=None, repr=False, eq=False)

    def wait(self, timeout: float | None = None) -> R:
        """Block until the entry is delivered and return what the server created.

        Wakes at once when this process's drainer records the outcome; an outcome recorded
        by another process is noticed within a second.

        Raises:
            APIError: the permanent error that failed the entry (rebuilt from the file).
            OutboxEntryExpiredError: the entry reached ``max_age`` undelivered.
            OutboxError: the entry failed after ``max_attempts``, was purged, or was queued
                in a transaction (``connection=``) that has not committed.
            OutboxUnavailableError: the outbox's database was still unreachable when
                ``timeout`` passed (while it is down, the wait goes on).
            WaitTimeoutError: ``timeout`` seconds passed first; delivery goes on.
            ValueError: ``timeout`` is NaN or negative (None or infinity: no limit).
        """
        return cast(R, self._outbox.wait(self.id, timeout))

    def result(self) -> R:
        """The delivered object of a ``sent`` entry, or the error of a finished one."""
        if self.status == "sent":
            data = json.loads(self._response or "null")
            if self.operation.kind == "reaction":
                return cast(R, Reaction.from_json(data))
            return cast(R, Message.from_json(data))
        raise self._failure()

    def _failure(self) -> ChatSDKError:
        record = self._error or {}
        exc: ChatSDKError
        if self.status == "expired":
            exc = OutboxEntryExpiredError(
                f"outbox entry {self.id} expired before delivery"
                + (" (possibly delivered)" if self.possibly_delivered else "")
            )
        elif self.status == "failed" and record.get("status") is not None:
            status, code = int(record["status"]), record.get("code")
            exc = error_class(status, code)(
                status, code, str(record.get("message") or ""), body=record.get("body")
            )
        elif self.status == "failed":
            exc = OutboxError(f"outbox entry {self.id} failed: {self.last_error}")
        else:
            exc = OutboxError(f"outbox entry {self.id} is {self.status}, not finished")
        exc.attempts = self.attempts
        exc.idempotency_key = self.idempotency_key
        return exc


def error_record(exc: BaseException, *, retry_after: float | None = None) -> dict[str, Any]:
    """The JSON form of an error stored with an entry (enough to rebuild an APIError)."""
    record: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, APIError):
        record.update(status=exc.status, code=exc.code, message=exc.message)
        if isinstance(exc.body, dict):
            record["body"] = exc.body
    if retry_after is not None:
        record["retry_after"] = retry_after
    return record


def entry_from_row(outbox: _Waiter, row: tuple[Any, ...]) -> OutboxEntry[Any]:
    """Build an :class:`OutboxEntry` from a row of :data:`COLUMNS`."""
    (
        entry_id,
        kind,
        channel,
        key,
        body,
        status,
        attempts,
        created_at,
        next_at,
        lease_owner,
        lease_expires,
        last_error,
        error,
        response,
        possibly,
        lease_token,
        trace_context,
    ) = row
    op = Operation(kind=kind, body=_body(body), idempotency_key=key, channel=channel)
    return OutboxEntry(
        id=entry_id,
        idempotency_key=key,
        status=status,
        attempts=attempts,
        last_error=last_error,
        operation=op,
        created_at=created_at,
        next_attempt_at=next_at,
        possibly_delivered=bool(possibly),
        lease_owner=lease_owner,
        lease_expires_at=lease_expires,
        lease_token=lease_token,
        outbox=outbox,
        error=_error(error),
        response=response,
        trace_context=_trace_context(trace_context),
    )


def row_problem(row: tuple[Any, ...]) -> str | None:
    """Why a row of :data:`COLUMNS` cannot be delivered (None when it can)."""
    kind, body = row[1], row[4]
    if kind not in ("message", "reaction"):
        return f"unknown kind {kind!r}"
    try:
        decoded = json.loads(body)
    except (TypeError, ValueError) as exc:
        return f"body is not JSON: {exc}"
    if not isinstance(decoded, dict):
        return f"body is a JSON {type(decoded).__name__}, not an object"
    return None


def _body(text: Any) -> dict[str, Any]:
    """An entry's stored body; one that cannot be decoded is shown as its raw text."""
    try:
        decoded = json.loads(text)
    except (TypeError, ValueError):
        decoded = None
    return decoded if isinstance(decoded, dict) else {"undecodable": str(text)}


def _trace_context(text: str | None) -> dict[str, str] | None:
    """A stored trace context; one that cannot be decoded is dropped (the span goes unlinked)."""
    try:
        decoded = json.loads(text) if text is not None else None
    except ValueError:
        return None
    if not isinstance(decoded, dict):
        return None
    return {str(k): str(v) for k, v in decoded.items()}


def _error(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        decoded = json.loads(text)
    except ValueError:
        return {"type": "OutboxError", "message": text}
    return decoded if isinstance(decoded, dict) else {"type": "OutboxError", "message": text}


def describe_error(record: dict[str, Any]) -> str:
    """One line of text for a stored error record."""
    if record.get("status") is not None:
        code = f" {record['code']}" if record.get("code") else ""
        return f"HTTP {record['status']}{code}: {record['message']}"
    return f"{record['type']}: {record['message']}"
