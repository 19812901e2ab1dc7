"""The admin of the Django database outbox: entries by status, and a retry for dead letters.

Entries are read-only here (the drainer owns their state); the one operation is the
"retry" action, :meth:`chatsdk.Outbox.retry` on each selected entry: a ``failed`` entry
(or an ``expired`` one never attempted) is queued again, and the next drainer delivers it.
Retrying needs the ``chatsdk.change_entry`` permission.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from chatsdk._errors import OutboxError
from chatsdk._outbox.outbox import Outbox
from chatsdk.integrations.django.models import Entry

__all__ = ["EntryAdmin"]


def _when(seconds: float | None) -> datetime.datetime | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


@admin.register(Entry)
class EntryAdmin(admin.ModelAdmin):
    """Outbox entries, newest first, filtered by status; "retry" re-queues dead letters."""

    list_display = ("id", "kind", "channel", "status", "attempts", "created", "last_error")
    list_filter = ("status", "kind", "possibly_delivered")
    search_fields = ("channel", "idempotency_key")
    ordering = ("-id",)
    actions = ("retry",)
    readonly_fields = ("created", "next_attempt", "lease_expires", "finished")
    exclude = ("created_at", "next_attempt_at", "lease_expires_at", "finished_at")

    @admin.display(description="created", ordering="created_at")
    def created(self, entry: Entry) -> datetime.datetime | None:
        return _when(entry.created_at)

    @admin.display(description="next attempt")
    def next_attempt(self, entry: Entry) -> datetime.datetime | None:
        return _when(entry.next_attempt_at)

    @admin.display(description="lease expires")
    def lease_expires(self, entry: Entry) -> datetime.datetime | None:
        return _when(entry.lease_expires_at)

    @admin.display(description="finished")
    def finished(self, entry: Entry) -> datetime.datetime | None:
        return _when(entry.finished_at)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # entries are queued by the app (queue_message), never by hand

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the drainer owns an entry's state: editing it would race a delivery

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # finished entries go with `manage.py chatsdk_outbox purge`

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("chatsdk.change_entry"))

    @admin.action(description="Retry the selected dead letters", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Entry]) -> None:
        """Queue each selected ``failed`` (or never attempted ``expired``) entry again."""
        from chatsdk.integrations.django._store import DjangoStore  # noqa: PLC0415

        outbox = Outbox(DjangoStore(queryset.db))
        retried, refused = 0, []
        for entry_id in queryset.order_by("id").values_list("id", flat=True):
            try:
                outbox.retry(entry_id)
            except OutboxError as exc:
                refused.append(str(exc))
            else:
                retried += 1
        if retried:
            self.message_user(request, f"{retried} entries queued again", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)
