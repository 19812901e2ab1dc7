"""A small app's "notify on order" code, as a chatsdk user would write it.

The app posts a message to its ``orders`` channel when an order is placed. One order is one
intent, so the ``Idempotency-Key`` is derived from the order id: a retried notification
(a retried Celery task, a double-clicked button) can never post twice. When the chat
service cannot be reached, the notification goes to the outbox, which delivers it later;
when the service refuses it for good, the app records that and moves on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import chatsdk

log = logging.getLogger("shop.notify")

CHANNEL = "orders"

Outcome = Literal["sent", "queued", "rejected"]


@dataclass(frozen=True)
class Order:
    id: int
    customer: str
    total_cents: int


def order_text(order: Order) -> str:
    return f"New order #{order.id} from {order.customer}: {order.total_cents / 100:.2f} EUR"


def notify_on_order(chat: chatsdk.ChatClient, order: Order) -> Outcome:
    """Tell the team about ``order``; never raises for a chat failure."""
    key = chatsdk.idempotency_key_for("order-placed", str(order.id))
    text = order_text(order)
    try:
        chat.send_message(CHANNEL, text, idempotency_key=key)
    except (chatsdk.TransportError, chatsdk.ServerError):  # an open circuit is a TransportError
        if chat.outbox is None:
            raise
        chat.queue_message(CHANNEL, text, idempotency_key=key)
        log.warning("order %s: chat unreachable, notification queued", order.id)
        return "queued"
    except chatsdk.APIError as exc:
        log.error("order %s: chat refused the notification (%s)", order.id, exc.status)
        return "rejected"
    return "sent"
