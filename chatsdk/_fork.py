"""The one at-fork hook: every stateful chatsdk object stays usable across ``fork()``.

gunicorn ``--preload``, Celery prefork, uWSGI and ``multiprocessing`` with the fork start
method copy a process that may be in the middle of anything: a drainer thread inside an
SQLite call, a request thread holding a lock, a realtime socket thread reading. Only the
thread that called ``fork()`` exists in the child. So, around every fork:

- **before** (parent): each registered object *quiesces*: it takes the locks that guard its
  work (the outbox's SQLite lock first among them) so that no SQLite call is in flight and
  no shared table is half-updated at the instant of the copy;
- **after, in the parent**: the same locks are released, in the reverse order;
- **after, in the child**: each object resets what belonged to the parent's threads
  (locks, in-flight tables, connection pools, thread handles). Nothing is opened here:
  SQLite connections are reopened lazily on first use, and background threads (the outbox
  drainer, the realtime socket and dispatch threads) restart lazily on first use, as
  sentry-sdk's worker does by remembering the pid it started in. Opening SQLite inside the
  hook could block for ever on a mutex held by a thread that no longer exists.

Objects take part by calling :func:`register` with the three callbacks. ``os.register_at_fork``
does not exist on Windows (which has no ``fork()``): there the hook is simply not installed,
and the pid checks the objects make on use are what remains.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ORDER_CLIENT", "ORDER_OUTBOX", "ORDER_SQLITE", "Registry", "install", "register"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Quiesce order: objects with a lower order take their locks first (and release them
#: last). It is the order in which the code nests them (an outbox transaction holds the
#: SQLite lock while it records a claim under the outbox's lock), so taking them all
#: cannot deadlock against a thread that is inside one.
ORDER_CLIENT = 0
ORDER_SQLITE = 10
ORDER_OUTBOX = 20

Hook = Callable[[Any], None]


class _Entry:
    __slots__ = ("after_child", "after_parent", "before", "order", "ref")

    def __init__(
        self,
        ref: weakref.ref[Any],
        order: int,
        before: Hook | None,
        after_parent: Hook | None,
        after_child: Hook | None,
    ) -> None:
        self.ref = ref
        self.order = order
        self.before = before
        self.after_parent = after_parent
        self.after_child = after_child


class Registry:
    """The objects that take part in forks, and the three hooks that run them."""

    def __init__(self) -> None:
        # Reentrant: a weakref callback (forget) may run from garbage collection inside
        # the hook, in the same thread.
        self._lock = threading.RLock()
        self._entries: dict[int, _Entry] = {}
        self._quiesced: list[tuple[_Entry, object]] = []

    def __len__(self) -> int:
        return len(self._live())

    def register(
        self,
        obj: T,
        order: int,
        before: Callable[[T], None] | None = None,
        after_parent: Callable[[T], None] | None = None,
        after_child: Callable[[T], None] | None = None,
    ) -> T:
        """See :func:`register`."""
        key = id(obj)

        def forget(ref: weakref.ref[Any]) -> None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.ref is ref:
                    del self._entries[key]

        entry = _Entry(weakref.ref(obj, forget), order, before, after_parent, after_child)
        with self._lock:
            self._entries[key] = entry
        return obj

    def _live(self) -> list[tuple[_Entry, object]]:
        pairs = [(e, e.ref()) for e in list(self._entries.values())]
        live = [(e, obj) for e, obj in pairs if obj is not None]
        live.sort(key=lambda pair: pair[0].order)
        return live

    def before_fork(self) -> None:
        """In the forking thread: quiesce every object, in order (its locks stay held)."""
        self._lock.acquire()
        self._quiesced.clear()
        for entry, obj in self._live():
            if entry.before is not None:
                try:
                    entry.before(obj)
                except Exception:  # fork goes ahead anyway: never leave the others held
                    log.exception("chatsdk: quiescing %r before fork failed", obj)
                    continue
            self._quiesced.append((entry, obj))

    def after_in_parent(self) -> None:
        """In the parent: release what :meth:`before_fork` took, in reverse order."""
        try:
            for entry, obj in reversed(self._quiesced):
                if entry.after_parent is not None:
                    entry.after_parent(obj)
        finally:
            self._quiesced.clear()
            self._lock.release()

    def after_in_child(self) -> None:
        """In the child: reset every object (nothing is opened or started here)."""
        self._lock = threading.RLock()  # the parent's is held by the forking thread's copy
        self._quiesced.clear()
        for entry, obj in self._live():
            if entry.after_child is not None:
                try:
                    entry.after_child(obj)
                except Exception:  # one object must not leave the others unreset
                    log.exception("chatsdk: resetting %r after fork failed", obj)


_REGISTRY = Registry()


def register(
    obj: T,
    *,
    order: int,
    before: Callable[[T], None] | None = None,
    after_parent: Callable[[T], None] | None = None,
    after_child: Callable[[T], None] | None = None,
) -> T:
    """Have ``obj`` take part in every later fork; returns ``obj``.

    The callbacks receive ``obj``; only a weak reference is kept, so registration never
    keeps an object alive. ``before`` runs in the forking thread, in ``order``;
    ``after_parent`` runs (in reverse order) only for objects whose ``before`` ran;
    ``after_child`` runs for every live object.
    """
    return _REGISTRY.register(obj, order, before, after_parent, after_child)


def install(os_module: Any = os, registry: Registry = _REGISTRY) -> bool:
    """Install the hook with ``os_module.register_at_fork``; False where it does not exist."""
    register_at_fork = getattr(os_module, "register_at_fork", None)
    if register_at_fork is None:  # Windows: no fork(), nothing to protect
        return False
    register_at_fork(
        before=registry.before_fork,
        after_in_parent=registry.after_in_parent,
        after_in_child=registry.after_in_child,
    )
    return True


install()
