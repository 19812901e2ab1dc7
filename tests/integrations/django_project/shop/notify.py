"""The app code under test: tell the team about an order; never fail the order for chat."""

from __future__ import annotations

import logging

import chatsdk
from chatsdk.integrations.django import get_client

from .models import Order

log = logging.getLogger("shop.notify")


def notify_order(order: Order) -> str:
    """``"sent"``, ``"queued"`` (the outbox delivers later) or ``"rejected"``."""
    chat = get_client()
    key = chatsdk.idempotency_key_for("order-placed", order.pk)
    text = f"order {order.pk}: {order.item}"
    try:
        chat.send_message("orders", text, idempotency_key=key)
    except (chatsdk.TransportError, chatsdk.ServerError):
        chat.queue_message("orders", text, idempotency_key=key)
        return "queued"
    except chatsdk.APIError as exc:
        log.error("order %s: chat refused the notification (%s)", order.pk, exc.status)
        return "rejected"
    return "sent"
