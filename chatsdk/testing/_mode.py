"""Test mode (``set_testing``) and the transport setting resolver.

In test mode every wait of the request path (backoff between attempts, ``Retry-After``)
returns at once while the SDK's monotonic clock moves on by the skipped seconds, so the
circuit breaker, the deadline and the budget behave as in production, only instantly. The
outbox has no background threads: :meth:`ChatClient.flush` (and ``close``) deliver in the
calling thread and return when nothing more can be delivered without waiting.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from chatsdk import _testmode
from chatsdk._errors import ConfigurationError
from chatsdk.testing._memory import InMemoryTransport

if TYPE_CHECKING:
    from chatsdk._http.adapter import Transport
    from chatsdk._outbox.drainer import Drainer

__all__ = ["advance", "flush_inline", "is_testing", "set_testing", "transport_from_setting"]

log = logging.getLogger(__name__)

#: Entries claimed at once by an inline flush (the outbox's default worker count).
_CLAIM = 4


class _Restore:
    """Returned by :func:`set_testing`: as a context manager, restores the previous mode."""

    def __init__(self, previous: bool) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        set_testing(self._previous)


def set_testing(on: bool = True) -> _Restore:
    """Turn chatsdk's test mode on or off for the whole process.

    While on: no backoff or ``Retry-After`` wait takes real time (the SDK's clock moves on
    instead, so breakers and deadlines keep their production behaviour), and the outbox
    delivers synchronously: ``chat.flush()`` sends every due entry in the calling thread
    (failed ones are tried again at once while the previous round delivered something) and
    returns True when nothing is pending, False when the rest cannot be delivered now (an
    outage, a 401/403, a ``Retry-After`` the server asked for). No drainer thread starts.

    Use it as a call (``set_testing(True)`` in a conftest) or as a context manager
    (``with set_testing(True): ...``), which restores the previous mode on exit.
    """
    previous = _testmode.active()
    if on:
        _testmode.enable(flush_inline)
    else:
        _testmode.disable()
    return _Restore(previous)


def is_testing() -> bool:
    """Whether test mode is on."""
    return _testmode.active()


def advance(seconds: float) -> None:
    """Move the SDK's clock on by ``seconds`` without waiting (test mode only).

    For what the SDK would otherwise wait out, e.g. a circuit breaker that opened during
    an outage: ``advance(chat.session.breaker_for().retry_after)`` lets its probe through.

    Raises:
        RuntimeError: test mode is off.
        ValueError: ``seconds`` is negative.
    """
    if not _testmode.active():
        raise RuntimeError("advance() needs test mode: call set_testing(True) first")
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds!r}")
    _testmode.sleep(seconds)


def flush_inline(drainer: Drainer, _timeout: float | None = None) -> bool:
    """Deliver a drainer's entries in this thread, without waiting (test mode's flush).

    Rounds go on while the previous one delivered (or failed for good) something. A round
    that only met an open circuit skips the drainer's pause once (the SDK's clock moves on,
    so the breaker lets its probe through), as the background drainer would after waiting.
    """
    outbox = drainer.outbox
    outbox.expire()
    skipped_pause = False
    while drainer.auth_error is None:
        # The host is "back" at every round: transient backoffs are due now; delays the
        # server asked for (Retry-After) are kept.
        outbox.expedite()
        before = outbox.pending_count()
        claimed, _next_due = outbox.claim(_CLAIM)
        if not claimed:
            break
        for entry in claimed:
            follow: Any = entry
            while follow is not None:
                follow = drainer.process(follow, follow="channel")
        if outbox.pending_count() < before:
            continue
        paused = drainer.paused_for
        if paused <= 0 or skipped_pause:
            break  # nothing delivered nor failed for good: waiting would be needed
        skipped_pause = True
        _testmode.sleep(paused + 0.001)
    return not outbox.has_pending()


def transport_from_setting(value: object) -> Transport | None:
    """The transport a settings value names: for ``CHATSDK = {"TRANSPORT": ...}`` and the like.

    Args:
        value: None, ``""`` or ``"http"`` for the network (returns None); ``"memory"`` for a
            new :class:`InMemoryTransport`; or a transport object, returned as is.

    Raises:
        ConfigurationError: any other value.
    """
    if value is None or value in ("", "http"):
        return None
    if value == "memory":
        return InMemoryTransport()
    if not isinstance(value, str) and callable(getattr(value, "send", None)):
        return value  # type: ignore[return-value]
    raise ConfigurationError(
        f"TRANSPORT must be 'http', 'memory' or a transport object, got {value!r}"
    )
