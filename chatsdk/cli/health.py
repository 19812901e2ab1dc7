"""``chatsdk health``: is the server up? Exit 0 when it answers ``ok``, 69 when not."""

from __future__ import annotations

import argparse
from typing import Any

from chatsdk.cli._config import add_client_options, add_command, load, make_client
from chatsdk.cli._exits import UNAVAILABLE, CommandError, run_reporting
from chatsdk.cli._output import echo, echo_json

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``health`` subcommand."""
    parser = add_command(
        subparsers,
        "health",
        help="check that the server answers its health check",
        description="Check GET /api/health; exit 0 when the server is up, 69 when it is not.",
    )
    parser.add_argument("--json", action="store_true", help='print {"status": ..., "url": ...}')
    add_client_options(parser)
    parser.set_defaults(func=run, client_command=True)


def run(args: argparse.Namespace) -> int:
    """Run ``health``; returns the exit status."""
    return run_reporting("health", _health, args)


def _health(args: argparse.Namespace) -> int:
    config = load(args)
    with make_client(config) as client:
        ok = client.health()
    if args.json:
        echo_json({"status": "ok" if ok else "unavailable", "url": config.url})
    if not ok:
        raise CommandError(UNAVAILABLE, f"{config.url} is unavailable (-v says why)")
    if not args.json:
        echo(f"ok {config.url}")
    return 0
