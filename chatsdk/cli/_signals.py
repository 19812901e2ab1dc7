"""Signals that end a long-running command: each sets a stop event, and is restored after.

Used by ``chatsdk tail``, ``chatsdk serve`` and the drain workers (``chatsdk outbox drain
--forever``, Django's ``chatsdk_drain``, Flask's ``chatsdk drain``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

__all__ = ["STOP_SIGNALS", "stop_on_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(
    stop: threading.Event, signals: Iterable[signal.Signals] = STOP_SIGNALS
) -> Iterator[None]:
    """While inside, each of ``signals`` sets ``stop`` (instead of its previous action).

    Only the main thread may install handlers: called from another thread (an embedding
    application's, a test's) it changes nothing and ``stop`` is the only way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda _s, _f: stop.set()) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
