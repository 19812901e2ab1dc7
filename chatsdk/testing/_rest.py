"""The REST half of the reference server: every endpoint of API.md, plus fault injection.

One aiohttp middleware wraps every ``/api/*`` request: it counts it, draws the fault
decision (health excluded), applies the failing faults that happen before processing
(``drop_before``, ``stall``, ``server_error``, ``rate_limit``), checks the API key and the
body size, runs the handler, maps :class:`ApiError` to the JSON error body, and finally
applies ``drop_after`` (the answer is committed, then the connection is reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import web

from chatsdk.testing._faults import NO_FAULT, FaultDecision, FaultInjector
from chatsdk.testing._store import Counters, Store, user_id_for
from chatsdk.testing._wire import (
    MAX_BODY_BYTES,
    ApiError,
    error_body,
    rfc3339,
    validate_channel_id,
    validate_idempotency_key,
    validate_limit,
    validate_message_create,
    validate_message_edit,
    validate_reaction,
    validate_reaction_create,
)

__all__ = ["RestApi", "reset_transport"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Publish = Callable[[str, dict[str, Any]], object]


class _RequestContext:
    """Per-request state set by the middleware (one asyncio task runs both)."""

    __slots__ = ("api_key", "delay", "user")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.api_key = ""
        self.user = ""


_CONTEXT: contextvars.ContextVar[_RequestContext] = contextvars.ContextVar("chatsdk_request")
_HTML_ERROR = (
    "<html><head><title>{status}</title></head><body><center><h1>{status}</h1></center>"
    "<hr><center>nginx</center></body></html>"
)
_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    429: "Too Many Requests",
}


def reset_transport(transport: asyncio.BaseTransport | None) -> None:
    """Close a connection with a TCP reset (``SO_LINGER`` 0), dropping unsent data."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # the socket may have died meanwhile
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _error_response(error: ApiError) -> web.Response:
    return _json_response(error.status, error.body(), error.headers)


class RestApi:
    """The REST endpoints and the middleware, bound to a store and a fault injector.

    Args:
        store: the data.
        counters: the server's counters.
        api_keys: keys accepted.
        forbidden_keys: keys recognised but not allowed (403).
        token_ttl: lifetime of realtime tokens, in seconds.
        injector: returns the current fault injector (the plan may change at runtime).
        publish: publishes realtime ``data`` on a channel such as ``chat:42``.
    """

    def __init__(
        self,
        *,
        store: Store,
        counters: Counters,
        api_keys: Collection[str],
        forbidden_keys: Collection[str],
        token_ttl: Callable[[], float],
        injector: Callable[[], FaultInjector],
        publish: Publish,
    ) -> None:
        self._store = store
        self._counters = counters
        self._api_keys = tuple(api_keys)
        self._forbidden_keys = tuple(forbidden_keys)
        self._token_ttl = token_ttl
        self._injector = injector
        self._publish = publish

    def install(self, app: web.Application) -> None:
        """Add the middleware and routes to ``app``."""
        app.middlewares.append(self._middleware)
        app.router.add_get("/api/health", self._health)
        app.router.add_post("/api/messages", self._create_message)
        app.router.add_get("/api/channels/{channel_id}/messages", self._list_messages)
        app.router.add_patch("/api/messages/{message_id}", self._edit_message)
        app.router.add_delete("/api/messages/{message_id}", self._delete_message)
        app.router.add_post("/api/reactions", self._create_reaction)
        app.router.add_delete(
            "/api/messages/{message_id}/reactions/{reaction}", self._delete_reaction
        )
        app.router.add_post("/api/realtime/token", self._realtime_token)

    # -- middleware --------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        self._counters.inc("requests")
        health = request.path == "/api/health"
        decision = NO_FAULT if health else self._injector().decide()
        early = await self._early_fault(request, decision)
        if early is not None:
            return early
        context = _RequestContext(decision.delay)
        _CONTEXT.set(context)
        if decision.delay > 0:
            self._counters.inc("fault.delay")
        try:
            if not health:
                self._authenticate(request, context)
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes")
            response = await handler(request)
        except ApiError as error:
            response = _error_response(error)
        except web.HTTPRequestEntityTooLarge:
            response = _error_response(ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes"))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "error")
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            response = _json_response(exc.status, error_body(code, exc.reason), headers)
        self._counters.inc(f"status.{response.status}")
        if decision.kind == "drop_after":
            self._counters.inc("fault.drop_after")
            log.debug("fault drop_after: %s %s committed, resetting", request.method, request.path)
            reset_transport(request.transport)
        return response

    async def _early_fault(
        self, request: web.Request, decision: FaultDecision
    ) -> web.StreamResponse | None:
        kind = decision.kind
        if kind is None or kind == "drop_after":
            return None
        self._counters.inc(f"fault.{kind}")
        log.debug("fault %s: %s %s", kind, request.method, request.path)
        if kind == "drop_before":
            reset_transport(request.transport)
            return web.Response(status=500)  # never sent: the connection is gone
        if kind == "stall":
            await asyncio.sleep(decision.stall_seconds)
            reset_transport(request.transport)
            return web.Response(status=504)  # never sent
        headers = {"Retry-After": decision.retry_after} if decision.retry_after else {}
        if decision.html:
            text = _HTML_ERROR.format(status=f"{decision.status} {_REASONS[decision.status]}")
            return web.Response(
                status=decision.status, text=text, content_type="text/html", headers=headers
            )
        messages = {
            429: "too many requests, slow down",
            500: "internal server error (injected)",
            502: "bad gateway (injected)",
            503: "service unavailable (injected)",
            504: "gateway timeout (injected)",
        }
        error = ApiError(decision.status, messages[decision.status], headers=headers)
        return _error_response(error)

    def _authenticate(self, request: web.Request, context: _RequestContext) -> None:
        key = request.headers.get("X-API-Key")
        if not key:
            raise ApiError(401, "missing X-API-Key header")
        if any(hmac.compare_digest(key, k) for k in self._forbidden_keys):
            raise ApiError(403, "this API key may not use this API")
        if not any(hmac.compare_digest(key, k) for k in self._api_keys):
            raise ApiError(401, "invalid API key")
        context.api_key = key
        context.user = user_id_for(key)

    # -- helpers -----------------------------------------------------------------------

    async def _work(self, request: web.Request) -> None:
        """Injected processing latency, at the point where the request is processed."""
        delay = _CONTEXT.get().delay
        if delay > 0:
            await asyncio.sleep(delay)

    @staticmethod
    async def _json(request: web.Request) -> Any:
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "body: must be valid UTF-8 JSON") from None

    async def _idempotent(
        self,
        request: web.Request,
        body: Any,
        action: Callable[[], tuple[int, dict[str, Any]]],
    ) -> web.Response:
        key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
        if key is None:
            await self._work(request)
            status, answer = action()
            return _json_response(status, answer)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        fingerprint = hashlib.sha256(
            f"{request.method} {request.path}\n{canonical}".encode()
        ).hexdigest()
        scope = (_CONTEXT.get().api_key, key)
        outcome, status, stored = self._store.idempotency_begin(scope, fingerprint)
        if outcome == "replay":
            self._counters.inc("replays")
            return _json_response(status, stored, {"Idempotent-Replayed": "true"})
        if outcome == "in_progress":
            self._counters.inc("conflicts")
            raise ApiError(409, "a request with this Idempotency-Key is still being processed")
        if outcome == "mismatch":
            self._counters.inc("key_reused")
            raise ApiError(422, "this Idempotency-Key was used with a different request body")
        self._counters.inc("idempotency_reserved")
        try:
            await self._work(request)
            status, answer = action()
        except BaseException:
            self._store.idempotency_abandon(scope)
            raise
        self._store.idempotency_finish(scope, status, answer)
        return _json_response(status, answer)

    # -- handlers ----------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return _json_response(200, {"status": "ok"})

    async def _create_message(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        fields = validate_message_create(body)
        user = _CONTEXT.get().user

        def create() -> tuple[int, dict[str, Any]]:
            message = self._store.create_message(fields, user)
            self._counters.inc("creates")
            self._counters.inc("messages_created")
            self._publish(
                f"chat:{message['channelId']}", {"type": "message.new", "message": message}
            )
            return 201, message

        return await self._idempotent(request, body, create)

    async def _list_messages(self, request: web.Request) -> web.Response:
        channel_id = validate_channel_id(request.match_info["channel_id"])
        limit = validate_limit(request.query.get("limit"))
        before = request.query.get("before")
        if before is not None and not before:
            raise ApiError(400, "before: must be a message id")
        await self._work(request)
        page = self._store.list_messages(channel_id, limit, before)
        if page is None:
            raise ApiError(400, "before: no such message in this channel")
        messages, has_more = page
        return _json_response(200, {"messages": messages, "hasMore": has_more})

    async def _edit_message(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        text = validate_message_edit(await self._json(request))
        await self._work(request)
        message = self._store.edit_message(message_id, text)
        if message is None:
            raise ApiError(404, f"no message {message_id!r}")
        self._publish(
            f"chat:{message['channelId']}", {"type": "message.updated", "message": message}
        )
        return _json_response(200, message)

    async def _delete_message(self, request: web.Request) -> web.StreamResponse:
        message_id = request.match_info["message_id"]
        await self._work(request)
        exists, message = self._store.delete_message(message_id)
        if not exists:
            raise ApiError(404, f"no message {message_id!r}")
        if message is not None:
            self._publish(
                f"chat:{message['channelId']}", {"type": "message.deleted", "message": message}
            )
        return web.Response(status=204)

    async def _create_reaction(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        message_id, reaction = validate_reaction_create(body)
        user = _CONTEXT.get().user

        def create() -> tuple[int, dict[str, Any]]:
            added = self._store.add_reaction(message_id, reaction, user)
            if added is None:
                raise ApiError(404, f"no message {message_id!r}")
            wire, created = added
            if not created:
                return 200, wire
            self._counters.inc("creates")
            self._counters.inc("reactions_created")
            channel = self._store.channel_of(message_id)
            self._publish(f"chat:{channel}", {"type": "reaction.added", "reaction": wire})
            return 201, wire

        return await self._idempotent(request, body, create)

    async def _delete_reaction(self, request: web.Request) -> web.StreamResponse:
        message_id = request.match_info["message_id"]
        reaction = validate_reaction(request.match_info["reaction"])
        await self._work(request)
        if not self._store.message_exists(message_id):
            raise ApiError(404, f"no message {message_id!r}")
        removed = self._store.remove_reaction(message_id, reaction, _CONTEXT.get().user)
        if removed is not None:
            channel = self._store.channel_of(message_id)
            self._publish(f"chat:{channel}", {"type": "reaction.removed", "reaction": removed})
        return web.Response(status=204)

    async def _realtime_token(self, request: web.Request) -> web.Response:
        await self._work(request)
        token, expires_at = self._store.issue_token(_CONTEXT.get().user, self._token_ttl())
        self._counters.inc("tokens_issued")
        return _json_response(
            200,
            {
                "token": token,
                "url": f"ws://{request.host}/connection/websocket",
                "expiresAt": rfc3339(expires_at),
            },
        )
