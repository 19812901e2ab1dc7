"""The REST half of the reference server: API.md over aiohttp, plus fault injection.

The endpoints themselves are :class:`~chatsdk.testing._api.RestCore`'s (shared with the
in-memory transport). One aiohttp middleware wraps every ``/api/*`` request: it counts it,
draws the fault decision (health excluded), applies the failing faults that happen before
processing (``drop_before``, ``stall``, ``server_error``, ``rate_limit``), checks the API key
and the body size, runs the handler, maps :class:`ApiError` to the JSON error body, and
finally applies ``drop_after`` (the answer is committed, then the connection is reset).
The one handler hands the request to RestCore, sleeping the injected latency between
validation and processing (while an idempotency reservation is held).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import web

from chatsdk.testing._api import HEALTH_PATH, Answer, Call, Caller, Publish, RestCore
from chatsdk.testing._faults import NO_FAULT, FaultDecision, FaultInjector
from chatsdk.testing._store import Counters, Store
from chatsdk.testing._wire import INJECTED_MESSAGES, MAX_BODY_BYTES, ApiError

__all__ = ["RestApi", "reset_transport"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _RequestContext:
    """Per-request state set by the middleware (one asyncio task runs both)."""

    __slots__ = ("caller", "delay")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.caller: Caller | None = None


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
    """The aiohttp side of the REST API: fault injection around :class:`RestCore`.

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
        self._counters = counters
        self._injector = injector
        self._core = RestCore(
            store=store,
            counters=counters,
            api_keys=api_keys,
            forbidden_keys=forbidden_keys,
            token_ttl=token_ttl,
            publish=publish,
        )

    def install(self, app: web.Application) -> None:
        """Add the middleware and the one route (RestCore routes every ``/api/*`` path)."""
        app.middlewares.append(self._middleware)
        app.router.add_route("*", "/api/{tail:.*}", self._dispatch)

    # -- middleware --------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        self._counters.inc("requests")
        health = request.path == HEALTH_PATH
        decision = NO_FAULT if health else self._injector().decide()
        early = await self._early_fault(request, decision)
        if early is not None:
            return early
        context = _RequestContext(decision.delay)
        _CONTEXT.set(context)
        if decision.delay > 0:
            self._counters.inc("fault.delay")
        try:
            context.caller = self._core.authenticate(_call(request, b""))
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes")
            response = await handler(request)
        except ApiError as error:
            response = _error_response(error)
        except web.HTTPRequestEntityTooLarge:
            response = _error_response(ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes"))
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
        error = ApiError(decision.status, INJECTED_MESSAGES[decision.status], headers=headers)
        return _error_response(error)

    # -- the one handler ---------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        """Hand the request to RestCore, with the injected latency where work happens."""
        pending = self._core.prepare(_call(request, await request.read()), _CONTEXT.get().caller)
        if pending.answer is not None:
            return _answer_response(pending.answer)
        try:
            delay = _CONTEXT.get().delay
            if delay > 0:
                await asyncio.sleep(delay)
            answer = pending.run()
        except BaseException:
            pending.abandon()
            raise
        return _answer_response(answer)


def _call(request: web.Request, body: bytes) -> Call:
    return Call(
        method=request.method,
        path=request.rel_url.raw_path,
        query=request.query,
        headers=request.headers,
        body=body,
        host=request.host,
    )


def _answer_response(answer: Answer) -> web.StreamResponse:
    if answer.body is None:
        return web.Response(status=answer.status, headers=answer.headers)
    return _json_response(answer.status, answer.body, answer.headers)
