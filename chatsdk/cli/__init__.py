"""The ``chatsdk`` command line (also ``python -m chatsdk``).

Subcommands for scripts and cron jobs (they read ``$CHATSDK_URL``, the key from
``$CHATSDK_API_KEY`` / ``$CHATSDK_API_KEY_FILE`` / ``--api-key-file``, ``$CHATSDK_OUTBOX``):

- ``chatsdk send``: post a message, now or through the outbox (:mod:`chatsdk.cli.send`);
- ``chatsdk react``: add a reaction;
- ``chatsdk history``: a channel's latest messages;
- ``chatsdk tail``: follow channels live, resumable with ``--since-file``;
- ``chatsdk health``: is the server up?
- ``chatsdk outbox``: inspect, retry, purge and drain an outbox file;

and two for trying chatsdk out:

- ``chatsdk serve``: run the bundled reference server until Ctrl-C;
- ``chatsdk drill``: the resilience drill, every way of sending side by side on a bad network.

Each lives in its own module under :mod:`chatsdk.cli` with ``add_parser(subparsers)``, which
adds the subcommand's parser and sets its ``func`` default to a callable taking the parsed
:class:`argparse.Namespace` and returning the exit status. The exit statuses are the same
in every command (:mod:`chatsdk.cli._exits`). This is the only part of chatsdk that prints;
everything else logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from chatsdk._version import __version__
from chatsdk.cli import drill, health, history, outbox, react, send, serve, tail
from chatsdk.cli._config import KEY_ARGUMENT_ERROR, key_on_command_line
from chatsdk.cli._exits import EPILOG, USAGE
from chatsdk.cli._output import RedactingFormatter, echo

__all__ = ["build_parser", "main"]

_COMMANDS = (send, react, history, tail, health, outbox, serve, drill)
#: The commands that talk to a server with a key (``serve --api-key`` sets the server's own).
_CLIENT_COMMANDS = frozenset({"send", "react", "history", "tail", "health", "outbox"})


def build_parser() -> argparse.ArgumentParser:
    """The ``chatsdk`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="chatsdk",
        description=(
            "ChatSDK command line: send, react, history, tail and health for scripts and "
            "cron jobs; outbox tools; a reference server and a resilience drill."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"chatsdk {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more on stderr (-v: INFO, with the retry log; -vv: DEBUG)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


_handler: logging.Handler | None = None


def _configure_logging(verbose: int, *, quiet_library: bool) -> None:
    global _handler  # noqa: PLW0603 - one stderr handler per process, however often main runs
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(_handler)
    root.setLevel(level)
    # A client command says what happened in one line of its own; the library's log
    # (retries, the drainer, reconnects) is for -v.
    quiet = quiet_library and verbose <= 0
    logging.getLogger("chatsdk").setLevel(logging.CRITICAL + 1 if quiet else logging.NOTSET)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in arguments if not a.startswith("-")), None)
    if command in _CLIENT_COMMANDS and key_on_command_line(arguments):
        parser.print_usage(sys.stderr)
        echo(f"chatsdk: error: {KEY_ARGUMENT_ERROR}", err=True)
        return USAGE
    args = parser.parse_args(arguments)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return USAGE
    _configure_logging(args.verbose, quiet_library=getattr(args, "client_command", False))
    status: int = args.func(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
