"""Argument checks of the wire contract (API.md), run before any I/O.

Each check raises :class:`~chatsdk.ValidationError` naming the API field; the builders return
the wire body so the client, the outbox and the deduplication window share one definition.
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import urllib3

from chatsdk._errors import ConfigurationError, ValidationError
from chatsdk._models import Attachment

__all__ = [
    "check_api_key",
    "check_id",
    "check_idempotency_key",
    "check_limit",
    "check_reaction",
    "check_seconds",
    "check_timeout",
    "check_wire_body",
    "message_body",
    "reaction_body",
    "text_body",
]

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
MAX_TEXT = 4000
MAX_ATTACHMENTS = 10
MAX_REACTION = 64


MAX_API_KEY = 4096


def check_api_key(value: object) -> str:
    """An API key: 1..4096 visible ASCII characters (no whitespace or control characters).

    The error says what is wrong with the key, never what the key is: it may end up in logs,
    crash reports and terminals.

    Raises:
        ConfigurationError: the key is not a string, is empty or too long, or has a character
            that cannot go in an ``X-API-Key`` header as it is.
    """
    if not isinstance(value, str):
        raise ConfigurationError(f"api_key must be a string, got {type(value).__name__}")
    if not value:
        raise ConfigurationError("api_key must not be empty")
    if len(value) > MAX_API_KEY:
        raise ConfigurationError(f"api_key is longer than {MAX_API_KEY} characters")
    if value != value.strip():
        raise ConfigurationError(
            "api_key has leading or trailing whitespace (a newline from a key file or a "
            "secret?): strip it"
        )
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigurationError(
            "api_key must be visible ASCII characters only (it has whitespace, a control "
            "character or a non-ASCII character)"
        )
    return value


def _check_str(field: str, value: object) -> str:
    """A string that is valid Unicode: a lone surrogate cannot be sent as UTF-8."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "must be valid Unicode (it has a lone surrogate)") from None
    return value


def check_channel(value: object) -> str:
    """A channel id: 1..128 chars of ``[A-Za-z0-9_.:-]``."""
    text = _check_str("channelId", value)
    if not _CHANNEL_RE.fullmatch(text):
        raise ValidationError("channelId", "must be 1..128 characters of [A-Za-z0-9_.:-]")
    return text


def check_id(field: str, value: object) -> str:
    """A message id: a non-empty string without ``/`` or control characters."""
    text = _check_str(field, value)
    if not text or len(text) > 255 or any(c == "/" or ord(c) < 0x20 for c in text):
        raise ValidationError(field, "must be 1..255 characters, no '/' or control characters")
    return text


def check_text(value: object) -> str:
    """Message text: 1..4000 characters after stripping, no NUL."""
    text = _check_str("text", value)
    if "\x00" in text:
        raise ValidationError("text", "must not contain NUL characters")
    if not 1 <= len(text.strip()) <= MAX_TEXT:
        raise ValidationError("text", f"must be 1..{MAX_TEXT} characters after stripping")
    return text


def check_idempotency_key(value: object) -> str:
    """An ``Idempotency-Key``: 1..255 visible ASCII characters."""
    text = _check_str("idempotencyKey", value)
    if not _KEY_RE.fullmatch(text):
        raise ValidationError("idempotencyKey", "must be 1..255 visible ASCII characters")
    return text


def check_limit(value: object) -> int:
    """A page size: an int in 1..200."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 200:
        raise ValidationError("limit", f"must be an int in 1..200, got {value!r}")
    return value


def _attachment(index: int, item: object) -> dict[str, Any]:
    field = f"attachments[{index}]"
    if isinstance(item, Attachment):
        item = item.to_json()
    if not isinstance(item, Mapping):
        raise ValidationError(
            field, f"must be an Attachment or a mapping, got {type(item).__name__}"
        )
    for key in ("type", "url"):
        if not _check_str(f"{field}.{key}", item.get(key)):
            raise ValidationError(f"{field}.{key}", "must be a non-empty string")
    name = item.get("name")
    if name is not None:
        _check_str(f"{field}.name", name)
    return {"type": item["type"], "url": item["url"], "name": name}


def check_attachments(value: object) -> list[dict[str, Any]]:
    """At most 10 attachments (an iterable of :class:`Attachment` or mappings), as wire JSON."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValidationError(
            "attachments",
            f"must be a sequence of attachments (default: none), got {type(value).__name__}",
        )
    # One more than allowed is enough to refuse: an endless iterable must not hang us.
    first = itertools.islice(value, MAX_ATTACHMENTS + 1)
    items = [_attachment(i, a) for i, a in enumerate(first)]
    if len(items) > MAX_ATTACHMENTS:
        raise ValidationError("attachments", f"at most {MAX_ATTACHMENTS} allowed")
    return items


#: Unicode categories a reaction may not hold: controls (NUL, CR, LF, tab, DEL, C1) and
#: line/paragraph separators. Format characters (Cf) stay allowed: emoji ZWJ sequences use them.
_REACTION_FORBIDDEN = frozenset({"Cc", "Zl", "Zp"})


def check_reaction(value: object) -> str:
    """A reaction: 1..64 characters, not only whitespace, no control characters or line breaks."""
    text = _check_str("reaction", value)
    if not 1 <= len(text) <= MAX_REACTION:
        raise ValidationError("reaction", f"must be 1..{MAX_REACTION} characters")
    if any(unicodedata.category(c) in _REACTION_FORBIDDEN for c in text):
        raise ValidationError("reaction", "must not contain control characters or line breaks")
    if text.isspace():
        raise ValidationError("reaction", "must not be only whitespace")
    return text


def message_body(
    channel_id: object,
    text: object,
    attachments: Iterable[Attachment | Mapping[str, Any]] = (),
    parent_id: object = None,
) -> dict[str, Any]:
    """The wire body of ``POST /api/messages``, validated."""
    return {
        "channelId": check_channel(channel_id),
        "text": check_text(text),
        "attachments": check_attachments(attachments),
        "parentId": None if parent_id is None else check_id("parentId", parent_id),
    }


def reaction_body(message_id: object, reaction: object) -> dict[str, Any]:
    """The wire body of ``POST /api/reactions``, validated."""
    return {"messageId": check_id("messageId", message_id), "reaction": check_reaction(reaction)}


def check_wire_body(kind: str, body: object) -> None:
    """What :meth:`Outbox.enqueue <chatsdk.Outbox.enqueue>` checks in a body given to it.

    A body made elsewhere is stored as given, and the server judges its contract (a 400
    dead-letters it); what is refused here is what could never be sent as valid JSON and
    what ``send_*``/``queue_*`` refuse about its shape: something other than a mapping of
    JSON values, a lone surrogate or a non-finite number anywhere, ``attachments`` that are
    not a sequence of attachments, a malformed ``reaction``.
    """
    if not isinstance(body, Mapping):
        raise ValidationError("body", f"must be a mapping, got {type(body).__name__}")
    _check_json("", body)
    if "attachments" in body:
        check_attachments(body["attachments"])
    if kind == "reaction" and "reaction" in body:
        check_reaction(body["reaction"])


def _check_json(field: str, value: object) -> None:
    """``value`` (at ``field``, "" for the body itself) is JSON that encodes as valid UTF-8."""
    if isinstance(value, str):
        _check_str(field, value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(field, f"must be a finite number, got {value!r}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = _check_str(f"{field or 'body'} (a key)", key)
            _check_json(f"{field}.{name}" if field else name, item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(f"{field}[{i}]", item)
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise ValidationError(field, f"must be a JSON value, got {type(value).__name__}")


def text_body(text: object) -> dict[str, Any]:
    """The wire body of ``PATCH /api/messages/{id}``, validated."""
    return {"text": check_text(text)}


# Durations and other numbers of public parameters, checked at the call that takes them.


def check_seconds(
    name: str,
    value: object,
    *,
    none: bool = False,
    positive: bool = False,
    error: type[ValueError] = ValueError,
) -> float | None:
    """Seconds given to a public parameter, checked where they are given.

    NaN and negative numbers (and 0, where ``positive``) are refused: compared with
    anything, NaN is never "past", so a wait for NaN seconds never ends. Infinity means
    "no limit" only where None does (``none``): both then give None; elsewhere it is
    refused, as no sleep or socket can take it.

    Raises:
        ValueError: (or ``error``, a subclass) the number is not a valid duration.
        TypeError: ``value`` is not a real number (bool is not one).
    """
    seconds = _number(name, value, none=none, positive=positive, error=error, unit=" seconds")
    return None if seconds is None or math.isinf(seconds) else seconds


def check_timeout(
    value: object, *, error: type[ValueError] = ValueError
) -> float | tuple[float | None, float | None] | urllib3.Timeout | None:
    """A requests ``timeout``: seconds, a ``(connect, read)`` pair, a urllib3 ``Timeout``.

    Each number must be > 0 (urllib3 refuses 0); None or infinity in a pair is no limit for
    that phase; a single infinity is ``(None, None)``. None stays None (the default applies).
    """
    if value is None or isinstance(value, urllib3.Timeout):
        return value
    if isinstance(value, tuple):
        if len(value) != 2:
            raise error(f"timeout must be seconds or a (connect, read) pair, got {value!r}")
        connect, read = value
        return (
            check_seconds("connect timeout", connect, none=True, positive=True, error=error),
            check_seconds("read timeout", read, none=True, positive=True, error=error),
        )
    seconds = check_seconds("timeout", value, none=True, positive=True, error=error)
    return (None, None) if seconds is None else seconds


def _number(
    name: str,
    value: object,
    *,
    none: bool = False,
    positive: bool = False,
    infinite: bool = True,
    error: type[ValueError] = ValueError,
    unit: str = "",
) -> float | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{unit}, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or number < 0 or (positive and number == 0):
        raise error(f"{name} must be {'> 0' if positive else '>= 0'}{unit}, got {value!r}")
    if math.isinf(number) and not (none and infinite):
        hint = " (None for no limit)" if none else ""
        raise error(f"{name} must be a finite number{unit}{hint}, got {value!r}")
    return number


# Attribute validators of the frozen policy objects (attrs ``validator=``).


def no_limit_if_infinite(value: Any) -> Any:
    """attrs ``converter=`` of a limit whose None means "no limit": infinity becomes None."""
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return None
    return value


def positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    _number(attribute.name, value, positive=True)


def non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    _number(attribute.name, value)


def optional_positive(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    # A validator cannot turn infinity into None: it is refused, with the way to say it.
    _number(attribute.name, value, none=True, positive=True, infinite=False)


def statuses(_inst: object, attribute: attrs.Attribute[frozenset[int]], value: object) -> None:
    if not isinstance(value, frozenset) or not all(
        isinstance(s, int) and 100 <= s <= 599 for s in value
    ):
        raise ValueError(f"{attribute.name} must be a frozenset of HTTP status codes")
