"""A drain worker's life: deliver until SIGTERM/SIGINT, then stop draining.

One implementation for every worker that drains an outbox until it is told to stop:
``chatsdk outbox drain --forever``, Django's ``chatsdk_drain`` and Flask's ``chatsdk drain``.
"""

from __future__ import annotations

import logging
import threading

from chatsdk import _testmode
from chatsdk._client import ChatClient
from chatsdk.cli._signals import stop_on_signals

__all__ = ["TICK", "drain_until_stopped"]

log = logging.getLogger(__name__)

#: Seconds between two looks at the stop flag (a signal sets it at once; this bounds a
#: test mode's inline deliveries).
TICK = 1.0


def drain_until_stopped(
    client: ChatClient, grace: float | None, *, stop: threading.Event | None = None
) -> bool:
    """Let ``client``'s drainer deliver until SIGTERM/SIGINT (or ``stop`` is set), then stop it.

    The signal handlers are installed only when called from the main thread, and the previous
    ones are restored on return. Meanwhile nothing here reads the outbox: the drainer's
    threads deliver, and wait a database outage out on their own (a restart or a failover
    does not end the worker). In test mode, where deliveries run in the caller's thread,
    each tick flushes what is due.

    Returns True when the deliveries in flight finished within ``grace`` seconds (None: no
    limit); the claimed entries not started are given back for any drainer. False: some are
    still on the wire; their leases run out and any drainer takes them over.
    """
    stopping = stop or threading.Event()
    with stop_on_signals(stopping):
        while not stopping.wait(TICK):
            if _testmode.inline_flush() is not None:
                client.flush(0)
    log.info("chatsdk drain: stopping; deliveries in flight may take %ss to finish", grace)
    return client.stop_draining(grace)
