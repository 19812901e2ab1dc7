"""Centrifugo client protocol v2 (JSON): frame encoding and validated decoding.

Pure functions and value objects, no I/O. Decoding never raises on bad input: anything that
does not match the protocol (bad JSON, missing or wrongly typed fields) is logged and dropped,
so the caller's state is only ever changed by well-formed replies and pushes.

Wire rules (see ``REALTIME.md``): one frame may carry several JSON objects separated by
``\\n``; omitted fields mean zero values (``offset`` 0, ``epoch`` "", booleans false); a
server ping is the empty object ``{}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Union

import attrs

log = logging.getLogger(__name__)

#: The server's limit for one client frame; bigger batches are split below it.
MAX_FRAME_BYTES = 64 * 1024
#: Headroom kept under :data:`MAX_FRAME_BYTES` (framing, future fields).
_FRAME_MARGIN = 1024
#: Largest duration (seconds) accepted in ``ping``/``ttl``: about 31 years.
_MAX_SECONDS = 10**9
#: Longest excerpt of a dropped frame written to the log.
_LOG_EXCERPT = 120


class ProtocolViolation(ValueError):
    """A reply or push does not match the protocol; the caller logs and drops it."""


@attrs.frozen
class Ping:
    """A server ping (``{}``)."""


@attrs.frozen
class ReplyError:
    """The ``error`` object of a reply.

    Attributes:
        code: the protocol error code (100 internal, 109 token expired, ...).
        message: the server's text.
        temporary: the server says the same command may succeed later.
    """

    code: int
    message: str = ""
    temporary: bool = False

    @property
    def retryable(self) -> bool:
        """True when the operation should be retried with backoff (REALTIME.md rules)."""
        return self.temporary or self.code < 100 or self.code == 109


@attrs.frozen
class Reply:
    """A reply to a command: ``result`` is the object under the command's key, if any."""

    id: int
    body: Mapping[str, Any]
    error: ReplyError | None = None

    def result(self, kind: str) -> Mapping[str, Any]:
        """The result object for command ``kind`` (empty when the server omitted it).

        Raises:
            ProtocolViolation: the key is present but not an object.
        """
        value = self.body.get(kind, {})
        if not isinstance(value, dict):
            raise ProtocolViolation(f"{kind} result is not an object")
        return value


@attrs.frozen
class RawPublication:
    """A publication as it came over the wire, before a subscription claims it."""

    data: Any
    offset: int = 0
    info: Mapping[str, Any] | None = None


@attrs.frozen
class PublicationPush:
    """``{"push":{"channel":...,"pub":{...}}}``."""

    channel: str
    pub: RawPublication


@attrs.frozen
class UnsubscribePush:
    """``{"push":{"channel":...,"unsubscribe":{"code":...,"reason":...}}}``."""

    channel: str
    code: int
    reason: str = ""

    @property
    def resubscribe(self) -> bool:
        """Codes from 2500 up ask the client to subscribe again (recovering)."""
        return self.code >= 2500


@attrs.frozen
class OtherPush:
    """A well-formed push chatsdk does not act on (join, leave, message, ...)."""

    channel: str
    kind: str


Item = Union[Ping, Reply, PublicationPush, UnsubscribePush, OtherPush]


@attrs.frozen
class ConnectResult:
    """The ``connect`` reply (zero values for omitted fields)."""

    client: str = ""
    version: str = ""
    ping: float = 0.0
    pong: bool = False
    expires: bool = False
    ttl: float = 0.0


@attrs.frozen
class SubscribeResult:
    """The ``subscribe`` reply (zero values for omitted fields)."""

    recoverable: bool = False
    epoch: str = ""
    offset: int = 0
    recovered: bool = False
    was_recovering: bool = False
    publications: tuple[RawPublication, ...] = ()


@attrs.frozen
class RefreshResult:
    """The ``refresh`` reply."""

    expires: bool = False
    ttl: float = 0.0


# ---------------------------------------------------------------------------------------
# field helpers


def _excerpt(text: str) -> str:
    flat = text if len(text) <= _LOG_EXCERPT else text[:_LOG_EXCERPT] + "..."
    return repr(flat)


def _get_int(obj: Mapping[str, Any], key: str, *, minimum: int = 0) -> int:
    value = obj.get(key, 0)
    # bool is an int in Python but never one in the protocol
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProtocolViolation(f"{key!r} must be an integer >= {minimum}")
    return value


def _get_number(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ProtocolViolation(f"{key!r} must be a non-negative number")
    if value > _MAX_SECONDS:
        raise ProtocolViolation(f"{key!r} is out of range")
    return float(value)


def _get_str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise ProtocolViolation(f"{key!r} must be a string")
    return value


def _get_bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolViolation(f"{key!r} must be a boolean")
    return value


def _get_obj(obj: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolViolation(f"{key!r} must be an object")
    return value


# ---------------------------------------------------------------------------------------
# decoding


def parse_publication(obj: Any) -> RawPublication:
    """Validate one publication object (from a push or a subscribe reply).

    Raises:
        ProtocolViolation: not an object, or a field of the wrong type.
    """
    if not isinstance(obj, dict):
        raise ProtocolViolation("publication must be an object")
    return RawPublication(
        data=obj.get("data"), offset=_get_int(obj, "offset"), info=_get_obj(obj, "info")
    )


def _parse_push(push: Any) -> Item:
    if not isinstance(push, dict):
        raise ProtocolViolation("push must be an object")
    channel = _get_str(push, "channel")
    if "pub" in push:
        if not channel:
            raise ProtocolViolation("publication push without a channel")
        return PublicationPush(channel=channel, pub=parse_publication(push["pub"]))
    if "unsubscribe" in push:
        body = push["unsubscribe"]
        if not isinstance(body, dict):
            raise ProtocolViolation("'unsubscribe' must be an object")
        if not channel:
            raise ProtocolViolation("unsubscribe push without a channel")
        return UnsubscribePush(
            channel=channel, code=_get_int(body, "code"), reason=_get_str(body, "reason")
        )
    kinds = [key for key in push if key != "channel"]
    if len(kinds) != 1 or not isinstance(push[kinds[0]], dict):
        raise ProtocolViolation("push must carry exactly one object")
    return OtherPush(channel=channel, kind=kinds[0])


def parse_item(obj: Any) -> Item:
    """Turn one decoded JSON value into a protocol item.

    Raises:
        ProtocolViolation: the value is not a ping, a reply or a push.
    """
    if not isinstance(obj, dict):
        raise ProtocolViolation("not a JSON object")
    if not obj:
        return Ping()
    if "push" in obj:
        if obj.get("id", 0) != 0:
            raise ProtocolViolation("push with an id")
        return _parse_push(obj["push"])
    reply_id = _get_int(obj, "id", minimum=1)
    error: ReplyError | None = None
    if "error" in obj:
        err = _get_obj(obj, "error")
        if err is None:
            raise ProtocolViolation("'error' must be an object")
        error = ReplyError(
            code=_get_int(err, "code"),
            message=_get_str(err, "message"),
            temporary=_get_bool(err, "temporary"),
        )
    return Reply(id=reply_id, body=obj, error=error)


def decode_frame(
    text: str | bytes, on_drop: Callable[[str], object] | None = None
) -> Iterator[Item]:
    """Yield the valid items of one frame; log and drop everything else.

    Args:
        text: the frame's payload (several JSON objects may be separated by newlines).
        on_drop: called with a short reason for every line dropped (for counters).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("dropped a realtime frame that is not UTF-8 (%d bytes)", len(text))
            if on_drop is not None:
                on_drop("not utf-8")
            return
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            log.warning("dropped a realtime line that is not JSON: %s", _excerpt(line))
            if on_drop is not None:
                on_drop("not json")
            continue
        try:
            item = parse_item(obj)
        except (ProtocolViolation, RecursionError) as exc:
            log.warning("dropped a malformed realtime line (%s): %s", exc, _excerpt(line))
            if on_drop is not None:
                on_drop(str(exc))
            continue
        yield item


def parse_connect_result(obj: Mapping[str, Any]) -> ConnectResult:
    """Validate a connect result.

    Raises:
        ProtocolViolation: a field of the wrong type.
    """
    return ConnectResult(
        client=_get_str(obj, "client"),
        version=_get_str(obj, "version"),
        ping=_get_number(obj, "ping"),
        pong=_get_bool(obj, "pong"),
        expires=_get_bool(obj, "expires"),
        ttl=_get_number(obj, "ttl"),
    )


def parse_subscribe_result(obj: Mapping[str, Any]) -> SubscribeResult:
    """Validate a subscribe result, its publications included.

    Raises:
        ProtocolViolation: a field of the wrong type.
    """
    pubs = obj.get("publications", [])
    if not isinstance(pubs, list):
        raise ProtocolViolation("'publications' must be a list")
    return SubscribeResult(
        recoverable=_get_bool(obj, "recoverable"),
        epoch=_get_str(obj, "epoch"),
        offset=_get_int(obj, "offset"),
        recovered=_get_bool(obj, "recovered"),
        was_recovering=_get_bool(obj, "was_recovering"),
        publications=tuple(parse_publication(p) for p in pubs),
    )


def parse_refresh_result(obj: Mapping[str, Any]) -> RefreshResult:
    """Validate a refresh result.

    Raises:
        ProtocolViolation: a field of the wrong type.
    """
    return RefreshResult(expires=_get_bool(obj, "expires"), ttl=_get_number(obj, "ttl"))


# ---------------------------------------------------------------------------------------
# encoding


def encode(command: Mapping[str, Any]) -> str:
    """One command as compact JSON."""
    return json.dumps(command, separators=(",", ":"))


def batch_frames(
    commands: Sequence[Mapping[str, Any]], *, limit: int = MAX_FRAME_BYTES
) -> list[str]:
    """Join commands with newlines into as few frames as fit under ``limit`` bytes.

    A single command bigger than the limit goes alone in its frame (the server will refuse it;
    nothing smaller can be done about it here).
    """
    budget = max(1, limit - _FRAME_MARGIN)
    frames: list[str] = []
    current: list[str] = []
    size = 0
    for command in commands:
        line = encode(command)
        length = len(line.encode("utf-8"))
        if length > budget:
            log.warning("a realtime command of %d bytes exceeds the frame limit", length)
        extra = length + (1 if current else 0)
        if current and size + extra > budget:
            frames.append("\n".join(current))
            current, size = [], 0
            extra = length
        current.append(line)
        size += extra
    if current:
        frames.append("\n".join(current))
    return frames
