"""One lazily built ChatClient per process, shared by the framework integrations.

A holder builds its client on first use, in the process that uses it: a client built in
a gunicorn ``--preload`` master (from ``wsgi.py``) or before a Celery worker forks belongs
to that process, and a forked child that asks for the client gets one of its own, built
in the child, so no thread, lock or connection of the parent is used there. At the
process's exit the client is closed (a flush bounded by its ``close_timeout``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable

from chatsdk._client import ChatClient

__all__ = ["ClientHolder"]

log = logging.getLogger(__name__)

_HOLDERS: weakref.WeakSet[ClientHolder] = weakref.WeakSet()


class ClientHolder:
    """Builds a client with ``factory`` on first :meth:`get`, once per process.

    Args:
        factory: makes the client (reads the settings at that moment).
    """

    def __init__(self, factory: Callable[[], ChatClient]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._client: ChatClient | None = None
        self._pid = os.getpid()
        _HOLDERS.add(self)

    def get(self) -> ChatClient:
        """This process's client, built now if it has none yet."""
        pid = os.getpid()
        client = self._client
        if client is not None and self._pid == pid:
            return client
        with self._lock:
            if self._pid != pid:
                # Forked: the parent's client (its threads, its pool) is not this process's;
                # it is dropped unclosed (closing would act on the parent's state).
                self._client, self._pid = None, pid
            if self._client is None:
                self._client = self._factory()
                log.debug("built the ChatClient of process %d", pid)
            return self._client

    @property
    def built(self) -> bool:
        """Whether this process has built its client."""
        return self._client is not None and self._pid == os.getpid()

    def close(self) -> None:
        """Close this process's client (a bounded flush), if built; the next get() builds anew."""
        with self._lock:
            client = self._client if self._pid == os.getpid() else None
            self._client = None
        if client is not None:
            client.close()

    def reset(self) -> None:
        """Forget the client without closing it (settings changed, e.g. in tests)."""
        with self._lock:
            self._client = None


def _close_all() -> None:
    for holder in list(_HOLDERS):
        try:
            holder.close()
        except Exception:
            log.warning("closing a chatsdk client at exit failed", exc_info=True)


atexit.register(_close_all)
