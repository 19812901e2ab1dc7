"""``chatsdk history CHANNEL [--limit N] [--before ID] [--json]``: a channel's messages.

Printed oldest first, like a chat window: ``--limit`` takes the newest N (older than
``--before``), then shows them in the order they were written.
"""

from __future__ import annotations

import argparse
from typing import Any

from chatsdk._validation import check_channel, check_id, check_limit
from chatsdk.cli._config import add_client_options, add_command, load, make_client
from chatsdk.cli._exits import run_reporting
from chatsdk.cli._output import echo, echo_json, message_line

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``history`` subcommand."""
    parser = add_command(
        subparsers,
        "history",
        help="print a channel's latest messages",
        description=(
            "Print a channel's latest messages, oldest first (with --json: one Message "
            "object per line)."
        ),
    )
    parser.add_argument("channel", metavar="CHANNEL", help="the channel id")
    parser.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N messages, 1..200 (50)"
    )
    parser.add_argument("--before", metavar="ID", default=None, help="only messages older than ID")
    parser.add_argument("--json", action="store_true", help="one JSON Message per line")
    add_client_options(parser)
    parser.set_defaults(func=run, client_command=True)


def run(args: argparse.Namespace) -> int:
    """Run ``history``; returns the exit status."""
    return run_reporting("history", _history, args)


def _history(args: argparse.Namespace) -> int:
    check_channel(args.channel)  # checked before configuration and I/O
    check_limit(args.limit)
    if args.before is not None:
        check_id("before", args.before)
    with make_client(load(args)) as client:
        messages = client.list_messages(args.channel, limit=args.limit, before=args.before)
    for message in reversed(messages):
        if args.json:
            echo_json(message.to_json())
        else:
            echo(message_line(message))
    return 0
