"""``manage.py place_orders``: orders saved with their chat message in one transaction.

``--commit N`` orders are committed, ``--rollback M`` are rolled back after queueing their
message; ``--die-after-commit`` SIGKILLs this process right after the last commit (before
anything else runs: the kill is the first on_commit callback). Prints the queued entries
as JSON: ``{"committed": [...], "rolled_back": [...]}``.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from chatsdk.integrations.django import get_client
from tests.integrations.django_project.shop.models import Order


class _Rollback(Exception):
    pass


class Command(BaseCommand):
    help = "Save orders, each with its chat message in the same transaction."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--commit", type=int, default=0)
        parser.add_argument("--rollback", type=int, default=0)
        parser.add_argument("--die-after-commit", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        chat = get_client()
        done: dict[str, list[int]] = {"committed": [], "rolled_back": []}
        for n in range(options["rollback"]):
            try:
                with transaction.atomic():
                    order = Order.objects.create(item=f"rolled-back-{n}")
                    entry = chat.queue_message("orders", f"order {order.item}")
                    done["rolled_back"].append(entry.id)
                    raise _Rollback
            except _Rollback:
                pass
        for n in range(options["commit"]):
            last = n == options["commit"] - 1
            with transaction.atomic():
                order = Order.objects.create(item=f"committed-{n}")
                if last and options["die_after_commit"]:
                    self.stdout.write(json.dumps(done), ending="\n")
                    self.stdout.flush()
                    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
                entry = chat.queue_message("orders", f"order {order.item}")
                done["committed"].append(entry.id)
        self.stdout.write(json.dumps(done))
