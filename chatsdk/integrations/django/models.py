"""The outbox in the Django database (``CHATSDK["OUTBOX"] = "database"``): one model.

A row is an outbox entry, with the columns every chatsdk outbox store has (see
:mod:`chatsdk._outbox.store`): times are wall-clock seconds (floats), ``body``, ``error``
and ``response`` are JSON text. ``manage.py migrate`` creates the table; the rows are
written and claimed by :class:`chatsdk.integrations.django._store.DjangoStore`, so change
them through ``manage.py chatsdk_outbox`` or the admin rather than by hand.
"""

from __future__ import annotations

from django.db import models

from chatsdk._outbox.outbox import STATUSES

__all__ = ["PENDING", "STATUSES", "Entry"]

PENDING = ("queued", "sending")


class Entry(models.Model):
    """One outbox entry: a message or reaction to create, and how its delivery goes."""

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16)
    channel = models.CharField(max_length=255)
    idempotency_key = models.CharField(max_length=255, unique=True)
    body = models.TextField()
    status = models.CharField(max_length=16, default="queued", choices=[(s, s) for s in STATUSES])
    attempts = models.IntegerField(default=0)
    created_at = models.FloatField()
    next_attempt_at = models.FloatField()
    lease_owner = models.CharField(max_length=255, null=True, blank=True)
    lease_expires_at = models.FloatField(null=True, blank=True)
    lease_token = models.CharField(max_length=64, null=True, blank=True)
    origin = models.CharField(max_length=255, null=True, blank=True)
    finished_at = models.FloatField(null=True, blank=True)
    last_error = models.TextField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    response = models.TextField(null=True, blank=True)
    possibly_delivered = models.BooleanField(default=False)
    trace_context = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "chatsdk_outbox"
        verbose_name = "outbox entry"
        verbose_name_plural = "outbox entries"
        indexes = [
            # Each channel's head is its oldest pending entry: found on this index alone.
            models.Index(
                fields=["channel", "id"],
                condition=models.Q(status__in=PENDING),
                name="chatsdk_outbox_pending",
            ),
            # Pruning of old sent entries.
            models.Index(
                fields=["finished_at"],
                condition=models.Q(status__in=("sent", "failed", "expired")),
                name="chatsdk_outbox_finished",
            ),
            # Expired entries, counted at the end of every flush.
            models.Index(
                fields=["id"],
                condition=models.Q(status="expired"),
                name="chatsdk_outbox_expired",
            ),
            # A claim's first look: queued entries by due time, claims by lease expiry.
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=models.Q(status="queued"),
                name="chatsdk_outbox_due",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(status="sending"),
                name="chatsdk_outbox_leased",
            ),
        ]

    def __str__(self) -> str:
        return f"outbox entry {self.pk} ({self.kind} to {self.channel}, {self.status})"
