"""The app code under test: notify a channel when an order is placed."""

from __future__ import annotations

import chatsdk
from chatsdk.integrations.django import get_client

from .models import Order


def notify_order(order: Order) -> chatsdk.Message:
    key = chatsdk.idempotency_key_for("order-placed", order.pk)
    return get_client().send_message(
        "orders", f"order {order.pk}: {order.item}", idempotency_key=key
    )
