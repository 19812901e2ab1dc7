"""Wire rules of API.md shared by the reference server's modules: errors, times, validation.

Validation functions take the decoded JSON and return clean values, or raise
:class:`ApiError` (400 ``invalid_request``) whose message starts with the offending field's
wire name, e.g. ``"channelId: must be 1..128 characters of [A-Za-z0-9_.:-]"``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ERROR_CODES",
    "INJECTED_MESSAGES",
    "MAX_ATTACHMENTS",
    "MAX_BODY_BYTES",
    "MAX_REACTION_CHARS",
    "MAX_TEXT_CHARS",
    "ApiError",
    "error_body",
    "rfc3339",
    "validate_channel_id",
    "validate_idempotency_key",
    "validate_limit",
    "validate_message_create",
    "validate_message_edit",
    "validate_reaction",
    "validate_reaction_create",
]

#: Largest request body accepted (bytes); larger bodies get ``413 payload_too_large``.
MAX_BODY_BYTES = 256 * 1024
MAX_TEXT_CHARS = 4000
MAX_ATTACHMENTS = 10
MAX_REACTION_CHARS = 64
MAX_ID_CHARS = 128

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")

#: The error code of each status, as in API.md.
ERROR_CODES: Mapping[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "idempotency_key_in_use",
    413: "payload_too_large",
    422: "idempotency_key_reused",
    429: "rate_limited",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


#: The message of each status a fault injects (the reference server's and the in-memory
#: transport's).
INJECTED_MESSAGES: Mapping[int, str] = {
    429: "too many requests, slow down",
    500: "internal server error (injected)",
    502: "bad gateway (injected)",
    503: "service unavailable (injected)",
    504: "gateway timeout (injected)",
}


class ApiError(Exception):
    """An error answer: status, snake_case code, message and extra headers.

    Args:
        status: the HTTP status.
        message: the human-readable message (for 400, starting with the field name).
        code: the error code; by default the one API.md gives for ``status``.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or ERROR_CODES.get(status, "error")
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> dict[str, Any]:
    """``{"error": {"code": code, "message": message}}``."""
    return {"error": {"code": code, "message": message}}


def invalid(field: str, problem: str) -> ApiError:
    """A 400 naming ``field``."""
    return ApiError(400, f"{field}: {problem}")


def rfc3339(when: float) -> str:
    """RFC 3339 UTC time with milliseconds and a ``Z``, from seconds since the epoch."""
    stamp = dt.datetime.fromtimestamp(when, tz=dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    return body


def _string(body: Mapping[str, Any], field: str) -> str:
    if field not in body:
        raise invalid(field, "is required")
    value = body[field]
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    return value


def _optional_string(body: Mapping[str, Any], field: str, wire_name: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise invalid(wire_name, "must be a string or null")
    return value


def validate_channel_id(value: object, field: str = "channelId") -> str:
    """A channel id: 1..128 characters of ``[A-Za-z0-9_.:-]``."""
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    if not _CHANNEL_RE.fullmatch(value):
        raise invalid(field, "must be 1..128 characters of [A-Za-z0-9_.:-]")
    return value


def _validate_text(value: str, field: str = "text") -> str:
    if "\x00" in value:
        raise invalid(field, "must not contain NUL characters")
    stripped = len(value.strip())
    if stripped < 1:
        raise invalid(field, "must not be empty or only whitespace")
    if stripped > MAX_TEXT_CHARS:
        raise invalid(field, f"must be at most {MAX_TEXT_CHARS} characters after stripping")
    return value


def _validate_id(value: str, field: str) -> str:
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise invalid(field, f"must be 1..{MAX_ID_CHARS} characters")
    return value


def _validate_attachments(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("attachments", "must be a list")
    if len(value) > MAX_ATTACHMENTS:
        raise invalid("attachments", f"must have at most {MAX_ATTACHMENTS} items")
    clean: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"attachments[{index}]"
        if not isinstance(item, dict):
            raise invalid(where, "must be an object")
        kind = _string(item, "type") if "type" in item else None
        if kind is None:
            raise invalid(f"{where}.type", "is required")
        if not kind:
            raise invalid(f"{where}.type", "must not be empty")
        if "url" not in item:
            raise invalid(f"{where}.url", "is required")
        url = item["url"]
        if not isinstance(url, str) or not url:
            raise invalid(f"{where}.url", "must be a non-empty string")
        name = _optional_string(item, "name", f"{where}.name")
        clean.append({"type": kind, "url": url, "name": name})
    return clean


def validate_message_create(body: object) -> dict[str, Any]:
    """The fields of a ``POST /api/messages`` body (wire names, cleaned)."""
    data = _require_object(body)
    channel_id = validate_channel_id(_string(data, "channelId"))
    text = _validate_text(_string(data, "text"))
    attachments = _validate_attachments(data.get("attachments"))
    parent_id = _optional_string(data, "parentId", "parentId")
    if parent_id is not None:
        _validate_id(parent_id, "parentId")
    return {
        "channelId": channel_id,
        "text": text,
        "attachments": attachments,
        "parentId": parent_id,
    }


def validate_message_edit(body: object) -> str:
    """The new text of a ``PATCH /api/messages/{id}`` body."""
    data = _require_object(body)
    return _validate_text(_string(data, "text"))


def validate_reaction_create(body: object) -> tuple[str, str]:
    """``(messageId, reaction)`` of a ``POST /api/reactions`` body."""
    data = _require_object(body)
    message_id = _validate_id(_string(data, "messageId"), "messageId")
    reaction = validate_reaction(_string(data, "reaction"))
    return message_id, reaction


def validate_reaction(value: str, field: str = "reaction") -> str:
    """A reaction: 1..64 characters, not only whitespace."""
    if not 1 <= len(value) <= MAX_REACTION_CHARS or not value.strip():
        raise invalid(field, f"must be 1..{MAX_REACTION_CHARS} characters")
    return value


def validate_limit(raw: str | None, *, default: int = 50, maximum: int = 200) -> int:
    """The ``limit`` query parameter: an integer in 1..maximum."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid("limit", f"must be an integer in 1..{maximum}") from None
    if not 1 <= value <= maximum:
        raise invalid("limit", f"must be an integer in 1..{maximum}")
    return value


def validate_idempotency_key(raw: str | None) -> str | None:
    """The ``Idempotency-Key`` header: 1..255 visible ASCII characters, or absent."""
    if raw is None:
        return None
    if not _IDEMPOTENCY_KEY_RE.fullmatch(raw):
        raise invalid("Idempotency-Key", "must be 1..255 visible ASCII characters")
    return raw
