"""Instrumentation: typed events of what the SDK did, the hooks that receive them, and the
tracer seam the OpenTelemetry integration plugs into.

Events are frozen values (stamina's ``RetryDetails`` is the model), one class per kind, each
with a ``name`` (``"retry"``, ``"breaker_state_change"``, ...). A hook is any callable taking
one event. Hooks come from two places:

- per client: ``ChatClient(..., on_event=fn)`` (and ``RealtimeClient(on_event=fn)``);
- process-wide: :func:`add_event_hook`, which the Prometheus integration uses.

Hooks run on the thread that did the work, never with one of the SDK's locks held (realtime
events run on the realtime client's dispatch thread). A hook that raises is logged and
skipped: it never breaks a send. When no hook is registered, no event is even built (call
sites check :attr:`Emitter.active` first), so the request path pays one attribute test.

Tracing works the same way without importing OpenTelemetry here: :func:`set_tracer` installs
a :class:`Tracer` (``chatsdk.integrations.otel.instrument()`` does), and the request path asks
:data:`tracer` for spans only when one is set. Integrations import this module, never the
reverse.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, ClassVar, ParamSpec, Protocol, TypeVar, Union

import attrs

if TYPE_CHECKING:
    import requests

    from chatsdk._outbox.outbox import Outbox
    from chatsdk._realtime.stats import RealtimeState
    from chatsdk._resilience.breaker import CircuitState

__all__ = [
    "PROCESS",
    "AttemptFinished",
    "AttemptSpan",
    "BreakerStateChanged",
    "Emitter",
    "EventHook",
    "OutboxBacklog",
    "OutboxDeadLettered",
    "OutboxDelivered",
    "OutboxEnqueued",
    "RealtimeReconnecting",
    "RealtimeStateChanged",
    "RecoveryFailed",
    "RetryScheduled",
    "SDKEvent",
    "Tracer",
    "add_event_hook",
    "key_prefix",
    "live_outboxes",
    "operation",
    "remove_event_hook",
    "set_tracer",
    "track_outbox",
]

log = logging.getLogger("chatsdk.instrument")
_REGISTRATION = threading.Lock()

P = ParamSpec("P")
R = TypeVar("R")


# -- events ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RetryScheduled:
    """An attempt failed and the operation will be retried after ``delay`` seconds.

    Attributes:
        host: ``scheme://host:port``.
        method: the HTTP method.
        path: the URL path (no query string).
        attempt: the attempt that failed (1 for the first).
        delay: seconds until the next attempt.
        reason: the status code (``"503"``) or the error class (``"ConnectTimeoutError"``).
    """

    name: ClassVar[str] = "retry"
    host: str
    method: str
    path: str
    attempt: int
    delay: float
    reason: str


@attrs.frozen(kw_only=True)
class AttemptFinished:
    """One HTTP attempt was sent and ended (a response, or a transport error).

    Attributes:
        host: ``scheme://host:port``.
        method: the HTTP method.
        path: the URL path (no query string).
        attempt: 1 for the first attempt of the operation.
        outcome: the status code (``"201"``) or the error class (``"ConnectError"``).
        duration: seconds the attempt took, body read included.
    """

    name: ClassVar[str] = "attempt"
    host: str
    method: str
    path: str
    attempt: int
    outcome: str
    duration: float


@attrs.frozen(kw_only=True)
class BreakerStateChanged:
    """A circuit breaker changed state (``rest:<host>`` or ``ws:<host>``).

    Attributes:
        breaker: the breaker's name (``rest:http://host:port``).
        old: the state before.
        new: the state now.
        retry_after: seconds until probes are let through (0.0 unless ``new`` is OPEN).
    """

    name: ClassVar[str] = "breaker_state_change"
    breaker: str
    old: CircuitState
    new: CircuitState
    retry_after: float


@attrs.frozen(kw_only=True)
class OutboxEnqueued:
    """An operation was committed to the outbox.

    Attributes:
        entry_id: the entry's id in the file.
        kind: ``"message"`` or ``"reaction"``.
        channel: the ordering lane.
        path: the outbox file.
    """

    name: ClassVar[str] = "outbox_enqueued"
    entry_id: int
    kind: str
    channel: str
    path: str


@attrs.frozen(kw_only=True)
class OutboxDelivered:
    """An outbox entry was delivered (``sent``).

    Attributes:
        entry_id: the entry's id in the file.
        attempts: deliveries it took.
        age: seconds from enqueue to delivery.
        path: the outbox file.
    """

    name: ClassVar[str] = "outbox_delivered"
    entry_id: int
    attempts: int
    age: float
    path: str


@attrs.frozen(kw_only=True)
class OutboxDeadLettered:
    """An outbox entry failed for good (``failed``: a dead letter, kept for ``retry``).

    Attributes:
        entry_id: the entry's id in the file.
        attempts: deliveries made.
        reason: the error class (``"UnprocessableEntityError"``), never a message body.
        path: the outbox file.
    """

    name: ClassVar[str] = "outbox_dead_lettered"
    entry_id: int
    attempts: int
    reason: str
    path: str


@attrs.frozen(kw_only=True)
class OutboxBacklog:
    """A client closed with this many outbox entries still pending (0: all delivered).

    Attributes:
        count: entries ``queued`` or ``sending`` left in the file for the next process.
        path: the outbox file.
    """

    name: ClassVar[str] = "outbox_backlog"
    count: int
    path: str


@attrs.frozen(kw_only=True)
class RealtimeStateChanged:
    """A realtime client changed state.

    Attributes:
        url: the WebSocket URL.
        old: the state before.
        new: the state now.
    """

    name: ClassVar[str] = "realtime_state_change"
    url: str
    old: RealtimeState
    new: RealtimeState


@attrs.frozen(kw_only=True)
class RealtimeReconnecting:
    """A realtime connection (or attempt) ended and the client reconnects after ``delay``.

    Attributes:
        url: the WebSocket URL.
        attempt: attempts in a row that did not reach connected (0 after a working
            connection ended).
        delay: seconds until the next attempt.
        close_code: the code the connection ended with (None when the handshake failed).
    """

    name: ClassVar[str] = "realtime_reconnect"
    url: str
    attempt: int
    delay: float
    close_code: int | None


@attrs.frozen(kw_only=True)
class RecoveryFailed:
    """Missed publications on ``channel`` could not be recovered (reload from the REST API).

    Attributes:
        channel: the realtime channel (``chat:42``).
    """

    name: ClassVar[str] = "recovery_failed"
    channel: str


SDKEvent = Union[
    RetryScheduled,
    AttemptFinished,
    BreakerStateChanged,
    OutboxEnqueued,
    OutboxDelivered,
    OutboxDeadLettered,
    OutboxBacklog,
    RealtimeStateChanged,
    RealtimeReconnecting,
    RecoveryFailed,
]
EventHook = Callable[[SDKEvent], object]


# -- hooks -------------------------------------------------------------------------------


class Emitter:
    """Hands events to hooks: its own, then its parent's (the process-wide ones last).

    Args:
        hooks: a hook or hooks of this emitter.
        parent: the emitter whose hooks also get every event (default: the process-wide one).
    """

    __slots__ = ("_hooks", "_parent")

    _parent: Emitter | None

    def __init__(
        self,
        hooks: EventHook | Iterable[EventHook] | None = None,
        *,
        parent: Emitter | None = None,
    ) -> None:
        self._hooks: tuple[EventHook, ...] = _hooks(hooks)
        self._parent = _GLOBAL if parent is None else parent

    @property
    def active(self) -> bool:
        """True when some hook would receive an event (build events only then)."""
        return bool(self._hooks) or (self._parent is not None and self._parent.active)

    def add(self, hooks: EventHook | Iterable[EventHook] | None) -> None:
        """Register more hooks on this emitter."""
        new = _hooks(hooks)
        with _REGISTRATION:  # emit() reads the tuple without a lock: replace, never mutate
            self._hooks += new

    def remove(self, hook: EventHook) -> None:
        """Unregister ``hook`` (every registration of it); unknown hooks are ignored."""
        with _REGISTRATION:
            self._hooks = tuple(h for h in self._hooks if h is not hook)

    def emit(self, event: SDKEvent) -> None:
        """Call every hook with ``event``; a hook that raises is logged, never propagated."""
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                log.exception("event hook %r failed on a %s event", hook, event.name)
        if self._parent is not None:
            self._parent.emit(event)


def _hooks(hooks: EventHook | Iterable[EventHook] | None) -> tuple[EventHook, ...]:
    if hooks is None:
        return ()
    if callable(hooks):
        return (hooks,)
    found = tuple(hooks)
    bad = [h for h in found if not callable(h)]
    if bad:
        raise TypeError(f"on_event must be a callable or callables, got {bad[0]!r}")
    return found


_GLOBAL: Emitter | None = None  # None while the root itself is built
#: The process-wide emitter, the end of every chain (see :func:`add_event_hook`).
PROCESS = Emitter()
_GLOBAL = PROCESS


def add_event_hook(hook: EventHook) -> None:
    """Call ``hook(event)`` for every event of every client in this process.

    Raises:
        TypeError: ``hook`` is not callable.
    """
    if not callable(hook):
        raise TypeError(f"an event hook must be callable, got {hook!r}")
    PROCESS.add(hook)


def remove_event_hook(hook: EventHook) -> None:
    """Stop calling a hook registered with :func:`add_event_hook`."""
    PROCESS.remove(hook)


def key_prefix(key: str | None) -> str | None:
    """The first 8 characters of an idempotency key: enough to find it, not to reuse it."""
    return None if key is None else key[:8]


# -- the outboxes of this process's clients ----------------------------------------------

_OUTBOXES: weakref.WeakSet[Outbox] = weakref.WeakSet()
_OUTBOXES_LOCK = threading.Lock()


def track_outbox(outbox: Outbox) -> None:
    """Remember a client's outbox while it is open (for scrape-time statistics)."""
    with _OUTBOXES_LOCK:
        _OUTBOXES.add(outbox)


def live_outboxes() -> list[Outbox]:
    """The open outboxes of this process's clients, one per file."""
    with _OUTBOXES_LOCK:
        for outbox in [o for o in _OUTBOXES if o.closed]:
            _OUTBOXES.discard(outbox)
        by_path = {outbox.path: outbox for outbox in _OUTBOXES}
    return list(by_path.values())


# -- tracing -----------------------------------------------------------------------------


class AttemptSpan(Protocol):
    """The span of one HTTP attempt, current from its start until :meth:`end`."""

    def end(self, outcome: requests.Response | BaseException) -> None:
        """Record the response (status code) or the error, and end the span."""


class Tracer(Protocol):
    """What the request path asks of a tracer (``chatsdk.integrations.otel`` builds one)."""

    def operation(self, name: str) -> AbstractContextManager[object]:
        """The span of one logical call (``send_message``), current inside the block."""

    def http_scope(self) -> AbstractContextManager[object]:
        """Around ``requests.Session.send``: keeps other HTTP instrumentation out of it."""

    def attempt(self, request: requests.PreparedRequest, attempt: int) -> AttemptSpan:
        """Start (and make current) the HTTP client span of one attempt."""

    def carrier(self) -> dict[str, str] | None:
        """The current trace context, to store with an outbox entry (None: nothing to keep)."""

    def delivery(
        self, entry_id: int, kind: str, carrier: Mapping[str, str] | None
    ) -> AbstractContextManager[object]:
        """The span of one outbox delivery, linked to the span that enqueued the entry."""


#: The installed tracer, or None (no spans; the default).
tracer: Tracer | None = None


def set_tracer(new: Tracer | None) -> None:
    """Install ``new`` as the tracer (None removes it)."""
    global tracer  # noqa: PLW0603 - one process-wide seam, read on every attempt
    tracer = new


def operation(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a ChatClient method: its call is one operation span when tracing is on."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            current = tracer
            if current is None:
                return fn(*args, **kwargs)
            with current.operation(name):
                return fn(*args, **kwargs)

        return traced

    return wrap
