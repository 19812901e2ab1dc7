"""Immutable data models of the wire contract (camelCase on the wire, snake_case here)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs

__all__ = ["Attachment", "Message", "Reaction"]


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string or null, got {type(value).__name__}")
    return value


def _time(data: dict[str, Any], key: str) -> dt.datetime:
    text = _str(data, key)
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"field {key!r} is not an RFC 3339 time: {text[:40]!r}") from None


def _opt_time(data: dict[str, Any], key: str) -> dt.datetime | None:
    return None if data.get(key) is None else _time(data, key)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _object(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


@attrs.frozen(kw_only=True)
class Attachment:
    """A file or link attached to a message."""

    type: str
    url: str
    name: str | None = None

    @classmethod
    def from_json(cls, data: object) -> Attachment:
        """Build from the wire form; raises ``ValueError`` naming the bad field."""
        obj = _object(data)
        return cls(type=_str(obj, "type"), url=_str(obj, "url"), name=_opt_str(obj, "name"))

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {"type": self.type, "url": self.url, "name": self.name}


@attrs.frozen(kw_only=True)
class Message:
    """A chat message.

    Attributes:
        replayed: True when the server (``Idempotent-Replayed``) or the client's multi-tap
            window answered with a message created by an earlier request with the same intent.
    """

    id: str
    channel_id: str
    text: str
    user_id: str
    created_at: dt.datetime
    attachments: tuple[Attachment, ...] = ()
    parent_id: str | None = None
    updated_at: dt.datetime | None = None
    replayed: bool = attrs.field(default=False, eq=False)

    @classmethod
    def from_json(cls, data: object, replayed: bool = False) -> Message:
        """Build from the wire form; raises ``ValueError`` naming the bad field."""
        obj = _object(data)
        raw = obj.get("attachments") or []
        if not isinstance(raw, list):
            raise ValueError("field 'attachments' must be a list")
        return cls(
            id=_str(obj, "id"),
            channel_id=_str(obj, "channelId"),
            text=_str(obj, "text"),
            user_id=_str(obj, "userId"),
            created_at=_time(obj, "createdAt"),
            attachments=tuple(Attachment.from_json(a) for a in raw),
            parent_id=_opt_str(obj, "parentId"),
            updated_at=_opt_time(obj, "updatedAt"),
            replayed=replayed,
        )

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {
            "id": self.id,
            "channelId": self.channel_id,
            "text": self.text,
            "attachments": [a.to_json() for a in self.attachments],
            "parentId": self.parent_id,
            "userId": self.user_id,
            "createdAt": _iso(self.created_at),
            "updatedAt": None if self.updated_at is None else _iso(self.updated_at),
        }


@attrs.frozen(kw_only=True)
class Reaction:
    """A reaction one user added to a message.

    Attributes:
        replayed: True when an earlier request with the same intent created it.
    """

    message_id: str
    reaction: str
    user_id: str
    created_at: dt.datetime
    replayed: bool = attrs.field(default=False, eq=False)

    @classmethod
    def from_json(cls, data: object, replayed: bool = False) -> Reaction:
        """Build from the wire form; raises ``ValueError`` naming the bad field."""
        obj = _object(data)
        return cls(
            message_id=_str(obj, "messageId"),
            reaction=_str(obj, "reaction"),
            user_id=_str(obj, "userId"),
            created_at=_time(obj, "createdAt"),
            replayed=replayed,
        )

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {
            "messageId": self.message_id,
            "reaction": self.reaction,
            "userId": self.user_id,
            "createdAt": _iso(self.created_at),
        }
