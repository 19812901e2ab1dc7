"""The adapter's retry loop, through ChatSession and ChatClient, with `responses`."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import requests
import responses
import urllib3.exceptions

from chatsdk import (
    APIError,
    ChatClient,
    ChatSession,
    ConnectError,
    ConnectTimeoutError,
    ForbiddenError,
    InvalidResponseError,
    NotFoundError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    TransportTimeoutError,
    UnauthorizedError,
    UnprocessableEntityError,
)
from tests.conftest import FakeClock, FakeSleep

BASE = "http://chat.test"
MESSAGES = f"{BASE}/api/messages"
KEY = "sk-secret-key-123"


def message_json(**overrides: Any) -> dict[str, Any]:
    data = {
        "id": "m1",
        "channelId": "general",
        "text": "hello",
        "attachments": [],
        "parentId": None,
        "userId": "u1",
        "createdAt": "2026-11-28T12:00:00Z",
        "updatedAt": None,
    }
    data.update(overrides)
    return data


def error_json(code: str, message: str = "x") -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def make_client(
    sleep: FakeSleep, clock: FakeClock, policy: RetryPolicy | None = None
) -> ChatClient:
    session = ChatSession(BASE, KEY, retry=policy, sleep=sleep, clock=clock)
    return ChatClient(session=session)


def keys_sent() -> list[str | None]:
    return [c.request.headers.get("Idempotency-Key") for c in responses.calls]


@responses.activate
def test_503_503_201_succeeds_after_three_sends_with_one_key(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json("unavailable"), status=503)
    responses.add(responses.POST, MESSAGES, json=error_json("unavailable"), status=503)
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    message = make_client(sleep, clock).send_message("general", "hello")
    assert message.id == "m1" and not message.replayed
    assert len(responses.calls) == 3
    keys = keys_sent()
    assert keys[0] is not None and len(set(keys)) == 1
    assert len(sleep.calls) == 2


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_request", APIError),
        (401, "unauthorized", UnauthorizedError),
        (403, "forbidden", ForbiddenError),
        (404, "not_found", NotFoundError),
        (422, "idempotency_key_reused", UnprocessableEntityError),
    ],
)
@responses.activate
def test_client_errors_are_sent_once(sleep, clock, status: int, code: str, cls: type) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json(code, "text: bad"), status=status)
    with pytest.raises(cls) as info:
        make_client(sleep, clock).send_message("general", "hello")
    assert len(responses.calls) == 1
    assert info.value.status == status and info.value.code == code
    assert info.value.attempts == 1
    assert info.value.idempotency_key == keys_sent()[0]
    assert sleep.calls == []


@responses.activate
def test_always_500_sends_exactly_max_attempts(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json("internal"), status=500)
    with pytest.raises(ServerError) as info:
        make_client(sleep, clock).send_message("general", "hello")
    assert len(responses.calls) == 5
    assert info.value.attempts == 5
    assert info.value.status == 500 and info.value.code == "internal"
    assert info.value.idempotency_key is not None
    assert isinstance(info.value, requests.HTTPError)


@responses.activate
def test_session_returns_the_last_response_when_status_retries_run_out(sleep, clock) -> None:
    responses.add(responses.GET, f"{BASE}/api/health", status=502, body="bad gateway")
    with ChatSession(BASE, KEY, sleep=sleep, clock=clock) as session:
        response = session.get("/api/health")
    assert response.status_code == 502
    assert len(responses.calls) == 5


@responses.activate
def test_429_retry_after_is_the_minimum_wait(sleep, clock) -> None:
    responses.add(
        responses.POST,
        MESSAGES,
        json=error_json("rate_limited"),
        status=429,
        headers={"Retry-After": "2"},
    )
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    make_client(sleep, clock).send_message("general", "hello")
    assert len(responses.calls) == 2
    assert sleep.calls[0] >= 2


@responses.activate
def test_retry_after_above_the_cap_is_not_retried(sleep, clock) -> None:
    responses.add(
        responses.POST,
        MESSAGES,
        json=error_json("rate_limited"),
        status=429,
        headers={"Retry-After": "3600"},
    )
    with pytest.raises(RateLimitedError) as info:
        make_client(sleep, clock).send_message("general", "hello")
    assert len(responses.calls) == 1
    assert info.value.retry_after == 3600
    assert sleep.calls == []


@responses.activate
def test_garbage_retry_after_is_ignored(sleep, clock) -> None:
    responses.add(
        responses.POST,
        MESSAGES,
        json=error_json("unavailable"),
        status=503,
        headers={"Retry-After": "-5"},
    )
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    make_client(sleep, clock, RetryPolicy(jitter="none")).send_message("general", "hello")
    assert sleep.calls == pytest.approx([0.1])


@responses.activate
def test_read_timeout_on_a_post_with_a_key_is_retried(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, body=requests.ReadTimeout("read timed out"))
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    make_client(sleep, clock).send_message("general", "hello")
    assert len(responses.calls) == 2
    assert len(set(keys_sent())) == 1


@responses.activate
def test_raw_post_without_a_key_is_not_retried_after_a_read_timeout(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, body=requests.ReadTimeout("read timed out"))
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    with ChatSession(BASE, KEY, sleep=sleep, clock=clock) as session:
        with pytest.raises(TransportTimeoutError) as info:
            session.post("/api/messages", json={"channelId": "c", "text": "t"})
    assert len(responses.calls) == 1
    assert info.value.attempts == 1
    assert isinstance(info.value, requests.Timeout)
    assert isinstance(info.value.__cause__, requests.ReadTimeout)


@responses.activate
def test_raw_post_without_a_key_is_retried_after_a_connect_error(sleep, clock) -> None:
    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    responses.add(responses.POST, MESSAGES, body=requests.ConnectionError(refused))
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    with ChatSession(BASE, KEY, sleep=sleep, clock=clock) as session:
        response = session.post("/api/messages", json={"channelId": "c", "text": "t"})
    assert response.status_code == 201
    assert len(responses.calls) == 2


@responses.activate
def test_raw_post_without_a_key_retries_only_unprocessed_statuses(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, status=500, json=error_json("internal"))
    responses.add(responses.POST, MESSAGES, status=503, json=error_json("unavailable"))
    # Six failures in a row would open the host's circuit: this test is about retries only.
    with ChatSession(BASE, KEY, sleep=sleep, clock=clock, breaker=False) as session:
        assert session.post("/api/messages", json={}).status_code == 500
        assert len(responses.calls) == 1
        responses.replace(responses.POST, MESSAGES, status=503, json=error_json("unavailable"))
        assert session.post("/api/messages", json={}).status_code == 503
    assert len(responses.calls) == 1 + 5


@responses.activate
def test_connect_timeout_is_retried_and_mapped(sleep, clock) -> None:
    responses.add(responses.GET, f"{BASE}/api/health", body=requests.ConnectTimeout("slow"))
    with ChatSession(BASE, KEY, sleep=sleep, clock=clock) as session:
        with pytest.raises(ConnectTimeoutError) as info:
            session.get("/api/health")
    assert len(responses.calls) == 5
    assert info.value.attempts == 5
    assert isinstance(info.value, requests.ConnectionError)
    assert isinstance(info.value, requests.Timeout)


@responses.activate
def test_reset_while_reading_the_body_is_an_attempt_failure(sleep, clock) -> None:
    reset = requests.exceptions.ChunkedEncodingError("Connection broken: reset")
    responses.add(responses.POST, MESSAGES, body=reset)
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    make_client(sleep, clock).send_message("general", "hello")
    assert len(responses.calls) == 2


@responses.activate
def test_html_502_from_a_proxy_is_a_server_error(sleep, clock) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
    responses.add(responses.POST, MESSAGES, body=page, status=502, content_type="text/html")
    with pytest.raises(ServerError) as info:
        make_client(sleep, clock).send_message("general", "hello")
    assert info.value.status == 502 and info.value.code is None
    assert "502" in str(info.value) and "Bad Gateway" in str(info.value)
    assert info.value.attempts == 5


@pytest.mark.parametrize(
    "body",
    ['{"id": "m1", "channelId": ', "<html>oops</html>", "[]", '{"id": "m1"}', ""],
)
@responses.activate
def test_a_2xx_body_off_the_contract_is_a_clear_api_error(sleep, clock, body: str) -> None:
    responses.add(responses.POST, MESSAGES, body=body, status=201)
    with pytest.raises(InvalidResponseError) as info:
        make_client(sleep, clock).send_message("general", "hello")
    assert info.value.status == 201
    assert "HTTP 201" in str(info.value)
    assert info.value.idempotency_key == keys_sent()[0]


@responses.activate
def test_409_key_in_use_is_retried_with_the_same_key(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json("idempotency_key_in_use"), status=409)
    responses.add(
        responses.POST,
        MESSAGES,
        json=message_json(),
        status=201,
        headers={"Idempotent-Replayed": "true"},
    )
    message = make_client(sleep, clock).send_message("general", "hello")
    assert message.replayed
    assert len(set(keys_sent())) == 1 and len(responses.calls) == 2


@responses.activate
def test_deadline_bounds_the_whole_operation(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json("internal"), status=500)
    policy = RetryPolicy(jitter="none", deadline=0.5)
    with pytest.raises(ServerError) as info:
        make_client(sleep, clock, policy).send_message("general", "hello")
    # waits 0.1 and 0.2 fit in 0.5 s; the next (0.4) would end past the deadline.
    assert sleep.calls == pytest.approx([0.1, 0.2])
    assert info.value.attempts == 3


@responses.activate
def test_deadline_clips_each_attempt_timeout(sleep, clock) -> None:
    responses.add(responses.GET, f"{BASE}/api/health", json={"status": "ok"})
    policy = RetryPolicy(deadline=2.0)
    with ChatSession(BASE, KEY, retry=policy, sleep=sleep, clock=clock) as session:
        session.get("/api/health")
        session.get("/api/health", timeout=1.0)
        session.get("/api/health", timeout=(None, None))
    timeouts = [c.request.req_kwargs["timeout"] for c in responses.calls]
    assert timeouts == [(2.0, 2.0), 1.0, (2.0, 2.0)]


@responses.activate
def test_no_deadline_passes_the_timeout_through(sleep, clock) -> None:
    responses.add(responses.GET, f"{BASE}/api/health", json={"status": "ok"})
    no_deadline = RetryPolicy(deadline=None)
    with ChatSession(BASE, KEY, sleep=sleep, clock=clock, retry=no_deadline) as session:
        session.get("/api/health")
        session.get("/api/health", timeout=7)
    assert [c.request.req_kwargs["timeout"] for c in responses.calls] == [(3.05, 10.0), 7]


@responses.activate
def test_retries_are_logged_without_the_api_key(sleep, clock, caplog) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json("unavailable"), status=503)
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    with caplog.at_level(logging.DEBUG, logger="chatsdk"):
        make_client(sleep, clock).send_message("general", "hello")
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1 and retries[0].levelno == logging.INFO
    text = retries[0].getMessage()
    assert "POST /api/messages" in text and "attempt 1" in text and "HTTP 503" in text
    assert KEY not in caplog.text


@responses.activate
def test_transport_error_after_retries_carries_attempts_and_key(sleep, clock) -> None:
    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    responses.add(responses.POST, MESSAGES, body=requests.ConnectionError(refused))
    with pytest.raises(ConnectError) as info:
        make_client(sleep, clock).send_message("general", "hello", idempotency_key="my-key")
    assert info.value.attempts == 5
    assert info.value.idempotency_key == "my-key"
    assert keys_sent() == ["my-key"] * 5
    assert KEY not in str(info.value) and KEY not in repr(info.value)


@responses.activate
def test_streaming_responses_are_retried_on_status(sleep, clock) -> None:
    responses.add(responses.GET, f"{BASE}/api/health", status=503)
    responses.add(responses.GET, f"{BASE}/api/health", json={"status": "ok"})
    with ChatSession(BASE, KEY, sleep=sleep, clock=clock) as session:
        response = session.get("/api/health", stream=True)
        assert json.loads(response.content) == {"status": "ok"}
    assert len(responses.calls) == 2
