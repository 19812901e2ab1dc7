"""Process exit: what a script, a web worker or a container stop leaves behind is reported.

Python's daemon threads die at interpreter exit, so without help a one-shot script that
queued messages and returned would deliver none of them. Here:

- an ``atexit`` hook closes every :class:`~chatsdk.ChatClient` still open in this process:
  each flushes the entries this process queued for at most its ``close_timeout`` (2 s by
  default, as sentry-sdk's ``shutdown_timeout``), and a WARNING names the count and the
  file of what is left (the next client on that file delivers it);
- :func:`install_signal_handlers` (opt-in: signal handlers belong to the application) turns
  SIGTERM (gunicorn, Kubernetes, systemd) into the same bounded flush, then hands the
  signal to the handler that was there before (or the default action: the process ends).

``atexit`` runs neither on an unhandled SIGTERM nor after ``os._exit`` (Celery's and RQ's
workers end their children that way): entries are never lost then either, they wait on
disk, and the next process that opens the file adopts and delivers them.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from collections.abc import Iterable
from types import FrameType
from typing import Any, Protocol

__all__ = ["close_all", "install_signal_handlers", "track", "untrack"]

log = logging.getLogger(__name__)


class _Closable(Protocol):
    def close(self) -> object: ...


_clients: weakref.WeakSet[_Closable] = weakref.WeakSet()
_lock = threading.Lock()


def track(client: _Closable) -> None:
    """Close ``client`` at interpreter exit (or on SIGTERM, once handlers are installed)."""
    with _lock:
        _clients.add(client)


def untrack(client: _Closable) -> None:
    """``client`` was closed: nothing to do for it at exit."""
    with _lock:
        _clients.discard(client)


def close_all() -> None:
    """Close every tracked client; each flushes for at most its ``close_timeout``."""
    with _lock:
        clients = list(_clients)
    for client in clients:
        try:
            client.close()
        except Exception:  # exiting: report, and close the others
            log.exception("chatsdk: closing %r at exit failed", client)


atexit.register(close_all)


def install_signal_handlers(signals: Iterable[int] = (signal.SIGTERM,)) -> None:
    """Flush the outbox (bounded by ``close_timeout``) on SIGTERM before the process ends.

    For each signal, the new handler closes every open :class:`~chatsdk.ChatClient` (each
    flushes this process's entries for at most its ``close_timeout``, then warns of what is
    left), then calls the handler that was installed before; when that was the default
    action, the default action runs (the process ends with that signal); an ignored signal
    stays ignored after the flush. Call it from the main thread, after your framework has
    installed its own handlers (gunicorn's workers install theirs after the fork: there the
    ``atexit`` flush already runs on a graceful stop).

    Raises:
        ValueError: not called from the main thread (Python's rule for signal handlers).
    """
    for signum in signals:
        previous = signal.getsignal(signum)
        signal.signal(signum, _handler(signum, previous))


def _handler(signum: int, previous: Any) -> Any:
    def handle(received: int, frame: FrameType | None) -> None:
        log.info("chatsdk: signal %d: flushing the outbox before exit", received)
        close_all()
        if callable(previous):
            previous(received, frame)
        elif previous in (signal.SIG_DFL, None):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handle
