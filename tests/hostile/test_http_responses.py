"""Issue 12, rows 1, 2, 3, 7, 8, 9: hostile HTTP responses, from purpose-made raw servers.

Time bounds are the hang itself (pytest-timeout fails a call that never returns); memory
bounds are the peak of what a client in a subprocess allocates during the call (tracemalloc).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import requests

import chatsdk
from chatsdk import (
    BadRequestError,
    ChatClient,
    ChatSession,
    ConfigurationError,
    InvalidResponseError,
    RetryPolicy,
    ServerError,
    TooManyRedirectsError,
    TransportTimeoutError,
)
from chatsdk._http import connection
from tests.hostile import servers
from tests.hostile.servers import MESSAGE_JSON, RawHTTPServer

pytestmark = pytest.mark.timeout(120)

KEY = "k-hostile-0123456789"
ONE_SHOT = RetryPolicy(max_attempts=1, deadline=None)


def client(url: str, **options: object) -> ChatClient:
    options.setdefault("retry", ONE_SHOT)
    return ChatClient(url, KEY, **options)  # type: ignore[arg-type]


# -- row 1: a body dribbled a byte at a time ---------------------------------------------


def test_dribbled_body_is_cut_at_the_deadline() -> None:
    # 1 byte per 0.2 s never trips the 10 s read timeout; 100,000 bytes would take 5.5 h.
    with RawHTTPServer(servers.dribble_body(0.2)) as server:
        chat = client(server.url, retry=RetryPolicy(deadline=2, max_attempts=3))
        with pytest.raises(TransportTimeoutError) as caught:
            chat.send_message("general", "hi")
        chat.close()
    assert isinstance(caught.value, requests.Timeout)
    assert caught.value.idempotency_key is not None
    assert server.client_hung_up.wait(10), "the client kept the dribbling connection open"


def test_dribbled_body_without_deadline_is_cut_at_three_read_timeouts() -> None:
    with RawHTTPServer(servers.dribble_body(0.1)) as server:
        chat = client(server.url, timeout=(2, 0.5))
        with pytest.raises(TransportTimeoutError):
            chat.send_message("general", "hi")
        chat.close()
    assert server.client_hung_up.wait(10)


def test_dribbled_headers_are_cut_at_the_deadline() -> None:
    with RawHTTPServer(servers.dribble_head(0.1)) as server:
        chat = client(server.url, retry=RetryPolicy(deadline=1.5, max_attempts=2))
        with pytest.raises(TransportTimeoutError):
            chat.list_messages("general")
        chat.close()


def test_a_slow_but_complete_body_within_the_limit_is_read() -> None:
    body = MESSAGE_JSON

    def slow(conn: object, request: servers.Request) -> None:
        head = servers.head(201, {"Content-Length": str(len(body))})
        conn.sendall(head + body[:10])  # type: ignore[attr-defined]
        servers.time.sleep(0.3)
        conn.sendall(body[10:])  # type: ignore[attr-defined]

    with RawHTTPServer(slow) as server:
        chat = client(server.url, retry=RetryPolicy(deadline=30))
        assert chat.send_message("general", "hi").id == "m1"
        chat.close()


# -- rows 2 and 3: bounded memory ----------------------------------------------------------

_PEAK = textwrap.dedent(
    """
    import json, sys, tracemalloc
    import chatsdk
    chat = chatsdk.ChatClient(sys.argv[1], "k-hostile-0123456789",
                              retry=chatsdk.RetryPolicy(max_attempts=1, deadline=None),
                              timeout=(5, 30))
    tracemalloc.start()
    try:
        chat.send_message("general", "hi")
        outcome = "returned"
        text = ""
    except Exception as exc:
        outcome = type(exc).__name__
        text = str(exc)
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"outcome": outcome, "text": text, "mb": peak / 2**20}))
    """
)


def peak_of_send(url: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, url], capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return servers.gzip_bomb(1024 * 1024 * 1024)


def test_gzip_bomb_is_refused_while_decoding(bomb: bytes) -> None:
    assert len(bomb) < 2 * 1024 * 1024
    handler = servers.stream_body(201, bomb, {"Content-Encoding": "gzip"})
    with RawHTTPServer(handler) as server:
        result = peak_of_send(server.url)
    assert result["outcome"] == "InvalidResponseError"
    assert f"max_response_bytes ({chatsdk.DEFAULT_MAX_RESPONSE_BYTES} bytes)" in str(result["text"])
    assert float(result["mb"]) < 50, result  # type: ignore[arg-type]


def test_100_mb_error_body_is_cut_and_still_classified() -> None:
    body = b"<html>" + b"x" * (100 * 1024 * 1024) + b"</html>"
    with RawHTTPServer(servers.stream_body(400, body, {"Content-Type": "text/html"})) as server:
        result = peak_of_send(server.url)
    assert result["outcome"] == "BadRequestError"
    assert "unexpected body from the server: <html>xxx" in str(result["text"])
    assert len(str(result["text"])) < 1000
    assert float(result["mb"]) < 50, result  # type: ignore[arg-type]


def test_error_status_body_over_the_limit_keeps_its_head_and_status() -> None:
    body = b'{"error": {"code": "unavailable", "message": "down"}, "pad": "' + b"x" * 5000 + b'"}'
    with RawHTTPServer(servers.stream_body(503, body)) as server:
        chat = client(server.url, max_response_bytes=1000)
        with pytest.raises(ServerError) as caught:
            chat.send_message("general", "hi")
        chat.close()
    assert caught.value.status == 503
    assert "unexpected body" in str(caught.value)  # the cut JSON no longer parses


def test_success_body_over_a_configured_limit_names_it() -> None:
    with RawHTTPServer(servers.respond(201, MESSAGE_JSON)) as server:
        chat = client(server.url, max_response_bytes=100)
        with pytest.raises(InvalidResponseError, match=r"max_response_bytes \(100 bytes\)"):
            chat.send_message("general", "hi")
        assert (
            client(server.url, max_response_bytes=len(MESSAGE_JSON))
            .send_message("general", "hi")
            .id
            == "m1"
        )
        chat.close()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_max_response_bytes_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_response_bytes"):
        ChatSession("http://127.0.0.1:9", KEY, max_response_bytes=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_response_bytes"):
        ChatClient("http://127.0.0.1:9", KEY, max_response_bytes=bad)  # type: ignore[arg-type]


# -- row 7: JSON nested too deeply ---------------------------------------------------------


def test_deeply_nested_success_body_is_an_invalid_response() -> None:
    with RawHTTPServer(servers.respond(201, b"[" * 100_000)) as server:
        chat = client(server.url)
        with pytest.raises(InvalidResponseError, match="nested too deeply"):
            chat.send_message("general", "hi")
        chat.close()


@pytest.mark.parametrize("status", [400, 409, 422])
def test_deeply_nested_error_body_keeps_its_status(status: int) -> None:
    with RawHTTPServer(servers.respond(status, b"[" * 100_000)) as server:
        chat = client(server.url)
        with pytest.raises(chatsdk.APIError) as caught:
            chat.send_message("general", "hi")
        chat.close()
    assert caught.value.status == status
    assert not isinstance(caught.value, InvalidResponseError)


def test_deeply_nested_health_body_is_unhealthy() -> None:
    with RawHTTPServer(servers.respond(200, b"[" * 100_000)) as server:
        chat = client(server.url)
        assert chat.health() is False
        chat.close()


# -- row 8: interim responses --------------------------------------------------------------


def test_early_hints_before_the_created_message_are_skipped() -> None:
    handler = servers.interim_then([103, 103], servers.respond(201, MESSAGE_JSON))
    with RawHTTPServer(handler) as server:
        chat = client(server.url)
        assert chat.send_message("general", "hi").id == "m1"
        assert chat.send_message("general", "again").id == "m1"  # the connection is reused
        chat.close()
    assert len(server.requests) == 2


def test_100_continue_and_102_processing_are_skipped() -> None:
    handler = servers.interim_then([100, 102, 103], servers.respond(201, MESSAGE_JSON))
    with RawHTTPServer(handler) as server:
        assert client(server.url).send_message("general", "hi").id == "m1"


def test_endless_interim_responses_are_a_transport_error() -> None:
    handler = servers.interim_then([103] * 40, servers.respond(201, MESSAGE_JSON))
    with RawHTTPServer(handler) as server:
        chat = client(server.url)
        with pytest.raises(chatsdk.TransportError, match="interim"):
            chat.send_message("general", "hi")
        chat.close()


def test_a_final_101_is_an_invalid_response_not_a_crash() -> None:
    with RawHTTPServer(servers.respond(101, b"")) as server:
        chat = client(server.url)
        with pytest.raises(InvalidResponseError):
            chat.send_message("general", "hi")
        chat.close()


def test_interim_responses_through_an_http_proxy() -> None:
    # The proxy's pools get the same connections (the "proxy" here is the server itself:
    # a plain-HTTP proxy request is an absolute-form request to it).
    handler = servers.interim_then([103], servers.respond(201, MESSAGE_JSON))
    with RawHTTPServer(handler) as server:
        session = ChatSession("http://chat.invalid", KEY, retry=ONE_SHOT)
        session.proxies = {"http": server.url}
        chat = ChatClient(session=session)
        assert chat.send_message("general", "hi").id == "m1"
        assert chat.send_message("general", "again").id == "m1"  # the cached proxy manager
        chat.close()
    assert server.requests[0].target.startswith("http://chat.invalid/")


def test_without_read_timeout_or_deadline_there_is_no_time_limit() -> None:
    handler = servers.interim_then([103], servers.respond(201, MESSAGE_JSON))
    with RawHTTPServer(handler) as server:
        chat = client(server.url, timeout=(2, None))
        assert chat.send_message("general", "hi").id == "m1"
        chat.close()


def test_a_read_after_the_deadline_fails_without_waiting() -> None:
    # The deadline can pass between two reads that each returned in time.
    left, right = socket.socketpair()
    with left, right:
        right.sendall(b"x")
        with connection.time_limit(-1.0):
            reader = connection._DeadlineReader(socket.SocketIO(left, "rb"), left, -1.0)
        with pytest.raises(TimeoutError, match="time limit"):
            reader.readinto(bytearray(1))
        reader.close()
        assert reader.closed


# -- row 9: a redirect loop ----------------------------------------------------------------


def test_redirect_loop_is_a_chatsdk_error_that_is_also_the_requests_error() -> None:
    with RawHTTPServer(servers.redirect_to_self()) as server:
        chat = client(server.url)
        with pytest.raises(TooManyRedirectsError) as caught:
            chat.list_messages("general")
        with pytest.raises(requests.TooManyRedirects):
            chat.list_messages("general")
        chat.close()
    assert isinstance(caught.value, chatsdk.ChatSDKError)
    assert KEY not in str(caught.value)
    assert caught.value.response is not None and caught.value.response.status_code == 302


def test_redirect_loop_on_a_create_keeps_its_key() -> None:
    with RawHTTPServer(servers.redirect_to_self()) as server:
        chat = client(server.url)
        with pytest.raises(TooManyRedirectsError) as caught:
            chat.send_message("general", "hi", idempotency_key="key-1")
        chat.close()
    assert caught.value.idempotency_key == "key-1"


def test_bad_request_body_excerpt_is_bounded() -> None:
    body = json.dumps({"detail": "y" * 10_000}).encode()
    with RawHTTPServer(servers.respond(400, body)) as server:
        chat = client(server.url)
        with pytest.raises(BadRequestError) as caught:
            chat.send_message("general", "hi")
        chat.close()
    assert len(str(caught.value)) < 400
