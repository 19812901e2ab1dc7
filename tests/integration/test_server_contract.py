"""Every rule of API.md, checked with plain ``requests`` against both backends.

Tests taking ``srv`` run twice: against the reference server over loopback, and against
:class:`~chatsdk.testing.InMemoryTransport` mounted on the ``requests`` session, so the two
cannot drift apart. Tests that need the server's random fault plans or real concurrency
build their own ReferenceServer.
"""

from __future__ import annotations

import contextlib
import email.utils
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from chatsdk.testing import MAX_BODY_BYTES, FaultPlan, InMemoryTransport, ReferenceServer
from tests.helpers import FakeClock, wait_until

KEY = {"X-API-Key": "test-key"}
KEYS: dict[str, Any] = {"api_keys": ("test-key", "other-key"), "forbidden_keys": ("banned",)}

Backend = ReferenceServer | InMemoryTransport


@pytest.fixture(params=["server", "memory"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def srv(backend: str) -> Iterator[Backend]:
    if backend == "memory":
        yield InMemoryTransport(**KEYS)
        return
    with ReferenceServer(**KEYS) as s:
        yield s


@pytest.fixture
def http(request: pytest.FixtureRequest) -> Iterator[requests.Session]:
    with requests.Session() as session:
        if "srv" in request.fixturenames:
            backend = request.getfixturevalue("srv")
            if isinstance(backend, InMemoryTransport):
                session.mount("http://", backend)
        yield session


def post_message(
    http: requests.Session, srv: Backend, body: Any, key: str | None = None, **kw: Any
) -> requests.Response:
    headers = dict(KEY)
    if key is not None:
        headers["Idempotency-Key"] = key
    headers.update(kw.pop("headers", {}))
    return http.post(f"{srv.url}/api/messages", json=body, headers=headers, timeout=5, **kw)


def assert_error(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    return str(body["error"]["message"])


# -- health and authentication -------------------------------------------------------------


def test_health_needs_no_key(srv: Backend, http: requests.Session) -> None:
    response = http.get(f"{srv.url}/api/health", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_missing_or_wrong_key_is_401(
    srv: Backend, http: requests.Session, headers: dict[str, str]
) -> None:
    response = http.post(
        f"{srv.url}/api/messages", json={"channelId": "c", "text": "t"}, headers=headers, timeout=5
    )
    assert_error(response, 401, "unauthorized")
    assert srv.messages("c") == []


def test_forbidden_key_is_403(srv: Backend, http: requests.Session) -> None:
    response = http.get(
        f"{srv.url}/api/channels/c/messages", headers={"X-API-Key": "banned"}, timeout=5
    )
    assert_error(response, 403, "forbidden")


def test_unknown_path_and_method_get_json_errors(srv: Backend, http: requests.Session) -> None:
    assert_error(http.get(f"{srv.url}/api/nope", headers=KEY, timeout=5), 404, "not_found")
    response = http.put(f"{srv.url}/api/messages", headers=KEY, timeout=5)
    assert_error(response, 405, "method_not_allowed")


# -- validation ----------------------------------------------------------------------------

GOOD = {"channelId": "general", "text": "hello"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "hi"}, "channelId"),
        ({"channelId": 42, "text": "hi"}, "channelId"),
        ({"channelId": "has space", "text": "hi"}, "channelId"),
        ({"channelId": "x" * 129, "text": "hi"}, "channelId"),
        ({"channelId": "", "text": "hi"}, "channelId"),
        ({"channelId": "c"}, "text"),
        ({"channelId": "c", "text": 5}, "text"),
        ({"channelId": "c", "text": "   \n\t"}, "text"),
        ({"channelId": "c", "text": "a\x00b"}, "text"),
        ({"channelId": "c", "text": "x" * 4001}, "text"),
        ({**GOOD, "attachments": "nope"}, "attachments"),
        ({**GOOD, "attachments": [{"type": "image", "url": "u"}] * 11}, "attachments"),
        ({**GOOD, "attachments": [{"url": "u"}]}, "attachments[0].type"),
        ({**GOOD, "attachments": [{"type": "image"}]}, "attachments[0].url"),
        ({**GOOD, "attachments": [{"type": "i", "url": "u", "name": 3}]}, "attachments[0].name"),
        ({**GOOD, "attachments": ["x"]}, "attachments[0]"),
        ({**GOOD, "parentId": 7}, "parentId"),
        ([1, 2], "body"),
    ],
)
def test_message_validation_names_the_field(
    srv: Backend, http: requests.Session, body: Any, field: str
) -> None:
    message = assert_error(post_message(http, srv, body, key="k"), 400, "invalid_request")
    assert message.startswith(f"{field}:"), message
    assert srv.all_messages() == []
    assert srv.counters()["creates"] == 0


def test_invalid_json_body_is_400(srv: Backend, http: requests.Session) -> None:
    response = http.post(f"{srv.url}/api/messages", data=b"{nope", headers=KEY, timeout=5)
    assert assert_error(response, 400, "invalid_request").startswith("body:")


@pytest.mark.parametrize("key", ["x" * 256, "has space", "tab\tkey", "é"])
def test_bad_idempotency_key_is_400(srv: Backend, http: requests.Session, key: str) -> None:
    headers = {**KEY, "Idempotency-Key": key.encode("utf-8").decode("latin-1")}
    response = http.post(f"{srv.url}/api/messages", json=GOOD, headers=headers, timeout=5)
    assert assert_error(response, 400, "invalid_request").startswith("Idempotency-Key:")


def test_limits_are_inclusive(srv: Backend, http: requests.Session) -> None:
    body = {
        "channelId": "A-z_0.9:x" + "y" * 119,
        "text": "  " + "x" * 4000 + "  ",
        "attachments": [{"type": "file", "url": f"https://e/{i}", "name": None} for i in range(10)],
        "parentId": None,
    }
    response = post_message(http, srv, body, key="k" * 255)
    assert response.status_code == 201, response.text
    message = response.json()
    assert message["text"] == body["text"]
    assert message["attachments"] == body["attachments"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reaction": "x"}, "messageId"),
        ({"messageId": "m", "reaction": ""}, "reaction"),
        ({"messageId": "m", "reaction": "x" * 65}, "reaction"),
        ({"messageId": "m"}, "reaction"),
        ({"messageId": 1, "reaction": "x"}, "messageId"),
    ],
)
def test_reaction_validation_names_the_field(
    srv: Backend, http: requests.Session, body: dict[str, Any], field: str
) -> None:
    response = http.post(f"{srv.url}/api/reactions", json=body, headers=KEY, timeout=5)
    assert assert_error(response, 400, "invalid_request").startswith(f"{field}:")


def test_edit_validation_names_the_field(srv: Backend, http: requests.Session) -> None:
    message = post_message(http, srv, GOOD).json()
    response = http.patch(
        f"{srv.url}/api/messages/{message['id']}", json={"text": " "}, headers=KEY, timeout=5
    )
    assert assert_error(response, 400, "invalid_request").startswith("text:")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("before=nope", "before"),
    ],
)
def test_list_validation_names_the_field(
    srv: Backend, http: requests.Session, query: str, field: str
) -> None:
    response = http.get(f"{srv.url}/api/channels/c/messages?{query}", headers=KEY, timeout=5)
    assert assert_error(response, 400, "invalid_request").startswith(f"{field}:")
    response = http.get(f"{srv.url}/api/channels/bad%20channel/messages", headers=KEY, timeout=5)
    assert assert_error(response, 400, "invalid_request").startswith("channelId:")


# -- size limit ----------------------------------------------------------------------------


def test_body_over_the_limit_is_413(srv: Backend, http: requests.Session) -> None:
    body = {"channelId": "c", "text": "x", "pad": "y" * MAX_BODY_BYTES}
    response = post_message(http, srv, body, key="big")
    assert_error(response, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:
        yield b'{"channelId": "c", "text": "x", "pad": "'
        for _ in range(MAX_BODY_BYTES // 4096 + 1):
            yield b"y" * 4096
        yield b'"}'

    response = http.post(f"{srv.url}/api/messages", data=chunks(), headers=KEY, timeout=5)
    assert_error(response, 413, "payload_too_large")
    assert srv.all_messages() == []


# -- idempotency ---------------------------------------------------------------------------


def test_same_key_same_body_replays(srv: Backend, http: requests.Session) -> None:
    first = post_message(http, srv, GOOD, key="op-1")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    again = post_message(http, srv, GOOD, key="op-1")
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert len(srv.messages("general")) == 1
    assert srv.counters()["replays"] == 1


def test_keys_are_scoped_per_api_key(srv: Backend, http: requests.Session) -> None:
    post_message(http, srv, GOOD, key="shared")
    other = post_message(http, srv, GOOD, key="shared", headers={"X-API-Key": "other-key"})
    assert other.status_code == 201
    assert "Idempotent-Replayed" not in other.headers
    assert len(srv.messages("general")) == 2


def test_same_key_different_body_is_422(srv: Backend, http: requests.Session) -> None:
    assert post_message(http, srv, GOOD, key="op-2").status_code == 201
    changed = post_message(http, srv, {**GOOD, "text": "other"}, key="op-2")
    assert_error(changed, 422, "idempotency_key_reused")
    assert len(srv.messages("general")) == 1
    assert srv.counters()["key_reused"] == 1


def test_same_key_while_first_runs_is_409(http: requests.Session) -> None:
    plan = FaultPlan(delay=1.0, delay_range=(0.5, 0.5))
    with ReferenceServer(faults=plan) as srv:
        results: list[requests.Response] = []
        first = threading.Thread(
            target=lambda: results.append(post_message(requests, srv, GOOD, key="slow"))  # type: ignore[arg-type]
        )
        first.start()
        assert wait_until(lambda: srv.counters().get("idempotency_reserved", 0) == 1)
        conflict = post_message(http, srv, GOOD, key="slow")
        assert_error(conflict, 409, "idempotency_key_in_use")
        first.join(timeout=5)
        assert results[0].status_code == 201
        replay = post_message(http, srv, GOOD, key="slow")
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["id"] == results[0].json()["id"]
        assert len(srv.messages("general")) == 1
        assert srv.counters()["conflicts"] == 1


def test_create_without_key_is_not_deduplicated(srv: Backend, http: requests.Session) -> None:
    assert post_message(http, srv, GOOD).status_code == 201
    assert post_message(http, srv, GOOD).status_code == 201
    assert len(srv.messages("general")) == 2


@pytest.mark.parametrize("backend", ["server", "memory"])
def test_idempotency_records_are_kept_24_hours(backend: str) -> None:
    clock = FakeClock(start=time.time())
    memory = InMemoryTransport(clock=clock)
    with contextlib.ExitStack() as stack, requests.Session() as http:
        srv: Backend = memory
        if backend == "server":
            srv = stack.enter_context(ReferenceServer(clock=clock))
        else:
            http.mount("http://", memory)
        first = post_message(http, srv, GOOD, key="day")
        clock.now += 24 * 3600 - 1
        assert post_message(http, srv, GOOD, key="day").json()["id"] == first.json()["id"]
        clock.now += 2
        later = post_message(http, srv, GOOD, key="day")
        assert later.status_code == 201
        assert "Idempotent-Replayed" not in later.headers
        assert later.json()["id"] != first.json()["id"]


# -- Retry-After ---------------------------------------------------------------------------


def test_rate_limit_with_retry_after_seconds(http: requests.Session) -> None:
    with ReferenceServer(faults=FaultPlan(rate_limit=1.0, retry_after=2)) as srv:
        response = post_message(http, srv, GOOD, key="k")
        assert_error(response, 429, "rate_limited")
        assert response.headers["Retry-After"] == "2"
        assert srv.all_messages() == []


def test_rate_limit_with_retry_after_http_date(http: requests.Session) -> None:
    plan = FaultPlan(rate_limit=1.0, retry_after=3, retry_after_form="http-date")
    with ReferenceServer(faults=plan) as srv:
        before = time.time()
        response = post_message(http, srv, GOOD, key="k")
        assert_error(response, 429, "rate_limited")
        when = email.utils.parsedate_to_datetime(response.headers["Retry-After"]).timestamp()
        assert response.headers["Retry-After"].endswith(" GMT")
        assert before + 3 - 1 <= when <= time.time() + 3 + 1


def test_server_errors_have_their_codes_and_503_may_carry_retry_after(
    http: requests.Session,
) -> None:
    plan = FaultPlan(server_error=1.0, server_error_retry_after=1.0, seed=3)
    codes = {500: "internal", 502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout"}
    seen: set[int] = set()
    with ReferenceServer(faults=plan) as srv:
        for _ in range(40):
            response = post_message(http, srv, GOOD, key="k")
            assert_error(response, response.status_code, codes[response.status_code])
            seen.add(response.status_code)
            assert ("Retry-After" in response.headers) == (response.status_code == 503)
        assert srv.counters()["fault.server_error"] == 40
    assert seen == set(codes)


def test_proxy_style_html_error_bodies(http: requests.Session) -> None:
    plan = FaultPlan(server_error=1.0, html_error_rate=1.0, seed=1)
    with ReferenceServer(faults=plan) as srv:
        for _ in range(20):
            response = post_message(http, srv, GOOD)
            if response.status_code in (502, 504):
                assert response.headers["Content-Type"].startswith("text/html")
                assert "<html>" in response.text


# -- listing, editing, deleting ------------------------------------------------------------


def test_paging_newest_first(srv: Backend, http: requests.Session) -> None:
    ids = [
        post_message(http, srv, {"channelId": "p", "text": f"m{i}"}).json()["id"] for i in range(7)
    ]
    post_message(http, srv, {"channelId": "elsewhere", "text": "x"})
    url = f"{srv.url}/api/channels/p/messages"
    page = http.get(url, params={"limit": 3}, headers=KEY, timeout=5).json()
    assert [m["id"] for m in page["messages"]] == ids[6:3:-1]
    assert page["hasMore"] is True
    page = http.get(url, params={"limit": 3, "before": ids[4]}, headers=KEY, timeout=5).json()
    assert [m["id"] for m in page["messages"]] == ids[3:0:-1]
    assert page["hasMore"] is True
    page = http.get(url, params={"limit": 3, "before": ids[1]}, headers=KEY, timeout=5).json()
    assert [m["id"] for m in page["messages"]] == [ids[0]]
    assert page["hasMore"] is False
    everything = http.get(url, headers=KEY, timeout=5).json()
    assert len(everything["messages"]) == 7
    assert everything["hasMore"] is False
    empty = http.get(f"{srv.url}/api/channels/none/messages", headers=KEY, timeout=5).json()
    assert empty == {"messages": [], "hasMore": False}


def test_message_shape(srv: Backend, http: requests.Session) -> None:
    message = post_message(http, srv, {**GOOD, "parentId": "p1"}).json()
    assert set(message) == {
        "id",
        "channelId",
        "text",
        "attachments",
        "parentId",
        "userId",
        "createdAt",
        "updatedAt",
    }
    assert message["parentId"] == "p1"
    assert message["updatedAt"] is None
    assert message["createdAt"].endswith("Z")
    assert srv.messages("general") == [message]


def test_patch_and_delete(srv: Backend, http: requests.Session) -> None:
    message = post_message(http, srv, GOOD).json()
    url = f"{srv.url}/api/messages/{message['id']}"
    edited = http.patch(url, json={"text": "edited"}, headers=KEY, timeout=5)
    assert edited.status_code == 200
    assert edited.json()["text"] == "edited"
    assert edited.json()["updatedAt"] is not None
    assert edited.json()["id"] == message["id"]
    assert http.delete(url, headers=KEY, timeout=5).status_code == 204
    assert http.delete(url, headers=KEY, timeout=5).status_code == 204
    assert srv.messages("general") == []
    assert_error(http.patch(url, json={"text": "x"}, headers=KEY, timeout=5), 404, "not_found")
    missing = f"{srv.url}/api/messages/msg_missing"
    assert_error(http.delete(missing, headers=KEY, timeout=5), 404, "not_found")
    assert_error(http.patch(missing, json={"text": "x"}, headers=KEY, timeout=5), 404, "not_found")


def test_reactions(srv: Backend, http: requests.Session) -> None:
    message = post_message(http, srv, GOOD).json()
    body = {"messageId": message["id"], "reaction": "👍"}
    url = f"{srv.url}/api/reactions"
    first = http.post(url, json=body, headers={**KEY, "Idempotency-Key": "r1"}, timeout=5)
    assert first.status_code == 201
    assert set(first.json()) == {"messageId", "reaction", "userId", "createdAt"}
    replay = http.post(url, json=body, headers={**KEY, "Idempotency-Key": "r1"}, timeout=5)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    again = http.post(url, json=body, headers={**KEY, "Idempotency-Key": "r2"}, timeout=5)
    assert again.status_code == 200
    assert again.json() == first.json()
    no_key = http.post(url, json=body, headers=KEY, timeout=5)
    assert no_key.status_code == 200
    other = http.post(url, json=body, headers={"X-API-Key": "other-key"}, timeout=5)
    assert other.status_code == 201
    assert len(srv.reactions(message["id"])) == 2

    remove = f"{srv.url}/api/messages/{message['id']}/reactions/👍"
    assert http.delete(remove, headers=KEY, timeout=5).status_code == 204
    assert http.delete(remove, headers=KEY, timeout=5).status_code == 204
    assert len(srv.reactions(message["id"])) == 1

    missing = {"messageId": "msg_missing", "reaction": "x"}
    assert_error(http.post(url, json=missing, headers=KEY, timeout=5), 404, "not_found")
    gone = f"{srv.url}/api/messages/msg_missing/reactions/x"
    assert_error(http.delete(gone, headers=KEY, timeout=5), 404, "not_found")


def test_realtime_token(srv: Backend, http: requests.Session) -> None:
    response = http.post(f"{srv.url}/api/realtime/token", headers=KEY, timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "url", "expiresAt"}
    assert body["url"] == srv.ws_url
    assert body["expiresAt"].endswith("Z")
    assert_error(http.post(f"{srv.url}/api/realtime/token", timeout=5), 401, "unauthorized")
