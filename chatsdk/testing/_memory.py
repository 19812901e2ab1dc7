"""InMemoryTransport: every endpoint of API.md answered in-process, beneath the retry loop.

``ChatClient(url, key, transport=InMemoryTransport())`` makes each single attempt here
instead of through urllib3, so :class:`~chatsdk.ResilientAdapter`'s retries, circuit
breaker, retry budget and the client's dedup run exactly as in production. The endpoints
are the reference server's own (:class:`~chatsdk.testing._api.RestCore` over a
:class:`~chatsdk.testing._store.Store`): same validation, idempotency (replays, 409, 422)
and error bodies. No sockets, no threads, no aiohttp.

Scripted faults make a test's error handling deterministic: :meth:`fail_next`,
:meth:`drop_after_next` and :meth:`outage`. What the code under test created is in
:attr:`sent`, in order, with the ``Idempotency-Key`` of each.
"""

from __future__ import annotations

import collections
import errno
import http
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import attrs
import requests
import urllib3.exceptions
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from chatsdk.testing._api import Answer, Call, RestCore
from chatsdk.testing._sent import Attempt, Sent, SentLog
from chatsdk.testing._store import Counters, Store
from chatsdk.testing._wire import ERROR_CODES, INJECTED_MESSAGES, ApiError

__all__ = ["DEFAULT_URL", "InMemoryTransport", "Outage"]

log = logging.getLogger(__name__)

#: The base URL the fixtures use; ``.invalid`` never resolves, so a request that missed the
#: transport fails instead of reaching a real host. The transport answers any URL.
DEFAULT_URL = "http://chatsdk.invalid"

_COUNTERS = ("requests", "creates", "replays", "conflicts", "key_reused")
_CREATES = {"/api/messages": "message", "/api/reactions": "reaction"}


@attrs.frozen
class _Fault:
    kind: Literal["fail", "drop_after"]
    status: int | None = None
    retry_after: str | None = None


class Outage:
    """A scripted outage: every attempt fails until :meth:`end` (or the ``with`` block ends)."""

    def __init__(self, transport: InMemoryTransport, fault: _Fault) -> None:
        self._transport = transport
        self._fault = fault

    @property
    def active(self) -> bool:
        """Whether this outage is still on."""
        return self._transport._outage is self

    def end(self) -> None:
        """The service is back (idempotent)."""
        self._transport._end_outage(self)

    def __enter__(self) -> Outage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()

    def __repr__(self) -> str:
        what = "refused" if self._fault.status is None else str(self._fault.status)
        return f"<Outage {what} {'active' if self.active else 'ended'}>"


def _retry_after(value: float | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value < 0:
        raise ValueError(f"retry_after must be >= 0 seconds or an HTTP-date, got {value!r}")
    return f"{value:g}"


def _check_status(status: int | None) -> None:
    if status is None:
        return
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError(f"status must be an HTTP error status (400..599) or None, got {status!r}")


class InMemoryTransport(BaseAdapter):
    """The ChatSDK API in memory: pass it as ``transport=`` to ChatClient or ChatSession.

    It answers any base URL. Also a ``requests`` adapter: ``session.mount("http://", t)``
    sends a plain :class:`requests.Session` to it. Thread-safe; the data stays readable
    after :meth:`close`.

    Args:
        api_keys: keys accepted; None (the default) accepts any non-empty key, so the app's
            own settings work unchanged. A missing key is still ``401``.
        forbidden_keys: keys refused with ``403``.
        clock: wall clock for timestamps, token expiry and idempotency retention.
        token_ttl: lifetime of realtime tokens, in seconds.
        url: the base URL :attr:`url` reports (any URL is answered).
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] | None = None,
        forbidden_keys: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        token_ttl: float = 3600.0,
        url: str = DEFAULT_URL,
    ) -> None:
        super().__init__()
        if token_ttl <= 0:
            raise ValueError("token_ttl must be > 0")
        self.url = url.rstrip("/")
        self.store = Store(clock=clock)
        self._counters = Counters()
        self._core = RestCore(
            store=self.store,
            counters=self._counters,
            api_keys=None if api_keys is None else tuple(api_keys),
            forbidden_keys=tuple(forbidden_keys),
            token_ttl=lambda: token_ttl,
        )
        self._lock = threading.Lock()
        self._faults: collections.deque[_Fault] = collections.deque()
        self._outage: Outage | None = None
        self._sent: list[Sent] = []
        self._attempts: list[Attempt] = []
        self.sent = SentLog(self)

    def __repr__(self) -> str:
        return f"<InMemoryTransport {self.url}>"

    @property
    def ws_url(self) -> str:
        """The realtime URL the token endpoint gives for :attr:`url` (nothing listens)."""
        return f"ws://{urlsplit(self.url).netloc}/connection/websocket"

    # -- scripted faults -----------------------------------------------------------------

    def fail_next(
        self, n: int = 1, *, status: int | None = 503, retry_after: float | str | None = None
    ) -> None:
        """Answer the next ``n`` attempts with ``status`` without processing them.

        The body is the contract's error for that status (``unavailable`` for 503, ...).
        ``status=None`` refuses the connection instead (nothing was sent, so even a
        request without a key is retried). Queued after faults already scheduled.

        Args:
            n: how many attempts fail.
            status: an HTTP error status 400..599, or None for a refused connection.
            retry_after: a ``Retry-After`` header (seconds or an HTTP-date).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        _check_status(status)
        fault = _Fault("fail", status, _retry_after(retry_after))
        with self._lock:
            self._faults.extend([fault] * n)

    def drop_after_next(self, n: int = 1) -> None:
        """Process the next ``n`` attempts, then lose their responses (connection reset).

        The create is committed: a retry under the same ``Idempotency-Key`` is replayed,
        never duplicated. Queued after faults already scheduled.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        with self._lock:
            self._faults.extend([_Fault("drop_after")] * n)

    def outage(
        self, *, status: int | None = None, retry_after: float | str | None = None
    ) -> Outage:
        """Fail every attempt from now on until the returned :class:`Outage` ends.

        Use it as a context manager (``with transport.outage(): ...``) or call ``.end()``.
        A new outage replaces the current one.

        Args:
            status: None (the default) refuses connections; an HTTP error status answers
                every attempt with it instead (e.g. 503 from a load balancer).
            retry_after: a ``Retry-After`` header for the status answers.
        """
        _check_status(status)
        outage = Outage(self, _Fault("fail", status, _retry_after(retry_after)))
        with self._lock:
            self._outage = outage
        self._counters.inc("fault.outage")
        return outage

    def reset_faults(self) -> None:
        """Drop every scheduled fault and end the outage."""
        with self._lock:
            self._faults.clear()
            self._outage = None

    def _end_outage(self, outage: Outage) -> None:
        with self._lock:
            if self._outage is outage:
                self._outage = None

    # -- inspection ----------------------------------------------------------------------

    @property
    def attempts(self) -> list[Attempt]:
        """Every HTTP send seen, in order (retries included)."""
        with self._lock:
            return list(self._attempts)

    def messages(self, channel_id: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """The messages of a channel in wire JSON, oldest first."""
        return self.store.messages(channel_id, include_deleted=include_deleted)

    def all_messages(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every message in wire JSON, in creation order."""
        return self.store.all_messages(include_deleted=include_deleted)

    def reactions(self, message_id: str) -> list[dict[str, Any]]:
        """The reactions on a message in wire JSON, oldest first."""
        return self.store.reactions(message_id)

    def counters(self) -> dict[str, int]:
        """As :meth:`ReferenceServer.counters`: ``requests``, ``creates``, ``replays``,
        ``conflicts``, ``key_reused``, ``fault.<kind>`` and ``status.<code>``."""
        return self._counters.snapshot(_COUNTERS)

    def reset_counters(self) -> None:
        """Set the counters back to zero."""
        self._counters.reset()

    def _sent_items(self) -> list[Sent]:
        with self._lock:
            return list(self._sent)

    def _clear_sent(self) -> None:
        with self._lock:
            self._sent.clear()

    # -- the adapter ---------------------------------------------------------------------

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: object = None,
        verify: bool | str = True,
        cert: object = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Answer one attempt in memory (what ``HTTPAdapter.send`` does over the network).

        Raises:
            requests.ConnectionError: a scripted refused connection or dropped response.
        """
        call = _call_of(request)
        key = call.headers.get("Idempotency-Key")
        self._counters.inc("requests")
        with self._lock:
            fault = self._outage._fault if self._outage is not None else None
            kind = "outage" if fault is not None else None
            if fault is None and self._faults:
                fault = self._faults.popleft()
                kind = fault.kind
        if kind is not None:
            self._counters.inc(f"fault.{kind}")
        if fault is not None and fault.kind == "fail":
            return self._fail(request, call, key, fault, kind)
        if not call.path.startswith("/api/"):
            answer = Answer(404, None)
        else:
            answer = self._core.handle(call)
            self._record_create(call, key, answer)
        self._log(call, key, None if kind == "drop_after" else answer.status, kind)
        if kind == "drop_after":
            log.debug("fault drop_after: %s %s committed, dropping", call.method, call.path)
            reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (in memory)")
            raise requests.ConnectionError(
                urllib3.exceptions.ProtocolError("Connection aborted.", reset), request=request
            )
        return _response(request, answer, self)

    def close(self) -> None:
        """Nothing to release; the data stays readable."""

    def _fail(
        self,
        request: requests.PreparedRequest,
        call: Call,
        key: str | None,
        fault: _Fault,
        kind: str | None,
    ) -> requests.Response:
        if fault.status is None:
            self._log(call, key, None, kind)
            refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused (in memory)")
            raise requests.ConnectionError(refused, request=request)
        status = fault.status
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        message = INJECTED_MESSAGES.get(status, f"{ERROR_CODES.get(status, 'error')} (injected)")
        answer = Answer.error(ApiError(status, message, headers=headers))
        self._counters.inc(f"status.{status}")
        self._log(call, key, status, kind)
        return _response(request, answer, self)

    def _record_create(self, call: Call, key: str | None, answer: Answer) -> None:
        kind = _CREATES.get(call.path)
        if kind is None or call.method != "POST" or answer.status != 201:
            return
        if answer.headers.get("Idempotent-Replayed") == "true":
            return
        sent = Sent(kind=kind, data=answer.body, idempotency_key=key)  # type: ignore[arg-type]
        with self._lock:
            self._sent.append(sent)

    def _log(self, call: Call, key: str | None, status: int | None, fault: str | None) -> None:
        attempt = Attempt(
            method=call.method, path=call.path, idempotency_key=key, status=status, fault=fault
        )
        with self._lock:
            self._attempts.append(attempt)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _body_of(body: object) -> bytes:
    """The bytes of a prepared body: bytes, str, a file-like object or an iterable of chunks."""
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    read = getattr(body, "read", None)
    if callable(read):
        data = read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if isinstance(body, Iterable):
        return b"".join(c.encode("utf-8") if isinstance(c, str) else bytes(c) for c in body)
    raise TypeError(f"cannot read a request body of type {type(body).__name__}")


def _call_of(request: requests.PreparedRequest) -> Call:
    parts = urlsplit(request.url or "")
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(name, value)
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(
        {_text(k): _text(v) for k, v in request.headers.items()}
    )
    return Call(
        method=(request.method or "GET").upper(),
        path=parts.path or "/",
        query=query,
        headers=headers,
        body=_body_of(request.body),
        host=parts.netloc,
    )


def _response(
    request: requests.PreparedRequest, answer: Answer, adapter: BaseAdapter
) -> requests.Response:
    """A :class:`requests.Response` as ``HTTPAdapter.build_response`` would make it."""
    if answer.body is None:
        content = b"" if answer.status == 204 else f"{answer.status}: Not Found".encode()
        headers = {} if answer.status == 204 else {"Content-Type": "text/plain; charset=utf-8"}
    else:
        content = json.dumps(answer.body).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
    headers["Content-Length"] = str(len(content))
    headers.update(answer.headers)
    response = requests.Response()
    response.status_code = answer.status
    response.headers = CaseInsensitiveDict(headers)
    response.encoding = get_encoding_from_headers(response.headers)
    try:
        response.reason = http.HTTPStatus(answer.status).phrase
    except ValueError:
        response.reason = ""
    response.raw = io.BytesIO(content)
    response._content = content
    response.url = request.url or ""
    response.request = request
    response.connection = adapter  # type: ignore[assignment]
    return response
