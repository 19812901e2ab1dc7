"""The chatsdk error tree, and the one place responses and transport errors are decoded.

::

    ChatSDKError
     +-- ConfigurationError (ValueError)         missing base URL or API key
     +-- ValidationError (ValueError)            bad argument, raised before any I/O
     +-- TransportError (requests.RequestException)      no HTTP response
     |    +-- ConnectError (requests.ConnectionError)    refused, reset, DNS
     |    |    +-- ConnectTimeoutError (also TransportTimeoutError, requests.ConnectTimeout)
     |    +-- TransportTimeoutError (requests.Timeout)   read timeout
     |    +-- TLSCertificateError (requests.exceptions.SSLError)  certificate not trusted
     |    +-- CircuitBreakerOpenError (requests.ConnectionError)  host known bad, nothing sent
     |    +-- TooManyRedirectsError (requests.TooManyRedirects)   a redirect loop
     +-- APIError (requests.HTTPError)            the server answered 4xx/5xx, or bad JSON
     |    +-- BadRequestError            400
     |    +-- UnauthorizedError          401
     |    +-- ForbiddenError             403
     |    +-- NotFoundError              404
     |    +-- RequestTimeoutError        408
     |    +-- ConflictError              409
     |    |    +-- IdempotencyKeyInUseError   409 idempotency_key_in_use
     |    +-- PayloadTooLargeError       413
     |    +-- UnprocessableEntityError   422
     |    |    +-- IdempotencyKeyReusedError  422 idempotency_key_reused
     |    +-- RateLimitedError           429
     |    +-- ServerError                5xx
     |    +-- InvalidResponseError       2xx whose body is not the promised JSON
     +-- OutboxError
     |    +-- OutboxCorruptError         a corrupt outbox file (moved aside)
     |    +-- OutboxEntryExpiredError    an entry older than max_age
     |    +-- OutboxFileError            a file that is not an outbox (left untouched)
     +-- WaitTimeoutError (TimeoutError) a wait() or flush() ran out of time
     +-- RealtimeError                   the realtime connection or a subscription failed

Every error raised after retrying carries ``.attempts`` (HTTP sends made) and, for creates,
``.idempotency_key``; every :class:`APIError` carries ``.retry_after`` (None when the server
did not say). Which class a status maps to, and whether it is retried, is decided by the
classification table in :mod:`chatsdk._http.retry`; this module decodes the bodies.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import requests
import urllib3.exceptions
from requests.hooks import default_hooks

__all__ = [
    "APIError",
    "BadRequestError",
    "ChatSDKError",
    "CircuitBreakerOpenError",
    "ConfigurationError",
    "ConflictError",
    "ConnectError",
    "ConnectTimeoutError",
    "ForbiddenError",
    "IdempotencyKeyInUseError",
    "IdempotencyKeyReusedError",
    "InvalidResponseError",
    "NotFoundError",
    "OutboxCorruptError",
    "OutboxEntryExpiredError",
    "OutboxError",
    "OutboxFileError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "RealtimeError",
    "RequestTimeoutError",
    "ServerError",
    "TLSCertificateError",
    "TooManyRedirectsError",
    "TransportError",
    "TransportTimeoutError",
    "UnauthorizedError",
    "UnprocessableEntityError",
    "ValidationError",
    "WaitTimeoutError",
]

_EXCERPT_CHARS = 200


class ChatSDKError(Exception):
    """Root of every error chatsdk raises.

    Attributes:
        attempts: HTTP sends made by the operation that failed, when one was made.
        idempotency_key: the operation's ``Idempotency-Key``, for creates.
    """

    attempts: int | None = None
    idempotency_key: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle without credentials, and without calling ``__init__`` again.

        ``.request`` (and ``.response.request``) hold the prepared request, whose headers
        carry the API key: a pickled error (multiprocessing, a Celery result, a crash
        report) gets copies with those headers redacted. The message (``args``) and every
        attribute are kept, so the error unpickles to the same type and reads the same.
        """
        state = dict(vars(self))
        for name in ("request", "response"):
            if state.get(name) is not None:
                state[name] = _redacted(state[name])
        return (_rebuild, (type(self), self.args), state)


#: Request headers that carry credentials: redacted in a pickled error's ``.request``.
_SECRET_HEADERS = ("X-API-Key", "Authorization", "Proxy-Authorization", "Cookie")
REDACTED = "[redacted]"


def _rebuild(cls: type[ChatSDKError], args: tuple[Any, ...]) -> ChatSDKError:
    """Unpickle an error: its ``args`` as they were, its attributes set by pickle after."""
    error = cls.__new__(cls)
    error.args = args
    return error


def _redacted(value: Any) -> Any:
    """A copy of a prepared request or response with the credential headers redacted."""
    if isinstance(value, requests.PreparedRequest):
        request = value.copy()
        request.hooks = default_hooks()  # the caller's hooks may not pickle
        for name in _SECRET_HEADERS:
            if name in request.headers:
                request.headers[name] = REDACTED
        return request
    if isinstance(value, requests.Response):
        response = requests.Response()
        fields: dict[str, Any] = vars(value)
        copied: dict[str, Any] = vars(response)
        for name in requests.Response.__attrs__:  # what requests itself pickles
            if name not in ("_content", "history", "request"):  # each handled below
                copied[name] = fields[name]
        # A body never read stays unread: pickling must not block on the network.
        copied["_content"] = fields["_content"] if fields["_content_consumed"] else None
        copied["_content_consumed"] = True
        response.history = [_redacted(r) for r in value.history]
        response.request = _redacted(value.request)
        return response
    return None  # None, or an object of unknown contents: not carried along


class ConfigurationError(ChatSDKError, ValueError):
    """The client was built without something it needs (base URL, API key) or with a bad policy."""


class ValidationError(ChatSDKError, ValueError):
    """An argument breaks the wire contract; raised before any network call.

    Attributes:
        field: the API field at fault (``channelId``, ``text``, ...).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class TransportError(ChatSDKError, requests.RequestException):
    """No HTTP response: connection refused or reset, DNS failure, timeout.

    The original requests/urllib3 exception is ``__cause__``.

    Attributes:
        request_sent: False when the failure happened before any byte of the request could
            reach the server (refused, DNS, connect timeout): such a request is safe to resend
            whatever its method.
    """

    request_sent: bool = True


class ConnectError(TransportError, requests.ConnectionError):
    """The connection failed or broke (refused, reset, DNS, closed while reading)."""


class TransportTimeoutError(TransportError, requests.Timeout):
    """The server did not answer within the timeout."""


class ConnectTimeoutError(ConnectError, TransportTimeoutError, requests.ConnectTimeout):
    """The connection could not be made within the connect timeout: nothing was sent."""

    request_sent = False


class TLSCertificateError(TransportError, requests.exceptions.SSLError):
    """The server's TLS certificate was not trusted (or did not match its name).

    Not transient: it is not retried and does not count against the host's breaker.
    """

    request_sent = False


class CircuitBreakerOpenError(TransportError, requests.ConnectionError):
    """The host's circuit is open: the call failed fast and nothing was sent.

    Attributes:
        name: the breaker's name (``rest:http://host:port``).
        retry_after: seconds until the breaker lets a probe through.
    """

    request_sent = False

    def __init__(self, name: str, retry_after: float, **kwargs: Any) -> None:
        super().__init__(
            f"circuit {name} is open; next probe allowed in {retry_after:.2f}s", **kwargs
        )
        self.name = name
        self.retry_after = retry_after


class APIError(ChatSDKError, requests.HTTPError):
    """The server answered with an error status, or with a body that breaks the contract.

    Attributes:
        status: the HTTP status code.
        code: the ``error.code`` of the body (``None`` when the body had none).
        message: the ``error.message`` of the body, or a short excerpt of a foreign body.
        body: the decoded JSON body, or the raw text when it was not JSON.
        retry_after: seconds the server asked to wait (``Retry-After``), or None.
    """

    retry_after: float | None = None

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        body: Any = None,
        response: requests.Response | None = None,
        request: Any = None,
    ) -> None:
        label = f"HTTP {status}" + (f" {code}" if code else "")
        super().__init__(f"{label}: {message}", response=response, request=request)
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class BadRequestError(APIError):
    """400 ``invalid_request``: the message names the field."""


class UnauthorizedError(APIError):
    """401: missing or wrong API key."""


class ForbiddenError(APIError):
    """403: the key is valid but not allowed."""


class NotFoundError(APIError):
    """404: no such message or channel."""


class RequestTimeoutError(APIError):
    """408: the server gave up waiting for the request."""


class ConflictError(APIError):
    """409."""


class IdempotencyKeyInUseError(ConflictError):
    """409 ``idempotency_key_in_use``: the first request with this key is still running."""


class PayloadTooLargeError(APIError):
    """413: the body is too large."""


class UnprocessableEntityError(APIError):
    """422."""


class IdempotencyKeyReusedError(UnprocessableEntityError):
    """422 ``idempotency_key_reused``: the same key was sent with a different body."""


class RateLimitedError(APIError):
    """429: slow down (``retry_after`` says for how long, when the server said)."""


class ServerError(APIError):
    """5xx, or a proxy's error page."""


class InvalidResponseError(APIError):
    """A success status whose body is not the JSON the contract promises (or is larger than
    ``max_response_bytes``)."""


class TooManyRedirectsError(TransportError, requests.TooManyRedirects):
    """The server redirected more than ``Session.max_redirects`` times (a redirect loop).

    No answer was reached; the last redirect is ``.response``.
    """


class OutboxError(ChatSDKError):
    """The offline outbox failed."""


class OutboxUnavailableError(OutboxError):
    """The outbox's database cannot be reached right now (a restart, a failover, a cut link).

    Nothing was written by the call that raised it; the store reconnects with backoff, so
    the same call may succeed later. :meth:`~chatsdk.ChatClient.flush` waits through it
    until its timeout.
    """


class OutboxCorruptError(OutboxError):
    """The outbox file is a corrupt outbox; it was moved aside, never deleted.

    Attributes:
        path: the path that was asked for.
        moved_to: where the unreadable file now is.
    """

    def __init__(self, path: str, moved_to: str, reason: str) -> None:
        super().__init__(f"outbox {path} is unreadable ({reason}); moved aside to {moved_to}")
        self.path = path
        self.moved_to = moved_to


class OutboxFileError(OutboxError):
    """The file is not a chatsdk outbox (another application's database, say): refused.

    The file is left exactly as it was; choose another path for the outbox.

    Attributes:
        path: the path that was asked for.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path} is not a chatsdk outbox ({reason}); refusing to use it, and it was left "
            "untouched: give the outbox a file of its own"
        )
        self.path = path


class OutboxEntryExpiredError(OutboxError):
    """The entry reached ``max_age`` before it could be delivered."""


class WaitTimeoutError(ChatSDKError, TimeoutError):
    """A ``wait()`` or ``flush()`` ran out of time; the work goes on in the background."""


class RealtimeError(ChatSDKError):
    """The realtime connection or a subscription failed for good.

    Attributes:
        code: the protocol or close code, when there was one.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def excerpt(text: str) -> str:
    """A short, single-line excerpt of a foreign body for an error message."""
    # Slice before splitting: the body may be megabytes long.
    flat = " ".join(text[: _EXCERPT_CHARS * 4].split())
    if len(flat) > _EXCERPT_CHARS:
        return flat[:_EXCERPT_CHARS] + "..."
    return flat or "(empty body)"


def decode_json(response: requests.Response) -> Any:
    """``response``'s body decoded as JSON; ``ValueError`` for anything that is not JSON.

    Unlike ``Response.json()``, a body nested too deeply for the parser (``[`` x 100,000)
    is a ``ValueError`` too, not a ``RecursionError``.
    """
    try:
        return response.json()
    except RecursionError as exc:
        raise ValueError("the JSON body is nested too deeply") from exc


def error_fields(response: requests.Response) -> tuple[str | None, str, Any]:
    """``(code, message, body)`` of an error response.

    Copes with bodies that are not the contract's JSON (a proxy's HTML page, an empty or
    truncated body): the message then names a short excerpt and ``code`` is None.
    """
    body: Any
    try:
        body = decode_json(response)
    except ValueError:
        body = response.text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error["code"], str(error.get("message") or ""), body
    return None, f"unexpected body from the server: {excerpt(response.text)}", body


def map_transport_error(exc: BaseException, request: Any = None) -> ChatSDKError:
    """Map a requests/urllib3/socket failure to the chatsdk tree; the caller sets ``__cause__``.

    The one place transport errors are mapped:

    - local configuration that can never work (a CA bundle or client certificate path that
      does not exist, an unreadable certificate, a malformed or unsupported proxy URL):
      :class:`ConfigurationError`;
    - a server certificate that is not trusted: :class:`TLSCertificateError`;
    - refused connections and DNS failures: :class:`ConnectError` with ``request_sent``
      False (tested before timeouts: urllib3 2.x makes ``NewConnectionError`` a
      ``ConnectTimeoutError``); connect and read timeouts; anything else: ``ConnectError``.
    """
    if isinstance(exc, ChatSDKError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    if _is_local_configuration(exc):
        return ConfigurationError(f"the HTTP client configuration cannot work: {text}")
    if _in_chain(exc, (ssl.SSLCertVerificationError,)):
        return TLSCertificateError(text, request=request)
    cls: type[TransportError]
    refused = _is_refused(exc)
    if refused:
        cls = ConnectError
    elif isinstance(exc, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
        cls = ConnectTimeoutError
    elif _in_chain(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)):
        # Also a read timeout in the body, which requests raises as a ConnectionError.
        cls = TransportTimeoutError
    else:
        cls = ConnectError
    mapped = cls(text, request=request)
    if refused:
        mapped.request_sent = False
    return mapped


_CONFIGURATION_ERRORS = (
    requests.exceptions.InvalidURL,  # InvalidProxyURL, and a proxy scheme urllib3 rejects
    requests.exceptions.InvalidSchema,  # e.g. a socks:// proxy without PySocks
    urllib3.exceptions.ProxySchemeUnknown,
    urllib3.exceptions.ProxySchemeUnsupported,
)


def _is_local_configuration(exc: BaseException) -> bool:
    # requests raises a bare OSError (no errno) for a CA bundle or certificate path that does
    # not exist, before any connection; socket errors always carry an errno.
    if type(exc) is OSError and exc.errno is None:
        return True
    if _in_chain(exc, _CONFIGURATION_ERRORS) is not None:
        return True
    # A certificate or CA file that exists but cannot be loaded: OpenSSL reports the X509 or
    # PEM library (load_verify_locations) or "PEM lib" (load_cert_chain).
    bad_file = _in_chain(exc, (ssl.SSLError,))
    if not isinstance(bad_file, ssl.SSLError):
        return False
    return bad_file.library in ("PEM", "X509") or "PEM lib" in str(bad_file)


def _in_chain(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in ``exc``'s chain (reasons, args, causes)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, types):
            return current
        nested = current.args[0] if current.args else None
        reason = getattr(current, "reason", None)
        current = (
            reason
            if isinstance(reason, BaseException)
            else (nested if isinstance(nested, BaseException) else current.__cause__)
        )
    return None


def _is_refused(exc: BaseException) -> bool:
    """True when the failure happened before a connection existed (refused, DNS)."""
    refused = (
        urllib3.exceptions.NewConnectionError,
        urllib3.exceptions.NameResolutionError,
        ConnectionRefusedError,
    )
    return _in_chain(exc, refused) is not None
