"""``manage.py chatsdk_outbox status|list|retry ID|purge``: inspect and operate the outbox.

Exit codes as the ``chatsdk outbox`` command line: ``status`` exits 65 on dead letters and
75 when the oldest pending entry is older than ``--max-age``; ``retry`` exits 65 for an
entry that does not exist or cannot be retried; 78 when no outbox is configured.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chatsdk._outbox.outbox import STATUSES, TERMINAL
from chatsdk.integrations import _commands
from chatsdk.integrations.django._outbox import open_outbox


class Command(BaseCommand):
    help = "Inspect and operate the chatsdk outbox: status, list, retry ID, purge."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        status = actions.add_parser("status", help="counts per status")
        status.add_argument("--max-age", type=float, default=None, metavar="S")
        status.add_argument("--json", action="store_true")
        listing = actions.add_parser("list", help="entries, oldest first")
        listing.add_argument("--status", choices=STATUSES, default=None)
        listing.add_argument("--limit", type=int, default=None)
        retry = actions.add_parser("retry", help="re-queue a failed or expired entry")
        retry.add_argument("id", type=int)
        purge = actions.add_parser("purge", help="delete finished entries")
        purge.add_argument("--status", choices=TERMINAL, action="append", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        out = self.stdout.write

        def err(text: str) -> None:
            self.stderr.write(f"chatsdk: {text}")

        action = options["action"]
        if action == "status":
            code = _commands.status(
                open_outbox, max_age=options["max_age"], as_json=options["json"], out=out, err=err
            )
        elif action == "list":
            code = _commands.entries(
                open_outbox, status_=options["status"], limit=options["limit"], out=out, err=err
            )
        elif action == "retry":
            code = _commands.retry(open_outbox, options["id"], out=out, err=err)
        else:
            statuses = tuple(options["status"] or TERMINAL)
            code = _commands.purge(open_outbox, statuses, out=out, err=err)
        if code:
            sys.exit(code)
