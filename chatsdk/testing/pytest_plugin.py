"""pytest plugin (``pytest11`` entry point ``chatsdk``): reference server fixtures.

- ``chatsdk_server``: a started :class:`~chatsdk.testing.ReferenceServer` accepting the API
  key ``"test-key"``, one per test, stopped afterwards.
- ``chatsdk_server_factory``: call it with ReferenceServer keyword arguments to get more
  started servers (e.g. with faults); all are stopped after the test.

``chatsdk.testing`` is imported only when a fixture is used, so the plugin costs nothing
(and needs no aiohttp) in test runs that do not use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from chatsdk.testing import ReferenceServer

__all__ = ["chatsdk_server", "chatsdk_server_factory"]


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
