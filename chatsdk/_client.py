"""ChatClient: the friendly front of chatsdk (domain methods over a ChatSession)."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import requests

from chatsdk import _instrument, _shutdown
from chatsdk._errors import (
    ChatSDKError,
    ConfigurationError,
    InvalidResponseError,
    decode_json,
    excerpt,
)
from chatsdk._http.adapter import Transport, attempts_of
from chatsdk._http.idempotency import Deduplicator, derived_key, new_idempotency_key
from chatsdk._http.retry import RetryPolicy, error_for_response
from chatsdk._http.session import ChatSession
from chatsdk._instrument import Emitter, EventHook, OutboxBacklog, OutboxEnqueued, operation
from chatsdk._models import Attachment, Message, Reaction
from chatsdk._outbox.drainer import Drainer
from chatsdk._outbox.models import FlushResult, Operation, OutboxEntry
from chatsdk._outbox.outbox import Outbox
from chatsdk._realtime.client import RealtimeClient
from chatsdk._resilience.breaker import BreakerPolicy
from chatsdk._validation import (
    check_api_key,
    check_channel,
    check_id,
    check_idempotency_key,
    check_limit,
    check_seconds,
    message_body,
    reaction_body,
    text_body,
)

__all__ = ["ChatClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", Message, Reaction)

URL_ENV = "CHATSDK_URL"
API_KEY_ENV = "CHATSDK_API_KEY"


def _path(*parts: str) -> str:
    """A URL path of one segment per part, whatever the part holds.

    ``quote`` leaves ``.`` alone, and a ``.`` or ``..`` segment would be resolved away by
    urllib3 (``remove_reaction("m1", "..")`` would become ``DELETE /api/messages/m1/``): such
    segments are sent as ``%2E`` / ``%2E%2E``, which servers decode back to the part.
    """
    return "/".join(_DOTS.get(p) or quote(p, safe="") for p in parts)


_DOTS = {".": "%2E", "..": "%2E%2E"}


class ChatClient:
    """A ChatSDK client: send messages and reactions that arrive once, even on a bad network.

    Args:
        base_url: the server; defaults to ``$CHATSDK_URL``.
        api_key: the API key; defaults to ``$CHATSDK_API_KEY``. Never logged or shown.
            1..4096 visible ASCII characters: a key read from a file must be stripped.
        retry: the retry policy (default :data:`chatsdk.DEFAULT_RETRY_POLICY`).
        timeout: default ``(connect, read)`` seconds, or one number for both.
        breaker: the per-host circuit breaker policy; None for the default
            :class:`BreakerPolicy`, False for no circuit breaking.
        session: a ready :class:`ChatSession` to use instead of building one; then
            ``base_url``, ``api_key``, ``retry``, ``timeout``, ``breaker`` and ``transport``
            must not be given.
        outbox: an :class:`Outbox` or the path of its file: enables :meth:`queue_message`
            and :meth:`queue_reaction` and starts a background drainer thread.
        dedup_window: seconds during which a repeat of the same ``send_message`` or
            ``add_reaction`` without an explicit key (a double tap) returns the first call's
            result instead of sending again; 0 turns it off.
        close_timeout: :meth:`close` (and the exit of the process, see
            :func:`chatsdk.install_signal_handlers`) waits at most this many seconds for the
            entries this process queued; the rest stays on disk for the next process.
            A finite number >= 0.
        transport: makes each single HTTP attempt instead of urllib3, beneath the retries,
            breaker and budget: ``chatsdk.testing.InMemoryTransport()`` in tests.
        on_event: a callable (or callables) receiving this client's typed events
            (:class:`RetryScheduled`, :class:`BreakerStateChanged`, :class:`OutboxDelivered`,
            ...), off the SDK's locks; one that raises is logged and never breaks a send.
            The hooks belong to the client's session (a session shared by two clients
            gives both clients' hooks every event of it).
        max_response_bytes: the most decoded bytes a response body may have (default
            :data:`chatsdk.DEFAULT_MAX_RESPONSE_BYTES`, 8 MiB): a larger 2xx body raises
            :class:`InvalidResponseError` (a gzip bomb never fills memory).

    Raises:
        ConfigurationError: the URL or the key is missing (naming which) or invalid (the
            message says why, never what the key is).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | tuple[float, float] | None = None,
        breaker: BreakerPolicy | Literal[False] | None = None,
        session: ChatSession | None = None,
        outbox: str | os.PathLike[str] | Outbox | None = None,
        close_timeout: float = 2.0,
        dedup_window: float = 1.0,
        transport: Transport | None = None,
        on_event: EventHook | Iterable[EventHook] | None = None,
        max_response_bytes: int | None = None,
    ) -> None:
        if session is not None:
            given = [
                n
                for n, v in (
                    ("base_url", base_url),
                    ("api_key", api_key),
                    ("retry", retry),
                    ("timeout", timeout),
                    ("breaker", breaker),
                    ("transport", transport),
                    ("max_response_bytes", max_response_bytes),
                )
                if v is not None
            ]
            if given:
                raise ConfigurationError(
                    f"pass {', '.join(given)} to the ChatSession, not with session="
                )
            self.session = session
        else:
            url = base_url if base_url is not None else os.environ.get(URL_ENV)
            key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
            if not url:
                raise ConfigurationError(f"no base URL: pass base_url= or set ${URL_ENV}")
            if key is None or key == "":
                raise ConfigurationError(f"no API key: pass api_key= or set ${API_KEY_ENV}")
            check_api_key(key)  # before anything is built (ChatSession checks it too)
            options: dict[str, Any] = {}
            if max_response_bytes is not None:
                options["max_response_bytes"] = max_response_bytes
            self.session = ChatSession(
                url,
                key,
                retry=retry,
                timeout=timeout,
                breaker=breaker,
                transport=transport,
                **options,
            )
        self._events = self.session.adapter.events
        self._events.add(on_event)
        close = check_seconds("close_timeout", close_timeout, error=ConfigurationError)
        assert close is not None  # (None and infinity are refused without none=True)
        self.close_timeout = close
        self._dedup = Deduplicator(dedup_window)
        self._outbox: Outbox | None = None
        self._drainer: Drainer | None = None
        self._realtime: weakref.WeakSet[RealtimeClient] = weakref.WeakSet()
        self._close_lock = threading.Lock()
        self._closed: FlushResult | None = None
        if outbox is not None:
            self._owns_outbox = not isinstance(outbox, Outbox)
            self._outbox = Outbox(outbox) if not isinstance(outbox, Outbox) else outbox
            # Entries left by processes that exited are this one's to deliver (and to
            # wait for at close), unasked.
            self._outbox.adopt_orphans()
            self._drainer = Drainer(
                self._outbox,
                self._deliver,
                breaker_for=lambda _op: self.session.breaker_for(),
                retry=retry,
                events=self._events,
            )
            _instrument.track_outbox(self._outbox)
            self._drainer.start()
        _shutdown.track(self)

    def __repr__(self) -> str:
        return f"<ChatClient {self.session.base_url}>"

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> FlushResult:
        """Deliver what this process queued (for at most ``close_timeout``), then release all.

        Only this process's entries are waited for (and those it adopted from processes
        that exited), never other processes'. What is not delivered by then stays on disk,
        with a WARNING naming the count and the file; the next client on the file delivers
        it. The realtime clients made by :meth:`realtime` are closed, and a shared
        :class:`Outbox` forgets this client. Idempotent: a second call returns the first
        call's result. The client cannot be used afterwards.

        Returns:
            How many of this process's entries are still pending (falsy when some are).
        """
        with self._close_lock:
            if self._closed is None:
                self._closed = self._shutdown()
            return self._closed

    def _shutdown(self) -> FlushResult:
        _shutdown.untrack(self)
        deadline = time.monotonic() + self.close_timeout
        result = FlushResult()
        drainer, outbox = self._drainer, self._outbox
        if drainer is not None and outbox is not None:
            if not outbox.closed:
                drainer.flush(self.close_timeout, own=True)
                result = FlushResult(pending=outbox.pending_count(own=True), path=outbox.path)
                if result.pending:
                    log.warning(
                        "outbox %s: %d entries queued by this process are not delivered yet; "
                        "they stay in the file and the next ChatClient on it delivers them",
                        outbox.path,
                        result.pending,
                        extra={"path": outbox.path},
                    )
                self._backlog(result)
            drainer.stop(max(0.0, deadline - time.monotonic()))
            outbox.remove_listener(drainer.notify)
            outbox.detach(drainer)
            if self._owns_outbox:
                outbox.close()
        for client in list(self._realtime):
            client.close()
        self.session.close()
        return result

    # -- outbox --------------------------------------------------------------------------

    @property
    def outbox(self) -> Outbox | None:
        """The client's :class:`Outbox`, or None when it was built without one."""
        return self._outbox

    @property
    def outbox_auth_error(self) -> BaseException | None:
        """The 401/403 that stopped this client's outbox drainer, or None while it drains.

        Entries stay queued and :meth:`flush` returns False at once until the key works
        again; another client (or process) with a working key drains them.
        """
        return None if self._drainer is None else self._drainer.auth_error

    @operation("queue_message")
    def queue_message(
        self,
        channel_id: str,
        text: str,
        *,
        attachments: Iterable[Attachment | Mapping[str, Any]] = (),
        parent_id: str | None = None,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> OutboxEntry[Message]:
        """Queue a message in the outbox; returns once it is committed to disk.

        The background drainer delivers it (in order within its channel) under one
        ``Idempotency-Key``, across retries, crashes and restarts. Arguments as
        :meth:`send_message`, validated the same way before any I/O.

        With a PostgreSQL outbox, ``connection`` (a psycopg 3 connection in your open
        transaction) writes the entry in that transaction without committing it: the
        message exists, and is delivered, if and only if your transaction commits. With
        Django's database outbox (``CHATSDK["OUTBOX"] = "database"``) that is always so,
        without ``connection``: the entry is written in the current ``transaction.atomic()``.

        Raises:
            ValidationError: an argument breaks the contract (nothing was queued).
            ConfigurationError: the client has no outbox.
            OutboxError: the outbox cannot be written (e.g. its database is unreachable).
        """
        body = message_body(channel_id, text, attachments, parent_id)
        key = self._key(idempotency_key)
        entry = self._queue().enqueue(
            "message", body["channelId"], body, idempotency_key=key, connection=connection
        )
        self._enqueued(entry)
        return entry

    @operation("queue_reaction")
    def queue_reaction(
        self,
        message_id: str,
        reaction: str,
        *,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> OutboxEntry[Reaction]:
        """Queue a reaction in the outbox; as :meth:`queue_message` (``connection`` too)."""
        body = reaction_body(message_id, reaction)
        key = self._key(idempotency_key)
        lane = f"reaction/{body['messageId']}"
        entry = self._queue().enqueue(
            "reaction", lane, body, idempotency_key=key, connection=connection
        )
        self._enqueued(entry)
        return entry

    def stop_draining(self, timeout: float | None = None) -> bool:
        """Stop this client's outbox drainer: deliveries in flight finish (for at most
        ``timeout`` seconds), claimed entries not yet started are given back for any other
        drainer. True when every delivery in flight ended in time."""
        timeout = check_seconds("timeout", timeout, none=True)
        return True if self._drainer is None else self._drainer.stop(timeout)

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Block until the outbox holds no ``queued``/``sending`` entry, whoever queued it.

        Returns:
            How many entries (of any process) are still pending: falsy when ``timeout``
            passed first or draining is stopped (a 401/403). Falsy too when entries
            expired undelivered since this process's previous flush (``.expired``). A
            client without an outbox has nothing to flush (truthy, 0 pending).

        Raises:
            ValueError: ``timeout`` is NaN or negative (None or infinity: no limit).
            OutboxUnavailableError: the outbox's database was still unreachable when
                ``timeout`` passed (while it is down, the flush waits: a database restart
                or failover is waited out, as the drainer waits it out).
        """
        timeout = check_seconds("timeout", timeout, none=True)
        if self._drainer is None or self._outbox is None:
            return FlushResult()
        return self._drainer.flush_result(timeout)

    def _backlog(self, result: FlushResult) -> None:
        """Tell the hooks how many of this process's entries are left for the next one."""
        if self._events.active and result.path is not None:
            self._events.emit(OutboxBacklog(count=result.pending, path=result.path))

    def _enqueued(self, entry: OutboxEntry[Any]) -> None:
        if self._events.active:
            op = entry.operation
            path = self._queue().path
            self._events.emit(
                OutboxEnqueued(entry_id=entry.id, kind=op.kind, channel=op.channel, path=path)
            )

    def _queue(self) -> Outbox:
        if self._outbox is None:
            raise ConfigurationError("this client has no outbox: pass outbox= to ChatClient")
        return self._outbox

    def _deliver(self, op: Operation) -> dict[str, Any]:
        """The drainer's deliver: one operation through this client's session."""
        if op.kind == "message":
            return self._create(op.body, op.idempotency_key, Message).to_json()
        return self._create(op.body, op.idempotency_key, Reaction).to_json()

    # -- messages ------------------------------------------------------------------------

    @operation("send_message")
    def send_message(
        self,
        channel_id: str,
        text: str,
        *,
        attachments: Iterable[Attachment | Mapping[str, Any]] = (),
        parent_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """Post a message, retrying transient failures under one ``Idempotency-Key``.

        Args:
            channel_id: 1..128 characters of ``[A-Za-z0-9_.:-]``.
            text: 1..4000 characters after stripping.
            attachments: at most 10 :class:`Attachment` (or mappings with type, url, name).
            parent_id: the message this one replies to.
            idempotency_key: your own key for this intent (default: the next key of the
                active key scope, e.g. inside a Celery task, else a new UUID4).

        Returns:
            The created :class:`Message` (``replayed`` when the server answered from an
            earlier request with the same key).

        Raises:
            ValidationError: an argument breaks the contract (nothing was sent).
            APIError: the server refused (a subclass per status), after retries.
            TransportError: no response could be had, after retries.
        """
        body = message_body(channel_id, text, attachments, parent_id)
        key = self._explicit_or_derived(idempotency_key)
        return self._dedup.run("message", body, key, lambda k: self._create(body, k, Message))

    @operation("edit_message")
    def edit_message(self, message_id: str, text: str) -> Message:
        """Replace a message's text (``PATCH``; idempotent, retried)."""
        message_id = check_id("messageId", message_id)
        body = text_body(text)
        response = self._request("PATCH", _path("api", "messages", message_id), json=body)
        return self._parse(response, Message.from_json)

    @operation("delete_message")
    def delete_message(self, message_id: str) -> None:
        """Delete a message (succeeds also when it was already deleted)."""
        message_id = check_id("messageId", message_id)
        self._request("DELETE", _path("api", "messages", message_id))

    @operation("list_messages")
    def list_messages(
        self, channel_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message]:
        """A channel's messages, newest first: at most ``limit``, older than ``before``."""
        params: dict[str, Any] = {"limit": check_limit(limit)}
        if before is not None:
            params["before"] = check_id("before", before)
        path = _path("api", "channels", check_channel(channel_id), "messages")
        response = self._request("GET", path, params=params)

        def parse(data: object, replayed: bool) -> list[Message]:
            if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
                raise ValueError("expected an object with a 'messages' list")
            return [Message.from_json(m) for m in data["messages"]]

        return self._parse(response, parse)

    # -- reactions -----------------------------------------------------------------------

    @operation("add_reaction")
    def add_reaction(
        self, message_id: str, reaction: str, *, idempotency_key: str | None = None
    ) -> Reaction:
        """Add a reaction; adding the same one again returns the existing Reaction."""
        body = reaction_body(message_id, reaction)
        key = self._explicit_or_derived(idempotency_key)
        return self._dedup.run("reaction", body, key, lambda k: self._create(body, k, Reaction))

    @operation("remove_reaction")
    def remove_reaction(self, message_id: str, reaction: str) -> None:
        """Remove a reaction (succeeds also when it was absent)."""
        body = reaction_body(message_id, reaction)
        self._request(
            "DELETE", _path("api", "messages", body["messageId"], "reactions", body["reaction"])
        )

    # -- health --------------------------------------------------------------------------

    @operation("health")
    def health(self) -> bool:
        """True when the server answers ``GET /api/health`` with ``{"status": "ok"}``."""
        try:
            response = self._request("GET", "api/health")
            data = decode_json(response)
        except (ChatSDKError, requests.RequestException, ValueError) as exc:
            log.info("health check failed: %s", type(exc).__name__)
            return False
        return isinstance(data, dict) and data.get("status") == "ok"

    # -- realtime ------------------------------------------------------------------------

    def realtime(self, **options: Any) -> RealtimeClient:
        """A :class:`RealtimeClient` for this server, authenticated through this client.

        Tokens come from ``POST /api/realtime/token`` on this client's session: one now
        (it also gives the WebSocket URL), then a fresh one before every later connection
        attempt and refresh. Connection attempts go through the session's ``ws:`` circuit
        breaker for that host. With an outbox, every (re)connect wakes its drainer. This
        client's ``on_event`` hooks get the realtime client's events too. Call
        ``connect()`` on the result; ``subscribe_channel(channel_id, on_event)`` gives
        typed chat events.

        Args:
            **options: :class:`RealtimeClient` arguments (``url=`` overrides the server's).

        Raises:
            APIError: the token endpoint refused (e.g. 401 with a wrong key).
            TransportError: the token endpoint could not be reached.
        """

        def fetch() -> Any:
            # A token creates nothing the caller could see twice: a key makes the POST safe
            # to retry after a lost response, like any other create.
            key = new_idempotency_key()
            response = self._request("POST", "api/realtime/token", idempotency_key=key)
            return self._parse(response, lambda data, _replayed: data)

        client = RealtimeClient.from_token_source(
            fetch, breaker_for=lambda url: self.session.breaker_for(url, kind="ws"), **options
        )
        client.events = Emitter(parent=self._events)  # this client's hooks get its events
        drainer = self._drainer
        if drainer is not None:
            client.add_reconnect_listener(lambda: drainer.notify(expedite=True))
        self._realtime.add(client)  # closed by close()
        return client

    # -- plumbing ------------------------------------------------------------------------

    def _create(self, body: dict[str, Any], key: str, model: type[M]) -> M:
        """POST one create under ``key`` and decode the created object."""
        path = "api/messages" if model is Message else "api/reactions"
        response = self._request("POST", path, json=body, idempotency_key=key)
        return self._parse(response, model.from_json, key)

    @staticmethod
    def _key(idempotency_key: str | None) -> str:
        """The key of a queued create: the caller's, the active key scope's, or a new one."""
        return ChatClient._explicit_or_derived(idempotency_key) or new_idempotency_key()

    @staticmethod
    def _explicit_or_derived(idempotency_key: str | None) -> str | None:
        """The caller's key (checked), else the active key scope's (e.g. a Celery task's).

        None outside a scope: the multi-tap window then picks the key.
        """
        if idempotency_key is not None:
            return check_idempotency_key(idempotency_key)
        return derived_key()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> requests.Response:
        """Send one operation; return a 2xx response or raise the matching APIError."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        try:
            response = self.session.request(method, path, json=json, params=params, headers=headers)
        except ChatSDKError as exc:
            exc.idempotency_key = idempotency_key
            raise
        if response.status_code >= 400:
            error = error_for_response(response)
            error.attempts = attempts_of(response)
            error.idempotency_key = idempotency_key
            raise error
        return response

    @staticmethod
    def _parse(
        response: requests.Response, build: Callable[[object, bool], T], key: str | None = None
    ) -> T:
        """Decode a 2xx body with ``build``; a body off the contract is an InvalidResponseError."""
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        try:
            data = decode_json(response)
            result = build(data, replayed)
        except (ValueError, TypeError, KeyError) as exc:
            error = InvalidResponseError(
                response.status_code,
                None,
                f"response is not the JSON the contract promises ({exc}): {excerpt(response.text)}",
                body=response.text,
                response=response,
                request=response.request,
            )
            error.attempts = attempts_of(response)
            error.idempotency_key = key
            raise error from exc
        return result
