"""Idempotency keys and in-process deduplication: one create per intent.

Two layers keep a create from happening twice:

- the server deduplicates by ``Idempotency-Key`` for 24 h (API.md), so a retry, a restart or
  another process that reuses the key gets the stored answer;
- this module deduplicates inside one client: concurrent calls with the same key share one
  HTTP request (single-flight), and a repeat of the same create without an explicit key
  within ``dedup_window`` seconds (a double tap) reuses the first call's key and result.
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import attrs

from chatsdk import _fork
from chatsdk._errors import ChatSDKError, ConfigurationError, IdempotencyKeyReusedError
from chatsdk._validation import check_seconds

__all__ = [
    "NAMESPACE_ENV",
    "Deduplicator",
    "KeyScope",
    "default_namespace",
    "derived_key",
    "idempotency_key_for",
    "enter_scope",
    "exit_scope",
    "key_scope",
    "new_idempotency_key",
    "set_default_namespace",
]

log = logging.getLogger(__name__)

#: Namespace of the keys derived by :func:`idempotency_key_for`.
_NAMESPACE = uuid.UUID("5b0c8a64-6f8e-4c4e-9a57-2b1f1ad5e0c1")


class _Replayable(Protocol):
    @property
    def replayed(self) -> bool: ...


R = TypeVar("R", bound=_Replayable)


#: The environment variable naming the default namespace of :func:`idempotency_key_for`.
NAMESPACE_ENV = "CHATSDK_KEY_NAMESPACE"

_default_namespace: str | None = None


def new_idempotency_key() -> str:
    """A fresh random key (UUID4) for one logical operation."""
    return str(uuid.uuid4())


def set_default_namespace(namespace: str | None) -> None:
    """Set the process's default namespace of :func:`idempotency_key_for` (None: unset).

    The framework integrations call this with their ``KEY_NAMESPACE`` setting.

    Raises:
        ValueError: ``namespace`` is not a non-empty string or None.
    """
    global _default_namespace  # noqa: PLW0603 - one process-wide setting
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError(f"a key namespace must be a non-empty string, got {namespace!r}")
    _default_namespace = namespace


def default_namespace() -> str | None:
    """The namespace used when none is passed: the one set, else ``$CHATSDK_KEY_NAMESPACE``."""
    if _default_namespace is not None:
        return _default_namespace
    return os.environ.get(NAMESPACE_ENV) or None


def idempotency_key_for(*parts: object, namespace: str | None = None) -> str:
    """A stable key derived from your own identifiers, e.g. ``("order-shipped", order_id)``.

    The same parts always give the same key, in any process, on any day, so a job that runs
    twice (a cron rerun, a redelivered webhook, two workers) creates its message once while the
    server remembers the key (24 h). Parts are told apart by type and position: ``("a", 1)``,
    ``("a", "1")`` and ``("a1",)`` give three different keys.

    Args:
        *parts: your identifiers (strings, numbers, or anything with a stable ``str()``).
        namespace: keeps keys of different environments or apps apart (``"prod"``,
            ``"shop-staging"``), so that the same database ids in two of them (or after ids
            restart) do not collide. Default: the integration's ``KEY_NAMESPACE`` setting,
            else ``$CHATSDK_KEY_NAMESPACE``, else none (the keys of earlier versions).

    Raises:
        ValueError: no parts were given, or ``namespace`` is an empty string.
    """
    if not parts:
        raise ValueError("idempotency_key_for needs at least one part")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
    ns = namespace if namespace is not None else default_namespace()
    items: list[Any] = [
        [type(p).__name__, p if isinstance(p, (str, int, float)) else str(p)] for p in parts
    ]
    if ns is not None:
        # A leading element no part can produce (parts are pairs), so no clash with the
        # keys of namespace-less calls.
        items.insert(0, ["namespace", ns, None])
    canonical = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
    return f"chatsdk-{uuid.uuid5(_NAMESPACE, canonical)}"


class KeyScope:
    """Keys for the creates of one run of a unit of work (e.g. a Celery task run).

    The n-th create without an explicit key inside the scope gets
    ``idempotency_key_for(*parts, n)``: a redelivered or retried run that makes the same
    creates in the same order posts each of them once. Thread-safe.
    """

    def __init__(self, *parts: object) -> None:
        if not parts:
            raise ValueError("a KeyScope needs at least one part")
        self.parts = parts
        self._positions = itertools.count()
        self._lock = threading.Lock()

    def next_key(self) -> str:
        """The key of the next create in this run."""
        with self._lock:
            position = next(self._positions)
        return idempotency_key_for("chatsdk.key-scope", *self.parts, position)


_scope: contextvars.ContextVar[KeyScope | None] = contextvars.ContextVar(
    "chatsdk_key_scope", default=None
)


def derived_key() -> str | None:
    """The next key of the active :class:`KeyScope`, or None outside any scope."""
    scope = _scope.get()
    return None if scope is None else scope.next_key()


def enter_scope(scope: KeyScope | None) -> contextvars.Token[KeyScope | None]:
    """Make ``scope`` the active one in this context; pass the token to :func:`exit_scope`."""
    return _scope.set(scope)


def exit_scope(token: contextvars.Token[KeyScope | None]) -> None:
    """Restore the scope that was active before :func:`enter_scope`."""
    _scope.reset(token)


@contextmanager
def key_scope(*parts: object) -> Iterator[KeyScope]:
    """Within the block, creates without an explicit key get keys derived from ``parts``."""
    scope = KeyScope(*parts)
    token = enter_scope(scope)
    try:
        yield scope
    finally:
        exit_scope(token)


def fingerprint(kind: str, body: dict[str, Any]) -> str:
    """A digest of what an operation would create, to recognise a repeat of the same intent."""
    canonical = json.dumps([kind, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Flight:
    """One create in progress: its followers wait on ``done``."""

    __slots__ = ("done", "error", "fingerprint", "followers", "result")

    def __init__(self, print_: str) -> None:
        self.fingerprint = print_
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        #: callers sharing this flight's outcome instead of sending (for introspection).
        self.followers = 0


@attrs.define
class _RecentCreate:
    """A recent create without an explicit key, remembered for the multi-tap window."""

    key: str
    started: float
    result: Any = None


class Deduplicator:
    """Single-flight by key, and the multi-tap window by intent, for one client.

    Args:
        window: seconds, counted from the first call, during which a repeat of the same create
            without an explicit key returns the first call's result; 0 turns the window off.
        clock: a monotonic clock (inject for tests).
        max_entries: intents remembered at most (older ones are forgotten first).

    Thread-safe; memory is bounded by ``max_entries`` plus the creates in flight.
    """

    def __init__(
        self,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 4096,
    ) -> None:
        checked = check_seconds("dedup_window", window, error=ConfigurationError)
        assert checked is not None  # (None and infinity are refused without none=True)
        self.window = checked
        self._clock = clock
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._taps: collections.OrderedDict[str, _RecentCreate] = collections.OrderedDict()
        _fork.register(self, order=_fork.ORDER_CLIENT, after_child=Deduplicator._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: the creates in flight were the parent's threads', never ours.

        A child that repeats one sends it itself (under the same key, so the server still
        answers once); waiting for the parent's thread would wait for ever.
        """
        self._lock = threading.Lock()
        self._flights = {}

    def run(self, kind: str, body: dict[str, Any], key: str | None, send: Callable[[str], R]) -> R:
        """Create once: call ``send(key)`` unless an identical create can answer for it.

        Args:
            kind: the operation (``"message"``, ``"reaction"``).
            body: the wire body (identifies the intent).
            key: the caller's explicit key, or None to let the window pick one.
            send: performs the create under the given key.

        Returns:
            ``send``'s result, or the shared result of an identical create (``replayed``).

        Raises:
            IdempotencyKeyReusedError: the key is in flight here with a different body.
            ChatSDKError: the identical create this call waited for was interrupted in its
                own thread (``KeyboardInterrupt``, ``SystemExit``): only that thread gets the
                interrupt; the outcome is unknown.
        """
        print_ = fingerprint(kind, body)
        tap: _RecentCreate | None = None
        if key is None:
            tap = self._tap(print_)
            if tap is not None and tap.result is not None:
                log.info(
                    "multi-tap: a repeat of a %s sent %.3fs ago was answered locally",
                    kind,
                    self._clock() - tap.started,
                )
                return attrs.evolve(tap.result, replayed=True)  # type: ignore[no-any-return]
            key = tap.key if tap is not None else new_idempotency_key()
        result = self._single_flight(key, print_, send)
        if tap is not None:
            with self._lock:
                tap.result = result
        return result

    def _tap(self, print_: str) -> _RecentCreate | None:
        """The window's entry for this intent, created if new; None when the window is off."""
        if self.window <= 0:
            return None
        now = self._clock()
        with self._lock:
            self._forget(now)
            tap = self._taps.get(print_)
            if tap is None:
                tap = self._taps[print_] = _RecentCreate(new_idempotency_key(), now)
            return tap

    def _forget(self, now: float) -> None:
        while self._taps:
            oldest = next(iter(self._taps.values()))
            if now - oldest.started < self.window and len(self._taps) < self._max_entries:
                return
            self._taps.popitem(last=False)

    def _single_flight(self, key: str, print_: str, send: Callable[[str], R]) -> R:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight(print_)
            elif flight.fingerprint == print_:
                flight.followers += 1
        if not leader:
            if flight.fingerprint != print_:
                raise IdempotencyKeyReusedError(
                    422,
                    "idempotency_key_reused",
                    f"key {key!r} is in flight in this client with a different body",
                )
            flight.done.wait()
            if flight.error is not None and not isinstance(flight.error, Exception):
                # A Ctrl-C or SystemExit belongs to the thread it was raised in; here it
                # would stop a thread nobody interrupted.
                raise _interrupted(key, flight.error) from None
            if flight.error is not None:
                raise flight.error
            return attrs.evolve(flight.result, replayed=True)  # type: ignore[no-any-return]
        try:
            flight.result = send(key)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                if self._flights.get(key) is flight:  # (after a fork the table is new)
                    del self._flights[key]
            flight.done.set()
        return flight.result  # type: ignore[no-any-return]


def _interrupted(key: str, interrupt: BaseException) -> ChatSDKError:
    """What a follower raises when the call it shared was interrupted in the leader's thread."""
    error = ChatSDKError(
        f"the identical call this one was waiting for (same Idempotency-Key) was interrupted "
        f"in its own thread ({type(interrupt).__name__}); whether it was created is unknown: "
        "call again with the same idempotency_key to find out (the server answers once)"
    )
    error.idempotency_key = key
    return error
