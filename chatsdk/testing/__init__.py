"""Test tools for ChatSDK users: an in-memory transport, a test mode, a reference server.

- :class:`InMemoryTransport`: every endpoint of API.md answered in-process, beneath the
  retry loop (``ChatClient(url, key, transport=InMemoryTransport())``), with scripted faults
  (``fail_next``, ``drop_after_next``, ``outage``) and a log of what was created
  (``.sent``). Needs nothing beyond the base install.
- :func:`set_testing`: no real waits in backoffs and ``Retry-After``; the outbox delivers in
  the caller's thread on ``flush()``.
- :class:`ReferenceServer` implements the REST contract (API.md) and the realtime protocol
  (REALTIME.md) on loopback, in a background thread, with injectable faults
  (:class:`FaultPlan`, named profiles ``none``, ``flaky`` and ``terrible``); ``ChaosProxy``
  adds network faults between a client and any server. These need the ``server`` extra
  (``pip install chatsdk[server]``, for aiohttp), imported only when first used.

The pytest fixtures (``chatsdk_memory``, ``chatsdk_sent``, ``chatsdk_transport``,
``chatsdk_server``) come with the package (``pytest11`` entry point).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatsdk.testing._faults import PROFILES, FaultPlan, RealtimeFaults
from chatsdk.testing._memory import InMemoryTransport, Outage
from chatsdk.testing._mode import advance, is_testing, set_testing, transport_from_setting
from chatsdk.testing._proxy import ChaosProxy
from chatsdk.testing._sent import Attempt, Sent, SentLog
from chatsdk.testing._wire import MAX_BODY_BYTES

if TYPE_CHECKING:
    from chatsdk.testing._serve import run_forever
    from chatsdk.testing._server import ReferenceServer

__all__ = [
    "Attempt",
    "ChaosProxy",
    "FaultPlan",
    "InMemoryTransport",
    "MAX_BODY_BYTES",
    "Outage",
    "PROFILES",
    "RealtimeFaults",
    "ReferenceServer",
    "Sent",
    "SentLog",
    "advance",
    "is_testing",
    "run_forever",
    "set_testing",
    "transport_from_setting",
]


def __getattr__(name: str) -> Any:
    """The aiohttp-based names, imported on first use (the ``server`` extra)."""
    if name not in ("ReferenceServer", "run_forever"):
        raise AttributeError(f"module 'chatsdk.testing' has no attribute {name!r}")
    try:
        import aiohttp  # noqa: F401, PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"chatsdk.testing.{name} needs aiohttp, which comes with the 'server' extra: "
            "pip install 'chatsdk[server]'"
        ) from exc
    from chatsdk.testing import _serve, _server  # noqa: PLC0415

    value = _server.ReferenceServer if name == "ReferenceServer" else _serve.run_forever
    globals()[name] = value
    return value
