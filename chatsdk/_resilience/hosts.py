"""Per-host transport state: one circuit breaker and one retry budget per ``scheme://host:port``,
kept in a bounded registry.

REST and WebSocket traffic to the same host get separate breakers (``rest:`` and ``ws:``
names), so the realtime client can fail over on its own schedule. The registry is bounded:
idle hosts whose circuits are CLOSED are evicted first.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import attrs

from chatsdk._resilience.breaker import (
    BreakerPolicy,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitState,
)
from chatsdk._resilience.budget import RetryBudget

__all__ = ["BoundedRegistry", "Host", "HostState", "host_of"]

T = TypeVar("T")

Listener = Callable[[CircuitBreaker, CircuitState, CircuitState], None]


class BudgetSizing(Protocol):
    """What sizes a retry budget (``RetryPolicy`` has both fields)."""

    @property
    def budget_capacity(self) -> float | None: ...

    @property
    def budget_refund(self) -> float: ...


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def host_of(url: str) -> str:
    """``scheme://host:port`` of a URL, lower-cased, with the default port filled in."""
    # Every request goes through here: parse only the origin part, and remember it.
    end = url.find("/", url.find("://") + 3)
    return _origin(url if end < 0 else url[:end])


@functools.lru_cache(maxsize=512)
def _origin(prefix: str) -> str:
    parts = urlsplit(prefix)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


@attrs.frozen
class Host:
    """What one kind of traffic (``rest`` or ``ws``) to one host shares across threads."""

    breaker: CircuitBreaker | None
    budget: RetryBudget | None


class HostState:
    """Breakers and retry budgets per host, shared by every thread of one session.

    Args:
        breaker: the breaker policy, or None for no circuit breaking.
        retry: the retry policy whose ``budget_capacity``/``budget_refund`` size the budgets.
        clock: the breakers' monotonic clock.
        max_hosts: hosts remembered before idle ones are evicted.
    """

    def __init__(
        self,
        breaker: BreakerPolicy | None,
        retry: BudgetSizing,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_hosts: int = 256,
    ) -> None:
        self.policy = breaker
        self._retry = retry
        self._clock = clock
        self._max_hosts = max_hosts
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self._hosts = self._new_registry()

    def _new_registry(self) -> BoundedRegistry[Host]:
        return BoundedRegistry(
            self._new_host,
            max_size=self._max_hosts,
            evictable=lambda h: h.breaker is None or h.breaker.state is CircuitState.CLOSED,
        )

    def reset_after_fork(self) -> None:
        """In a forked child: fresh breakers, budgets and locks; every listener is kept.

        The parent's breakers may hold probe permits of requests in flight in threads that
        do not exist here, and their locks may be held: each host starts again CLOSED, with
        the listeners registered here and on each of its breakers.
        """
        self._listeners_lock = threading.Lock()
        old = self._hosts.items()
        self._hosts = self._new_registry()
        for name, host in old:
            if host.breaker is not None:
                kept = [cb for cb in host.breaker.listeners if cb != self._announce]
                new = self._hosts.get(name).breaker
                for callback in kept:
                    new.add_listener(callback)  # type: ignore[union-attr]

    def get(self, name: str) -> Host:
        """The state named ``rest:<host>`` or ``ws:<host>`` (see :func:`host_of`)."""
        return self._hosts.get(name)

    def breaker(self, name: str) -> CircuitBreaker | None:
        """The breaker named ``rest:<host>`` or ``ws:<host>``; None when breaking is off."""
        return self._hosts.get(name).breaker

    def snapshots(self) -> dict[str, BreakerSnapshot]:
        """Each known breaker's name mapped to its snapshot."""
        return {
            name: host.breaker.snapshot()
            for name, host in self._hosts.items()
            if host.breaker is not None
        }

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(breaker, old, new)`` on every state change of every host's breaker."""
        with self._listeners_lock:
            self._listeners.append(callback)

    def _new_host(self, name: str) -> Host:
        breaker = None
        if self.policy is not None:
            breaker = CircuitBreaker.from_policy(name, self.policy, clock=self._clock)
            breaker.add_listener(self._announce)
        capacity = self._retry.budget_capacity
        budget = None if capacity is None else RetryBudget(capacity, self._retry.budget_refund)
        return Host(breaker, budget)

    def _announce(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(breaker, old, new)


class BoundedRegistry(Generic[T]):
    """A thread-safe name -> object map that keeps at most ``max_size`` evictable entries.

    Objects are created on first use by ``factory(name)``. Past ``max_size``, the least
    recently used entries for which ``evictable(entry)`` is true are dropped (e.g. breakers of
    idle hosts that are CLOSED); entries that are not evictable are kept even past the limit.

    Args:
        factory: builds the object for a new name (called with the registry's lock held, so
            keep it cheap and never touch the registry from it).
        max_size: entries kept before evicting.
        evictable: whether an entry may be dropped.

    Raises:
        ValueError: ``max_size`` is not an int >= 1.
    """

    def __init__(
        self,
        factory: Callable[[str], T],
        *,
        max_size: int = 256,
        evictable: Callable[[T], bool] = lambda _value: True,
    ) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be an int >= 1, got {max_size!r}")
        self._factory = factory
        self._max_size = max_size
        self._evictable = evictable
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, T] = collections.OrderedDict()

    def get(self, name: str) -> T:
        """Return the object for ``name``, creating it on first use; marks it recently used."""
        with self._lock:
            try:
                value = self._entries[name]
            except KeyError:
                value = self._factory(name)
                self._entries[name] = value
                self._evict(keep=name)
            else:
                self._entries.move_to_end(name)
            return value

    def items(self) -> list[tuple[str, T]]:
        """Return ``(name, object)`` pairs, least recently used first."""
        with self._lock:
            return list(self._entries.items())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _evict(self, *, keep: str) -> None:
        excess = len(self._entries) - self._max_size
        if excess <= 0:
            return
        victims: list[str] = []
        for key, value in self._entries.items():
            if key != keep and self._evictable(value):
                victims.append(key)
                if len(victims) == excess:
                    break
        for key in victims:
            del self._entries[key]
