"""The admin of the Django database outbox, through Django's test client (pytest-django)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.processes import require_module

require_module("django")
require_module("pytest_django")

from chatsdk import BadRequestError, Outbox  # noqa: E402
from chatsdk.integrations.django._store import DjangoStore  # noqa: E402

CHANGELIST = "/admin/chatsdk/entry/"


def body(text: str) -> dict[str, Any]:
    return {"channelId": "orders", "text": text, "attachments": [], "parentId": None}


def message_json() -> dict[str, Any]:
    return {
        "id": "m1",
        "channelId": "orders",
        "text": "sent",
        "attachments": [],
        "parentId": None,
        "userId": "u1",
        "createdAt": "2024-01-01T00:00:00Z",
        "updatedAt": None,
    }


@pytest.fixture
def outbox(db: None) -> Outbox:
    """An outbox with a sent entry, a dead letter and a queued entry, on separate channels."""
    box = Outbox(DjangoStore())
    for channel, text in (("a", "sent"), ("b", "dead"), ("c", "queued")):
        box.enqueue("message", channel, {**body(text), "channelId": channel})
    claimed, _ = box.claim(2)
    box.ack(claimed[0], message_json())
    box.fail(claimed[1], BadRequestError(400, "invalid_request", "text: bad"))
    return box


def test_the_changelist_filters_entries_by_status(admin_client, outbox: Outbox) -> None:
    page = admin_client.get(CHANGELIST)
    assert page.status_code == 200
    assert "3 outbox entries" in page.content.decode()
    failed = admin_client.get(CHANGELIST, {"status__exact": "failed"})
    text = failed.content.decode()
    assert failed.status_code == 200 and "1 outbox entry" in text
    assert "HTTP 400 invalid_request: text: bad" in text
    detail = admin_client.get(f"{CHANGELIST}2/change/")
    assert detail.status_code == 200 and "dead" in detail.content.decode()  # read-only view
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403


def test_the_retry_action_queues_dead_letters_again(admin_client, outbox: Outbox) -> None:
    dead = outbox.entries("failed")[0]
    queued = outbox.entries("queued")[0]
    page = admin_client.post(
        CHANGELIST,
        {"action": "retry", "_selected_action": [str(dead.id), str(queued.id)]},
        follow=True,
    )
    text = page.content.decode()
    assert page.status_code == 200
    assert "1 entries queued again" in text
    assert f"Outbox entry {queued.id} is queued; cannot retry it" in text
    again = outbox.get(dead.id)
    assert again is not None and (again.status, again.attempts) == ("queued", 0)
    assert again.idempotency_key != dead.idempotency_key  # a 400 created nothing: a new key
    claimed, _ = outbox.claim(5)
    assert sorted(e.id for e in claimed) == [dead.id, queued.id]  # due again, as queued is


def test_retry_needs_the_change_permission(client, django_user_model, outbox: Outbox) -> None:
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_entry"))
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 200
    dead = outbox.entries("failed")[0]
    page = client.post(CHANGELIST, {"action": "retry", "_selected_action": [str(dead.id)]})
    assert page.status_code == 200  # the action is not offered: nothing happens
    assert outbox.get(dead.id).status == "failed"  # type: ignore[union-attr]
