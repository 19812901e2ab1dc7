"""Per-host transport state: one circuit breaker and one retry budget per ``scheme://host:port``.

REST and WebSocket traffic to the same host get separate breakers (``rest:`` and ``ws:``
names), so the realtime client can fail over on its own schedule. Both registries are
bounded: breakers of idle, CLOSED hosts and budgets of idle hosts are evicted first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from chatsdk._breaker import BoundedRegistry, BreakerSnapshot, CircuitBreaker, CircuitState
from chatsdk._budget import RetryBudget
from chatsdk._config import BreakerPolicy, RetryPolicy

__all__ = ["HostState", "host_of"]

Listener = Callable[[CircuitBreaker, CircuitState, CircuitState], None]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def host_of(url: str) -> str:
    """``scheme://host:port`` of a URL, lower-cased, with the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


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
        retry: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_hosts: int = 256,
    ) -> None:
        self.policy = breaker
        self._clock = clock
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self._breakers: BoundedRegistry[CircuitBreaker] = BoundedRegistry(
            self._new_breaker,
            max_size=max_hosts,
            evictable=lambda b: b.state is CircuitState.CLOSED,
        )
        capacity, refund = retry.budget_capacity, retry.budget_refund
        self._budgets: BoundedRegistry[RetryBudget] | None = (
            None
            if capacity is None
            else BoundedRegistry(lambda _name: RetryBudget(capacity, refund), max_size=max_hosts)
        )

    def breaker(self, name: str) -> CircuitBreaker | None:
        """The breaker named ``rest:<host>`` or ``ws:<host>``; None when breaking is off."""
        if self.policy is None:
            return None
        return self._breakers.get(name)

    def budget(self, host: str) -> RetryBudget | None:
        """The retry budget of ``host``; None when budgets are off."""
        return None if self._budgets is None else self._budgets.get(host)

    def snapshots(self) -> dict[str, BreakerSnapshot]:
        """Each known breaker's name mapped to its snapshot."""
        return {name: b.snapshot() for name, b in self._breakers.items()}

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(breaker, old, new)`` on every state change of every host's breaker."""
        with self._listeners_lock:
            self._listeners.append(callback)

    def _new_breaker(self, name: str) -> CircuitBreaker:
        assert self.policy is not None
        breaker = CircuitBreaker.from_policy(name, self.policy, clock=self._clock)
        breaker.add_listener(self._announce)
        return breaker

    def _announce(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(breaker, old, new)
