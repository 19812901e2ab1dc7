"""The dispatch thread: runs application callbacks off the socket thread, in order.

The realtime socket thread must never wait on application code (a slow callback would delay
a pong and get the connection closed), so every callback is queued here and run by one
thread, first in first out, which also keeps publications of each channel in order.
An exception raised by a callback is logged and never stops the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class Dispatcher:
    """A single worker thread running queued callbacks in submission order.

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str = "chatsdk-realtime-dispatch") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def reset_after_fork(self) -> None:
        """In a forked child: the thread was the parent's; the next :meth:`start` makes one."""
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None
        self._stopping = False

    def start(self) -> None:
        """Start the thread (idempotent; a stopped dispatcher can be started again)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and not self._stopping:
                return
            self._stopping = False
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name=self._name, daemon=True
            )
            self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; dropped silently once :meth:`stop` was called."""
        with self._lock:
            if self._stopping or self._thread is None:
                return
            self._queue.put((fn, args))

    def stop(self, timeout: float | None = None) -> bool:
        """Run what is queued, then end the thread.

        Args:
            timeout: seconds to wait for the thread; ``None`` waits for ever.

        Returns:
            True when the thread has ended (False: a callback is still running).
        """
        with self._lock:
            thread = self._thread
            if thread is None:
                return True
            if not self._stopping:
                self._stopping = True
                self._queue.put(_STOP)
        if thread is threading.current_thread():
            return False
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @staticmethod
    def _run(q: queue.SimpleQueue[Any]) -> None:
        while True:
            item = q.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("a realtime callback raised; the stream goes on")
