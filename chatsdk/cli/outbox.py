"""``chatsdk outbox``: inspect and operate an outbox file.

::

    chatsdk outbox --path FILE status
    chatsdk outbox --path FILE list [--status S] [--limit N]
    chatsdk outbox --path FILE retry ID
    chatsdk outbox --path FILE purge --status failed
    chatsdk outbox --path FILE drain [--timeout S] [--url URL] [--api-key KEY]

``--path`` defaults to ``$CHATSDK_OUTBOX``; ``drain`` takes the server from ``--url`` /
``--api-key`` or ``$CHATSDK_URL`` / ``$CHATSDK_API_KEY`` and shows a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from chatsdk._errors import ChatSDKError
from chatsdk._outbox.outbox import STATUSES, TERMINAL, Outbox
from chatsdk.cli._output import echo

__all__ = ["PATH_ENV", "add_parser", "run"]

PATH_ENV = "CHATSDK_OUTBOX"
_BAR = 30


def add_parser(subparsers: Any) -> None:
    """Add the ``outbox`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "outbox",
        help="inspect, retry, purge or drain an offline outbox file",
        description="Inspect and operate a chatsdk outbox file (any process may use it).",
    )
    parser.add_argument(
        "--path", default=os.environ.get(PATH_ENV), help=f"the outbox file (default: ${PATH_ENV})"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("status", help="counts per status and the oldest pending entry's age")
    listing = actions.add_parser("list", help="list entries, oldest first")
    listing.add_argument("--status", choices=STATUSES, help="only entries with this status")
    listing.add_argument("--limit", type=int, default=None, help="at most this many")
    retry = actions.add_parser("retry", help="re-queue a failed entry")
    retry.add_argument("id", type=int, help="the entry id (see list)")
    purge = actions.add_parser("purge", help="delete finished entries")
    purge.add_argument(
        "--status", choices=TERMINAL, required=True, action="append", help="repeatable"
    )
    drain = actions.add_parser("drain", help="deliver what is queued, with a progress bar")
    drain.add_argument("--timeout", type=float, default=None, help="give up after S seconds")
    drain.add_argument("--url", default=None, help="the server (default: $CHATSDK_URL)")
    drain.add_argument("--api-key", default=None, help="the API key (default: $CHATSDK_API_KEY)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run one ``outbox`` action; returns the exit status."""
    if not args.path:
        echo(f"chatsdk outbox: no outbox file: pass --path or set ${PATH_ENV}", err=True)
        return 2
    if args.action != "drain" and not os.path.exists(args.path):
        echo(f"chatsdk outbox: {args.path}: no such file", err=True)
        return 2
    try:
        if args.action == "drain":
            return _drain(args)
        with Outbox(args.path) as outbox:
            return _ACTIONS[args.action](outbox, args)
    except (ChatSDKError, ValueError) as exc:
        echo(f"chatsdk outbox: {exc}", err=True)
        return 1


def _status(outbox: Outbox, _args: argparse.Namespace) -> int:
    stats = outbox.stats()
    for status in STATUSES:
        echo(f"{status:8} {getattr(stats, status)}")
    age = stats.oldest_pending_age
    echo(f"oldest pending: {'-' if age is None else f'{age:.1f}s'}")
    return 0


def _list(outbox: Outbox, args: argparse.Namespace) -> int:
    echo(f"{'ID':>6}  {'STATUS':8} {'TRIES':>5}  {'KIND':8} {'CHANNEL':20} KEY / LAST ERROR")
    for entry in outbox.entries(args.status, limit=args.limit):
        flag = " (possibly delivered)" if entry.possibly_delivered else ""
        error = f"  {entry.last_error}{flag}" if entry.last_error else ""
        echo(
            f"{entry.id:>6}  {entry.status:8} {entry.attempts:>5}  {entry.operation.kind:8} "
            f"{entry.operation.channel[:20]:20} {entry.idempotency_key}{error}"
        )
    return 0


def _retry(outbox: Outbox, args: argparse.Namespace) -> int:
    entry = outbox.retry(args.id)
    echo(f"entry {entry.id} queued again (key {entry.idempotency_key})")
    return 0


def _purge(outbox: Outbox, args: argparse.Namespace) -> int:
    echo(f"purged {outbox.purge(args.status)} entries")
    return 0


_ACTIONS = {"status": _status, "list": _list, "retry": _retry, "purge": _purge}


def _drain(args: argparse.Namespace) -> int:
    from chatsdk._client import ChatClient  # noqa: PLC0415 - only drain needs the network

    client = ChatClient(args.url, args.api_key, outbox=args.path, close_timeout=0)
    outbox = client.outbox
    assert outbox is not None
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    total = max(outbox.stats().pending, 1)
    done = False
    try:
        while not done:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = client.flush(0.2 if left is None else min(0.2, left))
            pending = outbox.pending_count()
            total = max(total, pending)
            _progress(total - pending, total)
            if client._drainer is not None and client._drainer.auth_error is not None:
                break
            if left is not None and left <= 0:
                break
    finally:
        sys.stderr.write("\n")
        client.close()
    stats = Outbox(args.path)
    try:
        counts = stats.stats()
    finally:
        stats.close()
    echo(f"sent {counts.sent}, failed {counts.failed}, pending {counts.pending}")
    if not done:
        echo("chatsdk outbox drain: entries left undelivered (see the log)", err=True)
    return 0 if done else 1


def _progress(done: int, total: int) -> None:
    filled = _BAR * done // total
    bar = "#" * filled + "-" * (_BAR - filled)
    sys.stderr.write(f"\rdraining [{bar}] {done}/{total}")
    sys.stderr.flush()
