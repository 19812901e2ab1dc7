"""``chatsdk outbox``: inspect and operate an outbox file.

::

    chatsdk outbox [--path FILE] status [--max-age S] [--json]
    chatsdk outbox [--path FILE] list [--status S] [--limit N] [--json]
    chatsdk outbox [--path FILE] retry ID
    chatsdk outbox [--path FILE] purge --status failed
    chatsdk outbox [--path FILE] drain [--timeout S] [--url URL] [--api-key-file FILE]

``--path`` (or ``--outbox``) defaults to ``$CHATSDK_OUTBOX``. ``status`` exits 65 when
entries are dead-lettered (failed or expired) and 75 when the oldest pending entry is older
than ``--max-age``, so it can feed a monitor. ``drain`` takes the server and key as the other
client commands do and exits as ``send`` does: 0 all delivered, 65 entries failed for good,
69 the service is unavailable, 75 entries still queued at ``--timeout``, 77 key refused.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from chatsdk._errors import OutboxError
from chatsdk._outbox.outbox import STATUSES, TERMINAL, Outbox, OutboxStats
from chatsdk._outbox.store import parse_target
from chatsdk.cli._config import (
    OUTBOX_ENV,
    add_client_options,
    add_command,
    load,
    make_client,
    seconds,
)
from chatsdk.cli._exits import (
    CONFIG,
    DATAERR,
    NOPERM,
    TEMPFAIL,
    UNAVAILABLE,
    CommandError,
    run_reporting,
)
from chatsdk.cli._output import echo, echo_json
from chatsdk.cli._progress import progress_bar
from chatsdk.cli._worker import drain_until_stopped

__all__ = ["PATH_ENV", "add_parser", "run"]

PATH_ENV = OUTBOX_ENV
_SLICE = 0.2  # seconds between progress updates while draining


def add_parser(subparsers: Any) -> None:
    """Add the ``outbox`` subcommand."""
    parser = add_command(
        subparsers,
        "outbox",
        help="inspect, retry, purge or drain an offline outbox file",
        description="Inspect and operate a chatsdk outbox file (any process may use it).",
    )
    parser.add_argument(
        "--path",
        "--outbox",
        dest="path",
        default=None,
        metavar="FILE",
        help=f"the outbox file (default: ${PATH_ENV})",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = add_command(
        actions, "status", help="counts per status; non-zero exit on dead letters or old entries"
    )
    status.add_argument(
        "--max-age",
        type=seconds,
        default=None,
        metavar="S",
        help="exit 75 when the oldest pending entry is older than S seconds",
    )
    status.add_argument("--json", action="store_true", help="print the counts as JSON")
    listing = actions.add_parser("list", help="list entries, oldest first")
    listing.add_argument("--status", choices=STATUSES, help="only entries with this status")
    listing.add_argument("--limit", type=int, default=None, help="at most this many")
    listing.add_argument("--json", action="store_true", help="one JSON object per entry")
    retry = actions.add_parser("retry", help="re-queue a failed entry")
    retry.add_argument("id", type=int, help="the entry id (see list)")
    purge = actions.add_parser("purge", help="delete finished entries")
    purge.add_argument(
        "--status", choices=TERMINAL, required=True, action="append", help="repeatable"
    )
    drain = add_command(actions, "drain", help="deliver what is queued, with a progress bar")
    drain.add_argument("--timeout", type=seconds, default=None, help="give up after S seconds")
    drain.add_argument("--json", action="store_true", help="print the outcome as JSON")
    drain.add_argument(
        "--forever",
        action="store_true",
        help="a worker: keep draining until SIGTERM/SIGINT (then finish in-flight, exit 0)",
    )
    drain.add_argument(
        "--grace",
        type=seconds,
        default=30.0,
        metavar="S",
        help="with --forever: how long deliveries in flight may take to finish at SIGTERM",
    )
    drain.add_argument(
        "--lease",
        type=seconds,
        default=None,
        metavar="S",
        help="lease of each claim (default 30): a dead drainer's entries are taken over after S",
    )
    add_client_options(drain)
    parser.set_defaults(func=run, client_command=True)


def run(args: argparse.Namespace) -> int:
    """Run one ``outbox`` action; returns the exit status."""
    return run_reporting(f"outbox {args.action}", _run, args)


def _run(args: argparse.Namespace) -> int:
    args.path = args.path or os.environ.get(PATH_ENV) or None
    if not args.path:
        raise CommandError(CONFIG, f"no outbox file: pass --path or set ${PATH_ENV}")
    if args.action == "drain":
        return _drain(args)
    if parse_target(args.path)[0] == "sqlite" and not os.path.exists(args.path):
        raise CommandError(CONFIG, f"{args.path}: no such file")
    with Outbox(args.path) as outbox:
        return _ACTIONS[args.action](outbox, args)


def _counts(stats: OutboxStats) -> dict[str, Any]:
    return stats.to_json()  # counts, pending, dead_letters, oldest_pending_age


def _status(outbox: Outbox, args: argparse.Namespace) -> int:
    stats = outbox.stats()
    if args.json:
        echo_json(_counts(stats))
    else:
        for status in STATUSES:
            echo(f"{status:8} {getattr(stats, status)}")
        age = stats.oldest_pending_age
        echo(f"oldest pending: {'-' if age is None else f'{age:.1f}s'}")
    problems = []
    dead = stats.dead_letters
    if dead:
        problems.append(
            f"{dead} dead-lettered entries ({stats.failed} failed, {stats.expired} expired): "
            "see 'chatsdk outbox list --status failed', then retry or purge them"
        )
    age = stats.oldest_pending_age
    if args.max_age is not None and age is not None and age > args.max_age:
        problems.append(
            f"the oldest pending entry is {age:.0f}s old, more than --max-age {args.max_age:g}s"
        )
    if problems:
        raise CommandError(DATAERR if dead else TEMPFAIL, "; ".join(problems))
    return 0


def _list(outbox: Outbox, args: argparse.Namespace) -> int:
    entries = outbox.entries(args.status, limit=args.limit)
    if args.json:
        for entry in entries:
            echo_json(
                {
                    "id": entry.id,
                    "status": entry.status,
                    "attempts": entry.attempts,
                    "kind": entry.operation.kind,
                    "channel": entry.operation.channel,
                    "idempotencyKey": entry.idempotency_key,
                    "lastError": entry.last_error,
                    "possiblyDelivered": entry.possibly_delivered,
                    "createdAt": entry.created_at,
                }
            )
        return 0
    echo(f"{'ID':>6}  {'STATUS':8} {'TRIES':>5}  {'KIND':8} {'CHANNEL':20} KEY / LAST ERROR")
    for entry in entries:
        flag = " (possibly delivered)" if entry.possibly_delivered else ""
        error = f"  {entry.last_error}{flag}" if entry.last_error else ""
        echo(
            f"{entry.id:>6}  {entry.status:8} {entry.attempts:>5}  {entry.operation.kind:8} "
            f"{entry.operation.channel[:20]:20} {entry.idempotency_key}{error}"
        )
    return 0


def _retry(outbox: Outbox, args: argparse.Namespace) -> int:
    try:
        entry = outbox.retry(args.id)
    except OutboxError as exc:  # no such entry, or not retryable: the argument is at fault
        raise CommandError(DATAERR, str(exc)) from None
    echo(f"entry {entry.id} queued again (key {entry.idempotency_key})")
    return 0


def _purge(outbox: Outbox, args: argparse.Namespace) -> int:
    echo(f"purged {outbox.purge(args.status)} entries")
    return 0


def _drain_forever(args: argparse.Namespace, config: Any) -> int:
    """Drain until SIGTERM/SIGINT: in-flight deliveries finish, claimed ones are released."""
    client = make_client(config, outbox=True, lease_seconds=args.lease)
    try:
        echo(f"draining {client.outbox.path if client.outbox else args.path} until SIGTERM")
        finished = drain_until_stopped(client, args.grace)
    finally:
        client.close()
        if client.outbox is not None:  # ours (see make_client); idempotent
            client.outbox.close()
    if not finished:
        echo(f"deliveries still in flight after {args.grace:g}s; their leases run out", err=True)
    return 0


_ACTIONS = {"status": _status, "list": _list, "retry": _retry, "purge": _purge}


def _drain(args: argparse.Namespace) -> int:
    args.outbox = args.path
    config = load(args, need_outbox=True)
    if args.forever:
        return _drain_forever(args, config)
    with Outbox(args.path) as snapshot:  # before the client's drainer starts sending
        before = snapshot.stats()
    client = make_client(config, outbox=True, lease_seconds=args.lease)
    outbox = client.outbox
    assert outbox is not None
    try:
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        total: float = before.pending
        bar = progress_bar(total, "draining", unit="msg")
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                done = bool(client.flush(_SLICE if left is None else min(_SLICE, left)))
                pending = outbox.pending_count()
                total = max(total, bar.n + pending)  # other processes may queue meanwhile
                bar.total, bar.n = total, total - pending
                bar.refresh()
                if done or client.outbox_auth_error is not None or left == 0:
                    break
        finally:
            bar.close()
        after = outbox.stats()
        stuck = [e for e in outbox.entries("queued") if e.last_error]
    finally:
        client.close()
        if client.outbox is not None:  # ours (see make_client); idempotent
            client.outbox.close()
    sent = max(0, after.sent - before.sent)
    dead = max(0, after.failed + after.expired - before.failed - before.expired)
    if args.json:
        echo_json({"sent": sent, "failed": dead, "pending": after.pending})
    else:
        echo(f"sent {sent}, failed {dead}, pending {after.pending}")
    refused = client.outbox_auth_error
    if refused is not None:
        raise CommandError(
            NOPERM, f"the API key was refused ({refused}); {after.pending} entries stay queued"
        )
    if dead:
        raise CommandError(
            DATAERR,
            f"{dead} entries failed for good (dead letters): see 'chatsdk outbox list "
            "--status failed'",
        )
    if after.pending and stuck:
        raise CommandError(
            UNAVAILABLE,
            f"{after.pending} entries left undelivered; the service is unavailable: "
            f"{stuck[-1].last_error}",
        )
    if after.pending:
        waited = "" if args.timeout is None else f" after {args.timeout:g}s"
        raise CommandError(TEMPFAIL, f"{after.pending} entries still queued{waited}")
    return 0
