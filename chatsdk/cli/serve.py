"""``chatsdk serve``: run the reference server in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from chatsdk.cli._output import echo
from chatsdk.cli._signals import stop_on_signals

__all__ = ["add_parser", "run"]

DEFAULT_PORT = 8800
DEFAULT_API_KEY = "test-key"
PROFILE_NAMES = ("none", "flaky", "terrible")


def add_parser(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the bundled reference server (REST + realtime) until Ctrl-C or SIGTERM",
        description=(
            "Run the ChatSDK reference server on this machine, with optional fault "
            "injection, until Ctrl-C or SIGTERM. Prints its REST and WebSocket URLs and "
            "its API key."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port, 0 for any free one (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key", default=DEFAULT_API_KEY, help="the API key to accept (default: %(default)s)"
    )
    parser.add_argument(
        "--faults",
        default="none",
        choices=PROFILE_NAMES,
        help="fault profile (default: %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, *, stop: threading.Event | None = None) -> int:
    """Serve until Ctrl-C, SIGTERM (a container's stop) or ``stop`` is set; returns the exit
    status (0 after a stop)."""
    done = stop or threading.Event()
    # SIGTERM only: Ctrl-C stays a KeyboardInterrupt, which run_forever turns into a stop.
    with stop_on_signals(done, (signal.SIGTERM,)):  # before the URLs are out
        return _serve(args, done)


def _serve(args: argparse.Namespace, done: threading.Event) -> int:
    try:
        from chatsdk.testing import ReferenceServer, run_forever  # noqa: PLC0415
    except ImportError as exc:
        echo(f"chatsdk serve: {exc}", err=True)
        return 2
    server = ReferenceServer(
        host=args.host, port=args.port, api_keys=(args.api_key,), faults=args.faults
    )
    try:
        server.start()
    except OSError as exc:
        echo(f"chatsdk serve: cannot listen on {args.host}:{args.port}: {exc}", err=True)
        return 1
    echo(f"chatsdk reference server (faults: {args.faults})")
    echo(f"  REST:      {server.url}")
    echo(f"  WebSocket: {server.ws_url}")
    echo(f"  API key:   {args.api_key}")
    echo("Press Ctrl-C to stop.")
    run_forever(server, stop=done)
    echo("stopped")
    return 0
