"""Helpers shared by the test modules: waiting, a fake clock, publication collection."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from chatsdk._realtime.client import RealtimeClient
from chatsdk._realtime.subscription import Publication

WAIT = 5.0  # seconds a helper waits by default before declaring a hang
TICK = 0.005  # seconds between two looks at a condition that has no event of its own


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Wait until ``predicate()`` is true; False if ``timeout`` seconds pass first.

    For states without an event of their own: looks again after a short Event wait (never
    ``time.sleep``).
    """
    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(TICK)
    return True


class FakeClock:
    """A clock that moves only when told to: call it for the time, ``advance`` it or set ``now``.

    ``start`` is the first reading; pass ``time.time()`` where the code under test expects a
    wall clock.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Collector:
    """A subscription handler that keeps the publications it is given; waits for a count."""

    def __init__(self, timeout: float = WAIT) -> None:
        self.items: list[Publication] = []
        self.cond = threading.Condition()
        self.timeout = timeout

    def __call__(self, pub: Publication) -> None:
        with self.cond:
            self.items.append(pub)
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float | None = None) -> bool:
        """Wait until at least ``n`` publications have arrived (default: the collector's timeout)."""
        with self.cond:
            return self.cond.wait_for(
                lambda: len(self.items) >= n, self.timeout if timeout is None else timeout
            )

    @property
    def offsets(self) -> list[int]:
        return [p.offset for p in self.items]

    @property
    def seqs(self) -> list[int]:
        """The ``seq`` field of each publication's data, in arrival order."""
        return [p.data["seq"] for p in self.items]


def realtime_threads() -> list[threading.Thread]:
    """The realtime client threads still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("chatsdk-realtime")]


@contextmanager
def realtime_clients(defaults: Mapping[str, Any]) -> Iterator[Callable[..., RealtimeClient]]:
    """Yield ``make(url, **options)`` building RealtimeClients with ``defaults`` for options.

    On exit every client made is closed and no realtime thread may be left.
    """
    clients: list[RealtimeClient] = []

    def make(url: str, **options: Any) -> RealtimeClient:
        for key, value in defaults.items():
            options.setdefault(key, value)
        client = RealtimeClient(url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    assert realtime_threads() == []


def require(available: bool, reason: str) -> None:
    """Skip the test when a component it needs is missing, except under ``CI=true``.

    A developer's machine may lack redis-server or gunicorn: the test is skipped, with the
    reason. CI must run every test, so there a missing component fails it.
    """
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def message_response(op: Any) -> dict[str, Any]:
    """The ``Message`` a server answers for the create ``op`` (an outbox ``Operation``)."""
    return {
        "id": f"m-{op.idempotency_key}",
        "channelId": op.channel,
        "text": op.body["text"],
        "attachments": [],
        "parentId": None,
        "userId": "u1",
        "createdAt": "2024-01-01T00:00:00Z",
        "updatedAt": None,
    }
