"""The switch behind :func:`chatsdk.testing.set_testing`: waits that take no real time.

The request path and the outbox ask this module, never :mod:`chatsdk.testing` (the core does
not import the test tools). While test mode is on:

- :func:`sleep` returns at once and moves :func:`monotonic` on by the seconds it skipped, so
  a backoff, a ``Retry-After`` wait or a breaker's open period passes exactly as it would
  have, only without waiting (deadlines and breaker timings stay as in production);
- :func:`inline_flush` gives the outbox drainer the function that delivers its entries in the
  caller's thread, instead of background threads that poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["active", "disable", "enable", "inline_flush", "monotonic", "sleep"]

#: Delivers a drainer's due entries in the calling thread: ``flush(drainer, timeout)``.
InlineFlush = Callable[[Any, "float | None"], bool]

_lock = threading.Lock()
_active = False
_flush: InlineFlush | None = None
#: Seconds of waiting skipped in test mode; never decreases, so monotonic() stays monotonic.
_skipped = 0.0


def active() -> bool:
    """Whether test mode is on."""
    return _active


def enable(flush: InlineFlush | None = None) -> None:
    """Turn test mode on; ``flush`` (if given) delivers outbox entries inline."""
    global _active, _flush  # noqa: PLW0603 - one process-wide switch, as in stamina
    with _lock:
        _active = True
        _flush = flush


def disable() -> None:
    """Turn test mode off: real waits and background outbox delivery again."""
    global _active, _flush  # noqa: PLW0603
    with _lock:
        _active = False
        _flush = None


def sleep(seconds: float) -> None:
    """``time.sleep``, or in test mode: no wait, and :func:`monotonic` moves on instead."""
    global _skipped  # noqa: PLW0603
    if not _active:
        time.sleep(seconds)
        return
    with _lock:
        _skipped += max(0.0, seconds)


def monotonic() -> float:
    """``time.monotonic()`` plus the waits test mode skipped."""
    return time.monotonic() + _skipped


def inline_flush() -> InlineFlush | None:
    """The inline outbox flush while test mode is on, else None."""
    return _flush if _active else None
