"""Run a ReferenceServer in the foreground until Ctrl-C (used by ``chatsdk serve``)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatsdk.testing._server import ReferenceServer

__all__ = ["run_forever"]

log = logging.getLogger(__name__)


def run_forever(server: ReferenceServer, *, stop: threading.Event | None = None) -> None:
    """Block until Ctrl-C (or until ``stop`` is set), then stop ``server``.

    The server is started first when it is not running yet. Prints nothing: the caller
    shows the URLs.

    Args:
        server: the server to run.
        stop: an event that ends the wait (for embedding and tests).
    """
    if not server.running:
        server.start()
    done = stop or threading.Event()
    try:
        # wait() with a timeout keeps the main thread responsive to KeyboardInterrupt.
        while not done.wait(timeout=0.5):
            pass
    except KeyboardInterrupt:
        log.info("interrupted, stopping the reference server")
    finally:
        server.stop()
