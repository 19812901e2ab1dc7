"""The ``chatsdk`` subcommands: one module each, each with ``add_parser(subparsers)``.

``add_parser`` adds the subcommand's parser and sets its ``func`` default to a callable
taking the parsed :class:`argparse.Namespace` and returning the exit status.
"""

from __future__ import annotations

import sys

__all__ = ["echo"]


def echo(text: str, *, err: bool = False) -> None:
    """Write a line for the user on stdout (or stderr) and flush it at once."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()
