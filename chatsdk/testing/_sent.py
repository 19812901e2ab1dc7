"""What an :class:`~chatsdk.testing.InMemoryTransport` saw: each attempt, and each create."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, overload

import attrs

from chatsdk._models import Message, Reaction

__all__ = ["Attempt", "Sent", "SentKind", "SentLog", "SentSource"]


class SentSource(Protocol):
    """Where a :class:`SentLog` reads from (the transport)."""

    def _sent_items(self) -> list[Sent]: ...  # pragma: no cover - protocol

    def _clear_sent(self) -> None: ...  # pragma: no cover - protocol


SentKind = Literal["message", "reaction"]


@attrs.frozen(kw_only=True)
class Sent:
    """One message or reaction the code under test created (replays are not repeated).

    Attributes:
        kind: ``"message"`` or ``"reaction"``.
        data: the created object in wire JSON (camelCase, as API.md).
        idempotency_key: the ``Idempotency-Key`` it was created under (None without one).
    """

    kind: SentKind
    data: dict[str, Any]
    idempotency_key: str | None

    @property
    def message(self) -> Message:
        """The created :class:`~chatsdk.Message` (TypeError for a reaction)."""
        if self.kind != "message":
            raise TypeError("this Sent is a reaction; use .reaction")
        return Message.from_json(self.data)

    @property
    def reaction(self) -> Reaction:
        """The created :class:`~chatsdk.Reaction` (TypeError for a message)."""
        if self.kind != "reaction":
            raise TypeError("this Sent is a message; use .message")
        return Reaction.from_json(self.data)

    @property
    def text(self) -> str | None:
        """A message's text (None for a reaction): the usual thing a test checks."""
        value = self.data.get("text")
        return value if isinstance(value, str) else None


@attrs.frozen(kw_only=True)
class Attempt:
    """One HTTP send the transport saw.

    Attributes:
        method: the HTTP method.
        path: the path (percent-encoded, without the query).
        idempotency_key: the request's ``Idempotency-Key``, if any.
        status: the status answered, or None when the attempt failed without a response.
        fault: the scripted fault applied (``"fail"``, ``"drop_after"``, ``"outage"``), if any.
    """

    method: str
    path: str
    idempotency_key: str | None
    status: int | None
    fault: str | None = None


class SentLog(Sequence[Sent]):
    """A live, read-only view of what a transport created, in creation order."""

    def __init__(self, source: SentSource) -> None:
        self._transport = source

    def _items(self) -> list[Sent]:
        return self._transport._sent_items()

    @overload
    def __getitem__(self, index: int) -> Sent: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Sent]: ...

    def __getitem__(self, index: int | slice) -> Sent | Sequence[Sent]:
        return self._items()[index]

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[Sent]:
        return iter(self._items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SentLog):
            return self._items() == other._items()
        if isinstance(other, Sequence):
            return self._items() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def messages(self) -> list[Message]:
        """The created messages, in order."""
        return [s.message for s in self._items() if s.kind == "message"]

    @property
    def reactions(self) -> list[Reaction]:
        """The created reactions, in order."""
        return [s.reaction for s in self._items() if s.kind == "reaction"]

    def clear(self) -> None:
        """Forget what was recorded so far (the transport's data stays)."""
        self._transport._clear_sent()

    def __repr__(self) -> str:
        return f"SentLog({self._items()!r})"
