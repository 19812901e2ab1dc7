"""InMemoryTransport: the API in-process beneath the retry loop, its faults and its logs."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import requests

from chatsdk import (
    BadRequestError,
    ChatClient,
    ChatSession,
    CircuitBreakerOpenError,
    ConfigurationError,
    ConnectError,
    RateLimitedError,
    ServerError,
)
from chatsdk.testing import (
    InMemoryTransport,
    Sent,
    SentLog,
    advance,
    set_testing,
    transport_from_setting,
)

GOOD = {"channelId": "general", "text": "hello", "attachments": [], "parentId": None}


@pytest.fixture
def memory() -> InMemoryTransport:
    return InMemoryTransport()


@pytest.fixture
def chat(memory: InMemoryTransport) -> Iterator[ChatClient]:
    with set_testing(True), ChatClient(memory.url, "key", transport=memory) as client:
        yield client


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- no aiohttp, no sockets ----------------------------------------------------------------


def test_importing_the_transport_and_the_plugin_does_not_import_aiohttp() -> None:
    result = run_python(
        """
        import sys
        import chatsdk.testing, chatsdk.testing.pytest_plugin
        from chatsdk.testing import InMemoryTransport, set_testing
        assert "aiohttp" not in sys.modules, "aiohttp was imported"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_works_without_aiohttp_and_without_sockets() -> None:
    # aiohttp made unimportable, socket.socket made to fail: the whole SDK still runs.
    result = run_python(
        """
        import sys, socket
        sys.modules["aiohttp"] = None
        class NoSocket(socket.socket):
            def __init__(self, *a, **k):
                raise AssertionError("a socket was opened")
        socket.socket = NoSocket
        from chatsdk import ChatClient
        from chatsdk.testing import InMemoryTransport, set_testing
        memory = InMemoryTransport()
        with set_testing(True), ChatClient(memory.url, "k", transport=memory) as chat:
            memory.fail_next(2)
            m = chat.send_message("c", "hi")
            assert chat.list_messages("c")[0].id == m.id
        print(len(memory.attempts))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"


# -- the client over it --------------------------------------------------------------------


def test_every_client_call_is_answered(chat: ChatClient, memory: InMemoryTransport) -> None:
    message = chat.send_message("general", "hello", parent_id="p1")
    assert message.parent_id == "p1"
    edited = chat.edit_message(message.id, "edited")
    assert edited.text == "edited" and edited.updated_at is not None
    reaction = chat.add_reaction(message.id, "👍")
    assert reaction.reaction == "👍"
    assert [r["reaction"] for r in memory.reactions(message.id)] == ["👍"]
    chat.remove_reaction(message.id, "👍")
    assert memory.reactions(message.id) == []
    assert [m.id for m in chat.list_messages("general")] == [message.id]
    assert chat.health()
    chat.delete_message(message.id)
    assert chat.list_messages("general") == []
    assert memory.messages("general") == []
    assert len(memory.all_messages(include_deleted=True)) == 1


def test_a_503_then_success_is_retried_under_one_key(
    chat: ChatClient, memory: InMemoryTransport
) -> None:
    memory.fail_next(1, status=503, retry_after=1)
    message = chat.send_message("general", "hello")
    first, second = memory.attempts
    assert (first.status, first.fault) == (503, "fail")
    assert (second.status, second.fault) == (201, None)
    assert first.idempotency_key == second.idempotency_key is not None
    assert [s.message.id for s in memory.sent] == [message.id]


def test_retries_run_out_as_in_production(chat: ChatClient, memory: InMemoryTransport) -> None:
    memory.fail_next(5, status=502)
    with pytest.raises(ServerError) as caught:
        chat.send_message("general", "hello")
    assert caught.value.status == 502
    assert caught.value.attempts == 5
    assert memory.sent == []


def test_a_permanent_error_is_not_retried(chat: ChatClient, memory: InMemoryTransport) -> None:
    memory.fail_next(status=400)
    with pytest.raises(BadRequestError):
        chat.send_message("general", "hello")
    assert len(memory.attempts) == 1
    assert memory.counters()["status.400"] == 1


def test_rate_limit_with_retry_after(chat: ChatClient, memory: InMemoryTransport) -> None:
    memory.fail_next(5, status=429, retry_after="2")
    with pytest.raises(RateLimitedError) as caught:
        chat.send_message("general", "hello")
    assert caught.value.retry_after == 2.0


def test_drop_after_commits_and_the_retry_is_replayed(
    chat: ChatClient, memory: InMemoryTransport
) -> None:
    memory.drop_after_next()
    message = chat.send_message("general", "hello")
    assert message.replayed
    assert len(memory.sent) == 1
    assert [a.fault for a in memory.attempts] == ["drop_after", None]
    assert memory.attempts[0].status is None
    assert memory.counters()["replays"] == 1


def test_drop_after_without_a_key_is_not_resent(memory: InMemoryTransport) -> None:
    memory.drop_after_next()
    with set_testing(True), ChatSession(memory.url, "k", transport=memory) as session:
        with pytest.raises(ConnectError) as caught:
            session.post("api/messages", json=GOOD)
    assert caught.value.request_sent
    assert len(memory.all_messages()) == 1  # processed once; the SDK could not know


def test_a_refused_connection_is_resent_even_without_a_key(memory: InMemoryTransport) -> None:
    memory.fail_next(status=None)
    with set_testing(True), ChatSession(memory.url, "k", transport=memory) as session:
        response = session.post("api/messages", json=GOOD)
    assert response.status_code == 201
    assert [a.status for a in memory.attempts] == [None, 201]


def test_faults_run_in_the_order_scripted(chat: ChatClient, memory: InMemoryTransport) -> None:
    memory.fail_next(status=503)
    memory.drop_after_next()
    memory.fail_next(status=None)
    chat.send_message("general", "hello")
    assert [a.fault for a in memory.attempts] == ["fail", "drop_after", "fail", None]
    counters = memory.counters()
    assert counters["fault.fail"] == 2
    assert counters["fault.drop_after"] == 1
    memory.reset_counters()
    assert memory.counters()["requests"] == 0


def test_outage_refuses_until_it_ends(chat: ChatClient, memory: InMemoryTransport) -> None:
    with memory.outage() as outage:
        assert outage.active
        assert "active" in repr(outage)
        with pytest.raises(ConnectError):
            chat.edit_message("m", "x")
        with pytest.raises(CircuitBreakerOpenError):  # a second failing operation opens it
            chat.edit_message("m", "y")
    assert not outage.active
    assert "ended" in repr(outage)
    outage.end()  # idempotent
    # The refusals opened the client's circuit: as in production, it fails fast until the
    # breaker's timeout has passed on the SDK's clock.
    breaker = chat.session.breaker_for()
    assert breaker is not None
    with pytest.raises(CircuitBreakerOpenError):
        chat.send_message("general", "too early")
    advance(breaker.retry_after)
    assert chat.send_message("general", "back").text == "back"


def test_outage_with_a_status(chat: ChatClient, memory: InMemoryTransport) -> None:
    outage = memory.outage(status=503, retry_after=0.5)
    assert "503" in repr(outage)
    with pytest.raises(ServerError):
        chat.send_message("general", "hello")
    assert {a.status for a in memory.attempts} == {503}
    replaced = memory.outage()
    outage.end()  # ending a replaced outage leaves the new one on
    assert replaced.active
    memory.reset_faults()
    assert not replaced.active
    assert memory.counters()["fault.outage"] >= 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be"),
        ({"n": True}, "n must be"),
        ({"status": 200}, "status must be"),
        ({"status": True}, "status must be"),
        ({"retry_after": -1}, "retry_after must be"),
    ],
)
def test_fault_arguments_are_checked(
    memory: InMemoryTransport, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        memory.fail_next(**kwargs)  # type: ignore[arg-type]
    assert memory.attempts == []


def test_advance_needs_test_mode_and_a_positive_duration() -> None:
    with pytest.raises(RuntimeError, match="set_testing"):
        advance(1)
    with set_testing(True), pytest.raises(ValueError, match="seconds"):
        advance(-1)


def test_drop_after_and_outage_arguments_are_checked(memory: InMemoryTransport) -> None:
    with pytest.raises(ValueError, match="n must be"):
        memory.drop_after_next(0)
    with pytest.raises(ValueError, match="status must be"):
        memory.outage(status=302)
    with pytest.raises(ValueError, match="token_ttl"):
        InMemoryTransport(token_ttl=0)


# -- keys ----------------------------------------------------------------------------------


def test_any_key_by_default_but_never_none(memory: InMemoryTransport) -> None:
    with ChatSession(memory.url, transport=memory) as session:
        assert session.get("api/channels/c/messages").status_code == 401
        assert session.get("api/health").status_code == 200
        assert session.get("api/channels/c/messages", headers={"X-API-Key": "any"}).ok


def test_listed_and_forbidden_keys(memory: InMemoryTransport) -> None:
    strict = InMemoryTransport(api_keys=["good"], forbidden_keys=["banned"])
    with ChatSession(strict.url, transport=strict) as session:
        path = "api/channels/c/messages"
        assert session.get(path, headers={"X-API-Key": "good"}).status_code == 200
        assert session.get(path, headers={"X-API-Key": "other"}).status_code == 401
        assert session.get(path, headers={"X-API-Key": "banned"}).status_code == 403


# -- the sent log --------------------------------------------------------------------------


def test_sent_keeps_creates_in_order_with_their_keys(
    chat: ChatClient, memory: InMemoryTransport
) -> None:
    first = chat.send_message("general", "one", idempotency_key="order-1")
    reaction = chat.add_reaction(first.id, "🎉", idempotency_key="react-1")
    chat.add_reaction(first.id, "🎉")  # already there: 200, nothing created
    chat.send_message("general", "one", idempotency_key="order-1")  # replayed
    sent = memory.sent
    assert isinstance(sent, SentLog)
    assert [(s.kind, s.idempotency_key) for s in sent] == [
        ("message", "order-1"),
        ("reaction", "react-1"),
    ]
    assert sent[0].text == "one"
    assert sent[1].text is None
    assert sent.messages == [first]
    assert sent.reactions == [reaction]
    assert sent[:1] == [sent[0]]
    assert sent == list(sent)
    assert sent == memory.sent
    assert sent != 3
    assert "order-1" in repr(sent)
    with pytest.raises(TypeError, match="reaction"):
        _ = sent[1].message
    with pytest.raises(TypeError, match="message"):
        _ = sent[0].reaction
    sent.clear()
    assert len(sent) == 0
    assert len(memory.all_messages()) == 1  # the data stays


def test_sent_equality_with_records() -> None:
    one = Sent(kind="message", data={"text": "x"}, idempotency_key="k")
    assert one == Sent(kind="message", data={"text": "x"}, idempotency_key="k")


# -- a plain requests adapter ----------------------------------------------------------------


def test_mounted_on_a_plain_requests_session(memory: InMemoryTransport) -> None:
    with requests.Session() as http:
        http.mount("http://", memory)
        key = {"X-API-Key": "k"}
        created = http.post(f"{memory.url}/api/messages", json=GOOD, headers=key)
        assert created.status_code == 201
        assert created.reason == "Created"
        assert created.headers["Content-Type"] == "application/json; charset=utf-8"
        assert created.json()["text"] == "hello"
        assert created.connection is memory
        streamed = http.get(f"{memory.url}/api/channels/general/messages", headers=key, stream=True)
        assert b"".join(streamed.iter_content(7)).startswith(b'{"messages"')
        deleted = http.delete(f"{memory.url}/api/messages/{created.json()['id']}", headers=key)
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert "Content-Type" not in deleted.headers
        other = http.get(f"{memory.url}/elsewhere")
        assert other.status_code == 404
        assert other.text == "404: Not Found"


@pytest.mark.parametrize(
    "body",
    [
        '{"channelId": "c", "text": "str"}',
        io.BytesIO(b'{"channelId": "c", "text": "file"}'),
        io.StringIO('{"channelId": "c", "text": "text file"}'),
        iter([b'{"channelId": "c", ', '"text": "chunks"}']),
    ],
)
def test_every_kind_of_body(memory: InMemoryTransport, body: object) -> None:
    with requests.Session() as http:
        http.mount("http://", memory)
        response = http.post(f"{memory.url}/api/messages", data=body, headers={"X-API-Key": "k"})
    assert response.status_code == 201, response.text


def test_an_unreadable_body_is_a_type_error(memory: InMemoryTransport) -> None:
    request = requests.Request("POST", f"{memory.url}/api/messages").prepare()
    request.body = 42  # type: ignore[assignment]
    with pytest.raises(TypeError, match="int"):
        memory.send(request)


def test_bytes_header_values_and_unknown_statuses(memory: InMemoryTransport) -> None:
    request = requests.Request("GET", f"{memory.url}/api/health").prepare()
    request.headers["X-API-Key"] = b"k"  # type: ignore[assignment]
    assert memory.send(request).status_code == 200
    memory.fail_next(status=599)
    failed = memory.send(request)
    assert failed.status_code == 599
    assert failed.reason == ""
    assert failed.json()["error"]["code"] == "error"


def test_repr_ws_url_and_close(memory: InMemoryTransport) -> None:
    assert repr(memory) == "<InMemoryTransport http://chatsdk.invalid>"
    assert memory.ws_url == "ws://chatsdk.invalid/connection/websocket"
    memory.close()
    assert memory.all_messages() == []


# -- wiring --------------------------------------------------------------------------------


def test_session_and_transport_cannot_both_be_given(memory: InMemoryTransport) -> None:
    with ChatSession(memory.url, "k", transport=memory) as session:
        with pytest.raises(ConfigurationError, match="transport"):
            ChatClient(session=session, transport=memory)


def test_transport_from_setting() -> None:
    assert transport_from_setting(None) is None
    assert transport_from_setting("") is None
    assert transport_from_setting("http") is None
    assert isinstance(transport_from_setting("memory"), InMemoryTransport)
    mine = InMemoryTransport()
    assert transport_from_setting(mine) is mine
    with pytest.raises(ConfigurationError, match="'memroy'"):
        transport_from_setting("memroy")
    with pytest.raises(ConfigurationError):
        transport_from_setting(42)
