"""User-style Django ``TestCase`` tests of the shop's notify_order, in test mode.

How a Django project tests its chatsdk code: ``CHATSDK = {"TRANSPORT": "memory"}`` (here
with ``override_settings``) and ``chatsdk.integrations.django.sent()`` for what was
posted; a transport object of the test's own in ``TRANSPORT`` for scripted faults.
"""

from __future__ import annotations

import tempfile

import pytest

from tests.processes import require_module

require_module("django")

from django.test import TestCase, override_settings  # noqa: E402

from chatsdk.integrations.django import get_client, sent  # noqa: E402
from chatsdk.testing import InMemoryTransport, set_testing  # noqa: E402
from tests.integrations.django_project.shop.models import Order  # noqa: E402
from tests.integrations.django_project.shop.notify import notify_order  # noqa: E402

MEMORY = {"URL": "http://chatsdk.invalid", "API_KEY": "test-key", "TRANSPORT": "memory"}


class TestModeCase(TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.enterClassContext(set_testing(True))


@override_settings(CHATSDK=MEMORY)
class NotifyOrderTests(TestModeCase):
    def test_an_order_posts_one_message(self) -> None:
        order = Order.objects.create(item="book")
        self.assertEqual(notify_order(order), "sent")
        self.assertEqual([s.data["text"] for s in sent()], [f"order {order.pk}: book"])

    def test_notifying_twice_posts_once(self) -> None:
        order = Order.objects.create(item="pen")
        notify_order(order)
        notify_order(order)
        self.assertEqual(len(sent()), 1)


class NotifyOrderFaultTests(TestModeCase):
    def setUp(self) -> None:
        self.transport = InMemoryTransport()
        tmp = self.enterContext(tempfile.TemporaryDirectory())
        self.enterContext(
            override_settings(
                CHATSDK={**MEMORY, "TRANSPORT": self.transport, "OUTBOX": f"{tmp}/outbox.db"}
            )
        )
        # Leaving override_settings closes the client the settings built.

    def test_a_503_then_success_posts_once(self) -> None:
        self.transport.fail_next(1, status=503)
        self.assertEqual(notify_order(Order.objects.create(item="cup")), "sent")
        self.assertEqual(len(self.transport.sent), 1)

    def test_a_permanent_400_is_rejected_and_nothing_is_queued(self) -> None:
        self.transport.fail_next(1, status=400)
        self.assertEqual(notify_order(Order.objects.create(item="ink")), "rejected")
        self.assertEqual(len(self.transport.sent), 0)
        self.assertEqual(get_client().outbox.stats().pending, 0)

    def test_an_outage_queues_and_the_outbox_delivers_when_it_ends(self) -> None:
        order = Order.objects.create(item="lamp")
        with self.transport.outage():
            self.assertEqual(notify_order(order), "queued")
            self.assertFalse(get_client().flush())
        self.assertTrue(get_client().flush())
        self.assertEqual([s.data["text"] for s in self.transport.sent], [f"order {order.pk}: lamp"])


pytestmark = pytest.mark.django_db
