"""Reading a response's body with a size limit, checked while it is decoded.

``Response.content`` reads (and decompresses) whatever the server sends: a 1 MB gzip bomb
becomes a gigabyte in memory. :func:`read_body` reads the decoded body in chunks and stops
at ``limit`` bytes:

- a 2xx over the limit raises :class:`~chatsdk.InvalidResponseError` naming the limit (the
  server did answer, with something this client will not hold);
- any other status keeps the first ``limit`` bytes: the status is the answer, the body only
  feeds an error message's excerpt.

Either way the connection is closed, not returned to the pool with a body left unread.
urllib3 (>= 2.6) decompresses at most one chunk's worth per read, so the limit holds
while decoding, not only after.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from chatsdk._errors import InvalidResponseError

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "check_max_response_bytes", "read_body"]

log = logging.getLogger("chatsdk.http")

#: Decoded bytes a response body may have (8 MiB): far above any answer of the API.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024

_CHUNK = 64 * 1024


def check_max_response_bytes(value: object) -> int:
    """``value`` as a response-size limit: a positive int, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_response_bytes must be a positive int, got {value!r}")
    return value


def read_body(response: requests.Response, limit: int) -> None:
    """Read ``response``'s decoded body into ``response.content``, at most ``limit`` bytes.

    Raises:
        InvalidResponseError: a 2xx body over ``limit``.
        requests.RequestException: as ``Response.content`` raises (a reset, a timeout, a
            body that does not decode).
    """
    fields: dict[str, Any] = vars(response)  # requests' private state: _content is False
    if fields["_content"] is not False:
        # Already read (a transport that builds whole responses): only the size is left.
        content = response.content
        if len(content) > limit:
            _over_limit(response, limit, content[:limit])
        return
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > limit:
            chunks.append(chunk[: len(chunk) - (size - limit)])
            response.close()
            _over_limit(response, limit, b"".join(chunks))
            return
        chunks.append(chunk)
    response._content = b"".join(chunks)


def _over_limit(response: requests.Response, limit: int, head: bytes) -> None:
    fields: dict[str, Any] = vars(response)
    fields["_content"] = head
    fields["_content_consumed"] = True
    status = response.status_code
    if 200 <= status < 300:
        raise InvalidResponseError(
            status,
            None,
            f"the response body is larger than max_response_bytes ({limit} bytes); it was not read",
            response=response,
            request=response.request,
        )
    log.debug("HTTP %d body cut at max_response_bytes (%d bytes)", status, limit)
