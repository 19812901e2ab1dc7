"""``chatsdk drill``: the resilience report card, every way of sending side by side.

See :mod:`chatsdk.cli._drill._runner` for the workload and scenarios,
:mod:`chatsdk.cli._drill._grades` for the grade rules.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

from chatsdk.cli._config import positive_int, positive_number
from chatsdk.cli._output import echo
from chatsdk.cli._progress import available as progress_available

__all__ = ["add_parser", "run"]

PROFILE_NAMES = ("none", "flaky", "terrible")
#: Default pace with --outage: a caller that does not speed up when calls fail fast.
OUTAGE_RATE = 20.0


def add_parser(subparsers: Any) -> None:
    """Add the ``drill`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "drill",
        help="send the same messages through plain requests, urllib3 Retry and chatsdk "
        "on a bad network, and grade each",
        description=(
            "Start a reference server per arm with a fault profile and send the same "
            "workload through each arm side by side: plain requests, requests with urllib3 "
            "Retry, chatsdk send_message, the chatsdk outbox. Count at the server what was "
            "stored once, twice or never, and at the caller what failed, how long it took "
            "and how many requests it cost."
        ),
    )
    parser.add_argument(
        "--messages",
        type=positive_int,
        default=1000,
        help="messages per arm (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=8,
        help="sending threads (and channels) per arm (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        default="terrible",
        choices=PROFILE_NAMES,
        help="the servers' fault profile (default: %(default)s)",
    )
    parser.add_argument(
        "--outage",
        type=positive_number,
        default=None,
        metavar="SECONDS",
        help="each arm's server refuses connections for SECONDS once it holds half the "
        "messages (adds a chatsdk arm with the circuit breaker off)",
    )
    parser.add_argument(
        "--scenario",
        default="send",
        choices=("send", "multi-tap"),
        help="send: every message once; multi-tap: every message submitted 2-3 times "
        "(double tap, then an outer retry) (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=positive_number,
        default=None,
        metavar="OPS",
        help="operations started per second per arm (default: as fast as the threads go; "
        f"{OUTAGE_RATE:g} with --outage)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the faults and workload")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run)


class _DropAbandonedTasks(logging.Filter):
    """Hide asyncio's notes about the reference server's stalled handlers left at stop.

    The ``stall`` fault holds a request for 35 s; the drill stops its servers long before,
    and asyncio reports each such handler as destroyed while pending.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Task was destroyed but it is pending")


@contextlib.contextmanager
def _quiet(verbose: int) -> Iterator[None]:
    """Without -v: hide the SDK's and urllib3's warnings about the failures the drill causes.

    Failures are the drill's subject; those warnings would bury the table. Restored after.
    """
    if verbose > 0:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("chatsdk", "urllib3")]
    levels = [logger.level for logger in loggers]
    noise = _DropAbandonedTasks()
    asyncio_log = logging.getLogger("asyncio")
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    asyncio_log.addFilter(noise)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        asyncio_log.removeFilter(noise)


def run(args: argparse.Namespace) -> int:
    """Run the drill and print the table (or the JSON object); returns the exit status."""
    try:
        from chatsdk.testing import ReferenceServer  # noqa: F401, PLC0415 - the server extra
    except ImportError as exc:
        echo(f"chatsdk drill: {exc}", err=True)
        return 2
    from chatsdk.cli._drill import DrillConfig, ProgressBar, render_table, run_drill  # noqa: PLC0415

    config = DrillConfig(
        messages=args.messages,
        threads=args.threads,
        profile=args.profile,
        outage=args.outage,
        seed=args.seed,
        scenario=args.scenario,
        rate=args.rate if args.rate is not None else OUTAGE_RATE if args.outage else None,
    )
    progress = None
    if not args.no_progress and sys.stderr.isatty() and progress_available():
        progress = ProgressBar(sys.stderr)
    elif not args.json and not args.no_progress:
        echo(
            f"chatsdk drill: running {args.messages} messages per arm, profile {args.profile!r}...",
            err=True,
        )
    with _quiet(getattr(args, "verbose", 0)):
        report = run_drill(config, progress=progress)
        gc.collect()  # the servers' abandoned stall handlers are reported when collected
    if args.json:
        echo(json.dumps(report.to_json()))
    else:
        echo(render_table(report))
    for label, error in report.crashed.items():
        echo(f"chatsdk drill: arm {label!r} crashed: {error}", err=True)
    return 1 if report.crashed else 0
