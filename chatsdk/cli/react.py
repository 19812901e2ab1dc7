"""``chatsdk react MESSAGE_ID REACTION``: add a reaction (adding it again changes nothing)."""

from __future__ import annotations

import argparse
from typing import Any

from chatsdk._validation import reaction_body
from chatsdk.cli._config import add_client_options, add_command, load, make_client
from chatsdk.cli._exits import run_reporting
from chatsdk.cli._output import echo, echo_json

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``react`` subcommand."""
    parser = add_command(
        subparsers,
        "react",
        help="add a reaction to a message",
        description="Add a reaction to a message; adding the same one again is not an error.",
    )
    parser.add_argument("message_id", metavar="MESSAGE_ID", help="the message")
    parser.add_argument("reaction", metavar="REACTION", help="the reaction (1..64 characters)")
    parser.add_argument("--json", action="store_true", help="print the Reaction as JSON")
    add_client_options(parser)
    parser.set_defaults(func=run, client_command=True)


def run(args: argparse.Namespace) -> int:
    """Run ``react``; returns the exit status."""
    return run_reporting("react", _react, args)


def _react(args: argparse.Namespace) -> int:
    reaction_body(args.message_id, args.reaction)  # checked before configuration and I/O
    with make_client(load(args)) as client:
        reaction = client.add_reaction(args.message_id, args.reaction)
    if args.json:
        echo_json(reaction.to_json())
    else:
        echo(f"{reaction.user_id} reacted {reaction.reaction} to {reaction.message_id}")
    return 0
