"""``manage.py chatsdk_drain [--once] [--timeout S]``: deliver the outbox.

Without ``--once``: a worker that delivers until SIGTERM/SIGINT, then closes the client (a
flush bounded by ``CLOSE_TIMEOUT``) and exits. With ``--once``: delivers what is due now,
waits for its deliveries in flight, and exits 0 when nothing is pending, 75 when entries
wait in backoff, 65 when entries failed for good, 77 when the key was refused.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chatsdk.integrations import _commands
from chatsdk.integrations.django import get_client
from chatsdk.integrations.django._outbox import open_outbox


class Command(BaseCommand):
    help = "Deliver the chatsdk outbox: a worker until SIGTERM, or --once."
    requires_system_checks: Any = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="deliver what is due, then exit")
        parser.add_argument(
            "--timeout", type=float, default=None, help="with --once: give up after S seconds"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        code = _commands.drain(
            get_client,
            open_outbox,
            once=options["once"],
            timeout=options["timeout"],
            out=self.stdout.write,
            err=lambda text: self.stderr.write(f"chatsdk: {text}"),
        )
        if code:
            sys.exit(code)
