"""pytest plugin (``pytest11`` entry point ``chatsdk``): in-memory and reference server fixtures.

- ``chatsdk_transport``: a fresh :class:`~chatsdk.testing.InMemoryTransport` per test.
- ``chatsdk_memory``: a :class:`~chatsdk.ChatClient` on ``chatsdk_transport`` (API key
  ``"test-key"``), with test mode on for the test (:func:`~chatsdk.testing.set_testing`),
  closed afterwards.
- ``chatsdk_sent``: ``chatsdk_transport.sent``, the messages and reactions created so far,
  in order, each with its ``Idempotency-Key`` (a live view).
- ``chatsdk_testing``: test mode on for the test, restored afterwards.
- ``chatsdk_server``: a started :class:`~chatsdk.testing.ReferenceServer` accepting the API
  key ``"test-key"``, one per test, stopped afterwards.
- ``chatsdk_server_factory``: call it with ReferenceServer keyword arguments to get more
  started servers (e.g. with faults); all are stopped after the test.

``chatsdk.testing`` is imported only when a fixture is used, so the plugin costs nothing in
test runs that do not use it; only the server fixtures need aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from chatsdk import ChatClient
    from chatsdk.testing import InMemoryTransport, ReferenceServer, SentLog

__all__ = [
    "chatsdk_memory",
    "chatsdk_sent",
    "chatsdk_server",
    "chatsdk_server_factory",
    "chatsdk_testing",
    "chatsdk_transport",
]


@pytest.fixture
def chatsdk_testing() -> Iterator[None]:
    """Test mode on for the test: no real waits, the outbox delivers on ``flush()``."""
    from chatsdk.testing import set_testing  # noqa: PLC0415 - only when used

    with set_testing(True):
        yield


@pytest.fixture
def chatsdk_transport() -> InMemoryTransport:
    """A fresh InMemoryTransport accepting any API key."""
    from chatsdk.testing import InMemoryTransport  # noqa: PLC0415 - only when used

    return InMemoryTransport()


@pytest.fixture
def chatsdk_memory(
    chatsdk_transport: InMemoryTransport, chatsdk_testing: None
) -> Iterator[ChatClient]:
    """A ChatClient on the in-memory transport, in test mode; closed after the test."""
    from chatsdk import ChatClient  # noqa: PLC0415 - only when used

    client = ChatClient(chatsdk_transport.url, "test-key", transport=chatsdk_transport)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def chatsdk_sent(chatsdk_transport: InMemoryTransport) -> SentLog:
    """What the code under test created on ``chatsdk_transport``, in order, with keys."""
    return chatsdk_transport.sent


@pytest.fixture
def chatsdk_server_factory() -> Iterator[Callable[..., ReferenceServer]]:
    """A function making started ReferenceServers (stopped at teardown)."""
    from chatsdk.testing import ReferenceServer  # noqa: PLC0415 - aiohttp only when used

    servers: list[ReferenceServer] = []

    def make(**kwargs: Any) -> ReferenceServer:
        kwargs.setdefault("api_keys", ("test-key",))
        server = ReferenceServer(**kwargs)
        server.start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def chatsdk_server(
    chatsdk_server_factory: Callable[..., ReferenceServer],
) -> ReferenceServer:
    """A started ReferenceServer with the API key ``"test-key"`` and no faults."""
    return chatsdk_server_factory()
