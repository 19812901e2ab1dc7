"""ChatClient: configuration, validation before I/O, models, every endpoint."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
import responses

from chatsdk import (
    Attachment,
    ChatClient,
    ChatSession,
    ConfigurationError,
    Message,
    Reaction,
    ValidationError,
)
from tests.unit.test_transport import BASE, KEY, message_json

REACTION = {
    "messageId": "m1",
    "reaction": "+1",
    "userId": "u1",
    "createdAt": "2026-11-28T12:00:00Z",
}


@pytest.fixture
def client(sleep, clock) -> ChatClient:
    return ChatClient(session=ChatSession(BASE, KEY, sleep=sleep, clock=clock))


def test_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATSDK_URL", "http://env.test")
    monkeypatch.setenv("CHATSDK_API_KEY", KEY)
    with ChatClient() as client:
        assert client.session.base_url == "http://env.test/"


@pytest.mark.parametrize(
    ("url", "key", "missing"), [(None, KEY, "CHATSDK_URL"), (BASE, None, "CHATSDK_API_KEY")]
)
def test_missing_configuration_names_what(monkeypatch, url, key, missing) -> None:
    monkeypatch.delenv("CHATSDK_URL", raising=False)
    monkeypatch.delenv("CHATSDK_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match=missing):
        ChatClient(url, key)


def test_session_and_settings_are_exclusive() -> None:
    with pytest.raises(ConfigurationError, match="base_url, timeout"):
        ChatClient(BASE, session=ChatSession(BASE, KEY), timeout=3)


def test_no_outbox_no_auth_error() -> None:
    assert ChatClient(BASE, KEY).outbox_auth_error is None


def test_key_not_in_repr() -> None:
    client = ChatClient(BASE, KEY)
    assert KEY not in repr(client) and BASE in repr(client)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"channel_id": "", "text": "hi"}, "channelId"),
        ({"channel_id": "a b", "text": "hi"}, "channelId"),
        ({"channel_id": "x" * 129, "text": "hi"}, "channelId"),
        ({"channel_id": 7, "text": "hi"}, "channelId"),
        ({"channel_id": "c", "text": "   "}, "text"),
        ({"channel_id": "c", "text": "x" * 4001}, "text"),
        ({"channel_id": "c", "text": "a\x00b"}, "text"),
        ({"channel_id": "c", "text": b"hi"}, "text"),
        ({"channel_id": "c", "text": "hi", "attachments": [{}] * 11}, "attachments[0].type"),
        (
            {"channel_id": "c", "text": "hi", "attachments": [{"type": "f", "url": "u"}] * 11},
            "attachments",
        ),
        ({"channel_id": "c", "text": "hi", "attachments": "file"}, "attachments"),
        ({"channel_id": "c", "text": "hi", "attachments": [3]}, "attachments[0]"),
        (
            {
                "channel_id": "c",
                "text": "hi",
                "attachments": [{"type": "f", "url": "u", "name": 1}],
            },
            "attachments[0].name",
        ),
        ({"channel_id": "c", "text": "hi", "parent_id": ""}, "parentId"),
        ({"channel_id": "c", "text": "hi", "idempotency_key": "has space"}, "idempotencyKey"),
        ({"channel_id": "c", "text": "hi", "idempotency_key": "k" * 256}, "idempotencyKey"),
    ],
)
@responses.activate
def test_send_message_validates_before_any_io(client, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        client.send_message(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert len(responses.calls) == 0


@responses.activate
def test_other_validation(client) -> None:
    with pytest.raises(ValidationError, match="reaction"):
        client.add_reaction("m1", "")
    with pytest.raises(ValidationError, match="reaction"):
        client.add_reaction("m1", "x" * 65)
    with pytest.raises(ValidationError, match="messageId"):
        client.add_reaction("a/b", "+1")
    with pytest.raises(ValidationError, match="limit"):
        client.list_messages("c", limit=201)
    with pytest.raises(ValidationError, match="limit"):
        client.list_messages("c", limit=True)
    with pytest.raises(ValidationError, match="text"):
        client.edit_message("m1", "")
    with pytest.raises(ValidationError, match="messageId"):
        client.delete_message("")
    assert len(responses.calls) == 0


@responses.activate
def test_send_message_wire_body_and_model(client) -> None:
    reply = message_json(
        attachments=[{"type": "image", "url": "http://x/y.png", "name": None}],
        parentId="m0",
        updatedAt="2026-11-28T12:01:00+00:00",
    )
    responses.add(responses.POST, f"{BASE}/api/messages", json=reply, status=201)
    message = client.send_message(
        "general",
        "hello",
        attachments=[Attachment(type="image", url="http://x/y.png")],
        parent_id="m0",
        idempotency_key="k-1",
    )
    request = responses.calls[0].request
    assert request.headers["Idempotency-Key"] == "k-1"
    assert request.headers["Content-Type"] == "application/json"
    assert responses.calls[0].request.body is not None
    import json

    assert json.loads(request.body) == {
        "channelId": "general",
        "text": "hello",
        "attachments": [{"type": "image", "url": "http://x/y.png", "name": None}],
        "parentId": "m0",
    }
    assert message.attachments == (Attachment(type="image", url="http://x/y.png"),)
    assert message.created_at == dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)
    assert message.updated_at is not None
    assert Message.from_json(message.to_json()) == message


@responses.activate
def test_each_create_gets_a_fresh_uuid4_key(client) -> None:
    responses.add(responses.POST, f"{BASE}/api/messages", json=message_json(), status=201)
    client.send_message("c", "one")
    client.send_message("c", "two")
    keys = [c.request.headers["Idempotency-Key"] for c in responses.calls]
    assert len(set(keys)) == 2 and all(len(k) == 36 and k[14] == "4" for k in keys)


@responses.activate
def test_endpoints(client) -> None:
    responses.add(responses.PATCH, f"{BASE}/api/messages/m%201", json=message_json(text="new"))
    responses.add(responses.DELETE, f"{BASE}/api/messages/m%201", status=204)
    responses.add(
        responses.GET,
        f"{BASE}/api/channels/general/messages",
        json={"messages": [message_json(id="m2"), message_json()], "hasMore": False},
    )
    responses.add(responses.POST, f"{BASE}/api/reactions", json=REACTION, status=201)
    responses.add(responses.DELETE, f"{BASE}/api/messages/m1/reactions/%2B1", status=204)
    responses.add(responses.GET, f"{BASE}/api/health", json={"status": "ok"})
    assert client.edit_message("m 1", "new").text == "new"
    assert client.delete_message("m 1") is None
    listed = client.list_messages("general", limit=2, before="m9")
    assert [m.id for m in listed] == ["m2", "m1"]
    assert (
        "limit=2" in responses.calls[2].request.url
        and "before=m9" in responses.calls[2].request.url
    )
    reaction = client.add_reaction("m1", "+1")
    assert (
        reaction == Reaction.from_json(REACTION)
        and Reaction.from_json(reaction.to_json()) == reaction
    )
    assert responses.calls[3].request.headers["Idempotency-Key"]
    client.remove_reaction("m1", "+1")
    assert client.health() is True


@responses.activate
def test_list_messages_off_contract(client) -> None:
    from chatsdk import InvalidResponseError

    responses.add(responses.GET, f"{BASE}/api/channels/c/messages", json={"items": []})
    with pytest.raises(InvalidResponseError):
        client.list_messages("c")


@responses.activate
def test_health_false_when_down_or_wrong(client) -> None:
    responses.add(responses.GET, f"{BASE}/api/health", status=500)
    assert client.health() is False
    responses.replace(responses.GET, f"{BASE}/api/health", json={"status": "degraded"})
    assert client.health() is False
    responses.replace(responses.GET, f"{BASE}/api/health", body="not json")
    assert client.health() is False


@responses.activate
def test_api_key_never_logged(client, caplog) -> None:
    responses.add(responses.POST, f"{BASE}/api/messages", status=503)
    responses.add(responses.POST, f"{BASE}/api/messages", json=message_json(), status=201)
    with caplog.at_level(logging.DEBUG):
        client.send_message("c", "secret text")
    assert KEY not in caplog.text


def test_models_reject_bad_fields() -> None:
    with pytest.raises(ValueError, match="createdAt"):
        Message.from_json(message_json(createdAt="yesterday"))
    with pytest.raises(ValueError, match="parentId"):
        Message.from_json(message_json(parentId=3))
    with pytest.raises(ValueError, match="attachments"):
        Message.from_json(message_json(attachments="x"))
    with pytest.raises(ValueError, match="object"):
        Reaction.from_json([])


@responses.activate
def test_the_realtime_token_fetch_is_retried_under_one_key(client) -> None:
    responses.add(responses.POST, f"{BASE}/api/realtime/token", status=503)
    responses.add(
        responses.POST,
        f"{BASE}/api/realtime/token",
        json={
            "token": "t",
            "url": "ws://chat.test/connection/websocket",
            "expiresAt": "2026-11-28T13:00:00Z",
        },
    )
    rt = client.realtime()
    try:
        keys = [c.request.headers.get("Idempotency-Key") for c in responses.calls]
        assert len(keys) == 2 and keys[0] is not None and keys[0] == keys[1]
    finally:
        rt.close()
