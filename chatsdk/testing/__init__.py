"""Test tools for ChatSDK users: a reference server with fault injection, a chaos proxy.

``ReferenceServer`` implements the REST contract (API.md) and the realtime protocol
(REALTIME.md) on loopback, in a background thread, with injectable faults
(:class:`FaultPlan`, named profiles ``none``, ``flaky`` and ``terrible``); ``ChaosProxy`` adds
network faults between a client and any server. The ``chatsdk_server`` pytest fixture comes
with the package (``pytest11`` entry point). Needs the ``server`` extra:
``pip install chatsdk[server]``.
"""

from __future__ import annotations

try:
    import aiohttp  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "chatsdk.testing needs aiohttp, which comes with the 'server' extra: "
        "pip install 'chatsdk[server]'"
    ) from exc

from chatsdk.testing._faults import PROFILES, FaultPlan, RealtimeFaults
from chatsdk.testing._proxy import ChaosProxy
from chatsdk.testing._serve import run_forever
from chatsdk.testing._server import ReferenceServer
from chatsdk.testing._wire import MAX_BODY_BYTES

__all__ = [
    "ChaosProxy",
    "FaultPlan",
    "MAX_BODY_BYTES",
    "PROFILES",
    "RealtimeFaults",
    "ReferenceServer",
    "run_forever",
]
