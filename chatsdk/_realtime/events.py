"""Typed chat events decoded from realtime publications (API.md, "Realtime").

Publication ``data`` on a chat channel is
``{"type": "message.new"|"message.updated"|"message.deleted"|"reaction.added"|
"reaction.removed", "message"|"reaction": {...}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Union

import attrs

from chatsdk._models import Message, Reaction
from chatsdk._realtime.subscription import Publication

log = logging.getLogger(__name__)

MESSAGE_EVENT_TYPES = frozenset({"message.new", "message.updated", "message.deleted"})
REACTION_EVENT_TYPES = frozenset({"reaction.added", "reaction.removed"})


@attrs.frozen
class MessageEvent:
    """A message was created, edited or deleted.

    Attributes:
        type: ``message.new``, ``message.updated`` or ``message.deleted``.
        channel_id: the chat channel (without the ``chat:`` prefix).
        message: the message as the server published it.
        offset: the publication's offset in the channel stream.
    """

    type: str
    channel_id: str
    message: Message
    offset: int = 0


@attrs.frozen
class ReactionEvent:
    """A reaction was added or removed.

    Attributes:
        type: ``reaction.added`` or ``reaction.removed``.
        channel_id: the chat channel (without the ``chat:`` prefix).
        reaction: the reaction as the server published it.
        offset: the publication's offset in the channel stream.
    """

    type: str
    channel_id: str
    reaction: Reaction
    offset: int = 0


ChatEvent = Union[MessageEvent, ReactionEvent]


def parse_event(channel_id: str, pub: Publication) -> ChatEvent:
    """Turn a chat channel publication into a typed event.

    Raises:
        ValueError: the data is not a known event or a field is malformed.
    """
    data = pub.data
    if not isinstance(data, dict):
        raise ValueError("publication data is not an object")
    kind = data.get("type")
    if kind in MESSAGE_EVENT_TYPES:
        return MessageEvent(
            type=kind,
            channel_id=channel_id,
            message=Message.from_json(data.get("message")),
            offset=pub.offset,
        )
    if kind in REACTION_EVENT_TYPES:
        return ReactionEvent(
            type=kind,
            channel_id=channel_id,
            reaction=Reaction.from_json(data.get("reaction")),
            offset=pub.offset,
        )
    raise ValueError(f"unknown event type {str(kind)[:40]!r}")


def event_handler(
    channel_id: str, on_event: Callable[[ChatEvent], object]
) -> Callable[[Publication], None]:
    """An ``on_publication`` callback that hands typed events to ``on_event``.

    Publications that are not valid chat events are logged and skipped.
    """

    def handle(pub: Publication) -> None:
        try:
            event = parse_event(channel_id, pub)
        except ValueError as exc:
            log.warning(
                "skipped a publication on %s at offset %d: %s", pub.channel, pub.offset, exc
            )
            return
        on_event(event)

    return handle
