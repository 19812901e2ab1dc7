"""Issue 12: every response shape (status x headers x body) ends in a value or a ChatSDKError.

One raw server answers each request with the response hypothesis drew; every public call of
the client is made against it. Nothing else may escape: no ``RecursionError``,
``UnicodeDecodeError``, ``KeyError``, bare ``requests`` or ``urllib3`` error.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsdk import ChatClient, ChatSDKError, ChatSession, RetryPolicy
from chatsdk.testing import InMemoryTransport
from tests.hostile import servers
from tests.hostile.servers import MESSAGE_JSON, RawHTTPServer

pytestmark = pytest.mark.timeout(600)

STATUSES = st.one_of(
    st.sampled_from(
        [
            101,
            200,
            201,
            202,
            204,
            206,
            301,
            302,
            304,
            307,
            400,
            401,
            403,
            404,
            408,
            409,
            413,
            422,
            429,
            500,
            502,
            503,
            504,
            599,
        ]
    ),
    st.integers(200, 599),
)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _error_body(code: Any, message: Any) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


BODIES = st.one_of(
    st.just(b""),
    st.just(MESSAGE_JSON),
    st.just(MESSAGE_JSON[:-7]),
    st.just(b"[" * 50_000),
    st.just(b'{"a":' * 20_000),
    st.binary(max_size=300),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.builds(
        _error_body,
        st.sampled_from(["idempotency_key_in_use", "idempotency_key_reused", "x", None, 5]),
        st.one_of(st.none(), st.text(max_size=30), st.integers()),
    ),
    st.just(json.dumps({"messages": [json.loads(MESSAGE_JSON)], "hasMore": False}).encode()),
    st.just(json.dumps({"status": "ok"}).encode()),
)

HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            ["application/json", "text/html", "application/json; charset=latin-1", "x/\x7f"]
        ),
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "zzz"]),
        "Retry-After": st.sampled_from(
            ["1", "0", "-5", "99999999", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT", "soon"]
        ),
        "Location": st.sampled_from(["/api/health", "http://127.0.0.1:9/x", "::::", ""]),
        "Idempotent-Replayed": st.sampled_from(["true", "false", "\x00"]),
    },
)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(STATUSES)
    headers = dict(draw(HEADERS))
    body = draw(BODIES)
    encoding = headers.get("Content-Encoding")
    if encoding == "gzip" and draw(st.booleans()):
        body = gzip.compress(body)  # sometimes really gzip, sometimes a lie
    elif encoding == "deflate" and draw(st.booleans()):
        body = zlib.compress(body)
    framing = draw(st.sampled_from(["length", "short", "close"]))
    if framing == "length":
        headers["Content-Length"] = str(len(body))
    elif framing == "short":  # promises more than it sends, then hangs up
        headers["Content-Length"] = str(len(body) + 10)
        headers["Connection"] = "close"
    else:
        headers["Connection"] = "close"
    return servers.head(status, headers) + body


CALLS = [
    lambda chat: chat.send_message("general", "hi"),
    lambda chat: chat.list_messages("general"),
    lambda chat: chat.edit_message("m1", "edited"),
    lambda chat: chat.delete_message("m1"),
    lambda chat: chat.add_reaction("m1", "thumbsup"),
    lambda chat: chat.remove_reaction("m1", "thumbsup"),
    lambda chat: chat.health(),
]


def test_every_response_shape_is_a_value_or_a_chatsdk_error() -> None:
    current: dict[str, bytes] = {}

    def handler(conn: socket.socket, request: servers.Request) -> None:
        conn.sendall(current["response"])
        if b"Content-Length" not in current["response"].split(b"\r\n\r\n")[0] or (
            b"Connection: close" in current["response"]
        ):
            conn.shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError  # end this connection (the server closes it)

    with RawHTTPServer(handler) as server:
        session = ChatSession(
            server.url,
            "k-hypothesis",
            retry=RetryPolicy(max_attempts=2, base_delay=0, deadline=10),
            timeout=(2, 2),
            breaker=False,
            sleep=lambda seconds: None,
        )
        chat = ChatClient(session=session, dedup_window=0)

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(response=responses(), call=st.sampled_from(CALLS))
        def check(response: bytes, call: Any) -> None:
            current["response"] = response
            with contextlib.suppress(ChatSDKError):
                call(chat)

        try:
            check()
        finally:
            chat.close()


def test_a_whole_response_over_the_limit_from_a_transport_is_refused() -> None:
    # A transport that builds whole responses (here the in-memory one) is held to the
    # same limit once its body is known.
    chat = ChatClient("http://chat.test", "k", transport=InMemoryTransport(), max_response_bytes=10)
    with pytest.raises(ChatSDKError, match="max_response_bytes"):
        chat.send_message("general", "hi")
    chat.close()
