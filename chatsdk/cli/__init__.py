"""The ``chatsdk`` command line (also ``python -m chatsdk``).

Subcommands:

- ``chatsdk serve``: run the bundled reference server until Ctrl-C;
- ``chatsdk drill``: the resilience drill, every way of sending side by side on a bad network;
- ``chatsdk outbox``: inspect, retry, purge and drain an outbox file;

Each lives in its own module under :mod:`chatsdk.cli` with ``add_parser(subparsers)``, which
adds the subcommand's parser and sets its ``func`` default to a callable taking the parsed
:class:`argparse.Namespace` and returning the exit status.
This is the only part of chatsdk that prints; everything else logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from chatsdk._version import __version__
from chatsdk.cli import drill, outbox, serve

__all__ = ["build_parser", "main"]

_COMMANDS = (serve, drill, outbox)


def build_parser() -> argparse.ArgumentParser:
    """The ``chatsdk`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="chatsdk",
        description=("ChatSDK command line: a reference server, a resilience drill, outbox tools."),
    )
    parser.add_argument("--version", action="version", version=f"chatsdk {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more on stderr (-v: INFO, -vv: DEBUG)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    status: int = args.func(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
