"""The REST endpoints of API.md, independent of any web framework (no aiohttp).

Both the reference server (:mod:`chatsdk.testing._rest`, over aiohttp) and
:class:`~chatsdk.testing.InMemoryTransport` (in-process) answer through this one
:class:`RestCore`, so the two cannot drift apart: routing, authentication, validation,
idempotency (replays, 409, 422) and error bodies are written once.

A request is a :class:`Call`; :meth:`RestCore.prepare` validates it and returns a
:class:`Pending` whose :meth:`Pending.run` does the work. The two steps are apart so that the
server can inject processing latency between them while the idempotency reservation is held
(a second request with the same key then sees ``409 idempotency_key_in_use``);
:meth:`RestCore.handle` runs the whole pipeline at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from chatsdk.testing._store import Counters, Store, user_id_for
from chatsdk.testing._wire import (
    MAX_BODY_BYTES,
    ApiError,
    rfc3339,
    validate_channel_id,
    validate_idempotency_key,
    validate_limit,
    validate_message_create,
    validate_message_edit,
    validate_reaction,
    validate_reaction_create,
)

__all__ = ["HEALTH_PATH", "Answer", "Call", "Caller", "Pending", "Publish", "RestCore"]

HEALTH_PATH = "/api/health"

Publish = Callable[[str, dict[str, Any]], object]


@dataclass(frozen=True)
class Call:
    """One HTTP request, as the endpoints see it.

    Attributes:
        method: the HTTP method, upper case.
        path: the raw (percent-encoded) path, without the query.
        query: query parameters (the first value of each).
        headers: request headers (a case-insensitive mapping).
        body: the raw body.
        host: ``host[:port]`` the request was addressed to (for the realtime URL).
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    host: str


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, JSON body (None for an empty one) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, error: ApiError) -> Answer:
        """The contract's JSON error answer for ``error``."""
        return cls(error.status, error.body(), dict(error.headers))


@dataclass(frozen=True)
class Caller:
    """The authenticated API key and the user it acts as."""

    api_key: str
    user: str


class Pending:
    """A validated request: either already answered (a replay, 409, 422), or to :meth:`run`.

    Whoever does not call :meth:`run` after :meth:`RestCore.prepare` (or sees it raise)
    must call :meth:`abandon`, which frees an idempotency reservation.
    """

    __slots__ = ("_abandon", "_run", "answer")

    def __init__(
        self,
        run: Callable[[], Answer] | None = None,
        *,
        answer: Answer | None = None,
        abandon: Callable[[], None] | None = None,
    ) -> None:
        #: The answer when no processing is needed, else None.
        self.answer = answer
        self._run = run
        self._abandon = abandon

    def run(self) -> Answer:
        """Process the request (raises :class:`ApiError` for an error answer)."""
        assert self._run is not None, "an answered Pending has nothing to run"
        return self._run()

    def abandon(self) -> None:
        """Give up a request that was prepared but not (successfully) run."""
        if self._abandon is not None:
            self._abandon()


_Endpoint = Callable[[Call, "Caller | None", list[str]], Pending]


class RestCore:
    """Every endpoint of API.md over a :class:`Store`.

    Args:
        store: the data.
        counters: where ``creates``, ``replays``, ``conflicts``, ``key_reused``,
            ``status.<code>`` and the like are counted.
        api_keys: keys accepted; None accepts any non-empty key.
        forbidden_keys: keys recognised but refused with 403.
        token_ttl: returns the lifetime of new realtime tokens, in seconds.
        publish: publishes realtime ``data`` on a channel such as ``chat:42``.
    """

    def __init__(
        self,
        *,
        store: Store,
        counters: Counters,
        api_keys: Collection[str] | None,
        forbidden_keys: Collection[str] = (),
        token_ttl: Callable[[], float] = lambda: 3600.0,
        publish: Publish = lambda _channel, _data: None,
    ) -> None:
        self.store = store
        self.counters = counters
        self._api_keys = None if api_keys is None else tuple(api_keys)
        self._forbidden_keys = tuple(forbidden_keys)
        self._token_ttl = token_ttl
        self._publish = publish
        # (method, path pattern); "{}" matches one non-empty segment.
        self._routes: list[tuple[str, tuple[str, ...], _Endpoint]] = [
            ("GET", ("api", "health"), self._health),
            ("POST", ("api", "messages"), self._create_message),
            ("GET", ("api", "channels", "{}", "messages"), self._list_messages),
            ("PATCH", ("api", "messages", "{}"), self._edit_message),
            ("DELETE", ("api", "messages", "{}"), self._delete_message),
            ("POST", ("api", "reactions"), self._create_reaction),
            ("DELETE", ("api", "messages", "{}", "reactions", "{}"), self._delete_reaction),
            ("POST", ("api", "realtime", "token"), self._realtime_token),
        ]

    # -- the pipeline ------------------------------------------------------------------

    def handle(self, call: Call) -> Answer:
        """Authenticate, check the size, validate and process ``call``; never raises ApiError."""
        try:
            caller = self.authenticate(call)
            if len(call.body) > MAX_BODY_BYTES:
                raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes")
            pending = self.prepare(call, caller)
            answer = pending.answer
            if answer is None:
                try:
                    answer = pending.run()
                except BaseException:
                    pending.abandon()
                    raise
        except ApiError as error:
            answer = Answer.error(error)
        self.counters.inc(f"status.{answer.status}")
        return answer

    def authenticate(self, call: Call) -> Caller | None:
        """The caller of ``call`` (None for the health check, which needs no key).

        Raises:
            ApiError: 401 for a missing or unknown key, 403 for a forbidden one.
        """
        if call.path == HEALTH_PATH:
            return None
        key = call.headers.get("X-API-Key")
        if not key:
            raise ApiError(401, "missing X-API-Key header")
        if any(hmac.compare_digest(key, k) for k in self._forbidden_keys):
            raise ApiError(403, "this API key may not use this API")
        if self._api_keys is not None and not any(
            hmac.compare_digest(key, k) for k in self._api_keys
        ):
            raise ApiError(401, "invalid API key")
        return Caller(key, user_id_for(key))

    def prepare(self, call: Call, caller: Caller | None) -> Pending:
        """Route and validate ``call``; takes the idempotency reservation of a create.

        Raises:
            ApiError: 404 (no such path), 405 (with ``Allow``), 400, 413, 409, 422.
        """
        segments = call.path.split("/")[1:]
        method = "GET" if call.method == "HEAD" else call.method
        allowed: set[str] = set()
        for route_method, pattern, endpoint in self._routes:
            params = _match(pattern, segments)
            if params is None:
                continue
            if route_method == method:
                return endpoint(call, caller, params)
            allowed.add(route_method)
        if allowed:
            allow = ",".join(sorted(allowed | ({"HEAD"} if "GET" in allowed else set())))
            raise ApiError(405, "Method Not Allowed", headers={"Allow": allow})
        raise ApiError(404, "Not Found")

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _json(call: Call) -> Any:
        if len(call.body) > MAX_BODY_BYTES:
            raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(call.body)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "body: must be valid UTF-8 JSON") from None

    def _idempotent(
        self,
        call: Call,
        caller: Caller | None,
        body: Any,
        action: Callable[[], Answer],
    ) -> Pending:
        key = validate_idempotency_key(call.headers.get("Idempotency-Key"))
        if key is None:
            return Pending(action)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        fingerprint = hashlib.sha256(
            f"{call.method} {unquote(call.path)}\n{canonical}".encode()
        ).hexdigest()
        scope = (_require(caller).api_key, key)
        outcome, status, stored = self.store.idempotency_begin(scope, fingerprint)
        if outcome == "replay":
            self.counters.inc("replays")
            return Pending(answer=Answer(status, stored, {"Idempotent-Replayed": "true"}))
        if outcome == "in_progress":
            self.counters.inc("conflicts")
            raise ApiError(409, "a request with this Idempotency-Key is still being processed")
        if outcome == "mismatch":
            self.counters.inc("key_reused")
            raise ApiError(422, "this Idempotency-Key was used with a different request body")
        self.counters.inc("idempotency_reserved")

        def run() -> Answer:
            answer = action()
            self.store.idempotency_finish(scope, answer.status, answer.body)
            return answer

        return Pending(run, abandon=lambda: self.store.idempotency_abandon(scope))

    # -- endpoints ---------------------------------------------------------------------

    def _health(self, _call: Call, _caller: Caller | None, _params: list[str]) -> Pending:
        return Pending(answer=Answer(200, {"status": "ok"}))

    def _create_message(self, call: Call, caller: Caller | None, _params: list[str]) -> Pending:
        body = self._json(call)
        fields = validate_message_create(body)
        user = _require(caller).user

        def create() -> Answer:
            message = self.store.create_message(fields, user)
            self.counters.inc("creates")
            self.counters.inc("messages_created")
            self._publish(
                f"chat:{message['channelId']}", {"type": "message.new", "message": message}
            )
            return Answer(201, message)

        return self._idempotent(call, caller, body, create)

    def _list_messages(self, call: Call, _caller: Caller | None, params: list[str]) -> Pending:
        channel_id = validate_channel_id(params[0])
        limit = validate_limit(call.query.get("limit"))
        before = call.query.get("before")
        if before is not None and not before:
            raise ApiError(400, "before: must be a message id")

        def run() -> Answer:
            page = self.store.list_messages(channel_id, limit, before)
            if page is None:
                raise ApiError(400, "before: no such message in this channel")
            messages, has_more = page
            return Answer(200, {"messages": messages, "hasMore": has_more})

        return Pending(run)

    def _edit_message(self, call: Call, _caller: Caller | None, params: list[str]) -> Pending:
        message_id = params[0]
        text = validate_message_edit(self._json(call))

        def run() -> Answer:
            message = self.store.edit_message(message_id, text)
            if message is None:
                raise ApiError(404, f"no message {message_id!r}")
            self._publish(
                f"chat:{message['channelId']}", {"type": "message.updated", "message": message}
            )
            return Answer(200, message)

        return Pending(run)

    def _delete_message(self, _call: Call, _caller: Caller | None, params: list[str]) -> Pending:
        message_id = params[0]

        def run() -> Answer:
            exists, message = self.store.delete_message(message_id)
            if not exists:
                raise ApiError(404, f"no message {message_id!r}")
            if message is not None:
                self._publish(
                    f"chat:{message['channelId']}", {"type": "message.deleted", "message": message}
                )
            return Answer(204)

        return Pending(run)

    def _create_reaction(self, call: Call, caller: Caller | None, _params: list[str]) -> Pending:
        body = self._json(call)
        message_id, reaction = validate_reaction_create(body)
        user = _require(caller).user

        def create() -> Answer:
            added = self.store.add_reaction(message_id, reaction, user)
            if added is None:
                raise ApiError(404, f"no message {message_id!r}")
            wire, created = added
            if not created:
                return Answer(200, wire)
            self.counters.inc("creates")
            self.counters.inc("reactions_created")
            channel = self.store.channel_of(message_id)
            self._publish(f"chat:{channel}", {"type": "reaction.added", "reaction": wire})
            return Answer(201, wire)

        return self._idempotent(call, caller, body, create)

    def _delete_reaction(self, _call: Call, caller: Caller | None, params: list[str]) -> Pending:
        message_id = params[0]
        reaction = validate_reaction(params[1])
        user = _require(caller).user

        def run() -> Answer:
            if not self.store.message_exists(message_id):
                raise ApiError(404, f"no message {message_id!r}")
            removed = self.store.remove_reaction(message_id, reaction, user)
            if removed is not None:
                channel = self.store.channel_of(message_id)
                self._publish(f"chat:{channel}", {"type": "reaction.removed", "reaction": removed})
            return Answer(204)

        return Pending(run)

    def _realtime_token(self, call: Call, caller: Caller | None, _params: list[str]) -> Pending:
        user = _require(caller).user

        def run() -> Answer:
            token, expires_at = self.store.issue_token(user, self._token_ttl())
            self.counters.inc("tokens_issued")
            return Answer(
                200,
                {
                    "token": token,
                    "url": f"ws://{call.host}/connection/websocket",
                    "expiresAt": rfc3339(expires_at),
                },
            )

        return Pending(run)


def _match(pattern: tuple[str, ...], segments: list[str]) -> list[str] | None:
    """The decoded parameters of ``segments`` under ``pattern``, or None if it does not fit."""
    if len(pattern) != len(segments):
        return None
    params: list[str] = []
    for expected, segment in zip(pattern, segments, strict=True):
        if expected == "{}":
            if not segment:
                return None
            params.append(unquote(segment))
        elif unquote(segment) != expected:
            return None
    return params


def _require(caller: Caller | None) -> Caller:
    # Only the health check runs without a caller, and it never asks for one.
    assert caller is not None, "an authenticated endpoint ran without a caller"
    return caller
