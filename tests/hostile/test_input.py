"""Bad input and key hygiene (issue 12, rows 4, 5, 6, 11, 12, 13).

Each test asserts the issue's "must be" column against :mod:`tests.hostile.input_servers`,
a recording server written for these tests (never the reference server).
"""

from __future__ import annotations

import json
import logging
import pickle
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

import chatsdk
from chatsdk import ChatClient, ChatSession, ConfigurationError, RetryPolicy
from tests.helpers import wait_until
from tests.hostile.input_servers import recording_server

#: A key distinctive enough that finding it anywhere means it leaked.
KEY = "s3cr3t-Key-7f9c2e"

ONE_ATTEMPT = RetryPolicy(max_attempts=1)


def _leaks(text: str | bytes) -> bool:
    """True when ``text`` holds the key's distinctive core (whatever surrounds it)."""
    core = KEY
    if isinstance(text, bytes):
        return core.encode() in text
    return core in text


def _sqlite_values(path: Path) -> list[Any]:
    """Every value of every row of every table of the SQLite file at ``path``."""
    values: list[Any] = []
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                values.extend(row)
    finally:
        db.close()
    return values


def _assert_no_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert not _leaks(record.getMessage()), record.getMessage()
        assert not _leaks(repr(vars(record))), record.name


# -- row 4: an API key that cannot be sent is refused at construction, never echoed ----------

BAD_KEYS = [
    pytest.param(KEY + "\n", id="trailing-newline"),
    pytest.param(KEY + "\r\n", id="trailing-crlf"),
    pytest.param(" " + KEY, id="leading-space"),
    pytest.param(KEY + "\t", id="trailing-tab"),
    pytest.param(KEY[:4] + " " + KEY[4:], id="inner-space"),
    pytest.param(KEY[:4] + "\n" + KEY[4:], id="inner-newline"),
    pytest.param(KEY + "\x00", id="nul"),
    pytest.param(KEY + "\x7f", id="del"),
    pytest.param(KEY + "\u00e9", id="non-ascii"),
    pytest.param(KEY + "\u2028", id="line-separator"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize("build", ["client", "session", "client-env"])
def test_row4_bad_key_is_refused_at_construction_without_echo(
    key: str,
    build: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if build == "client-env" and "\x00" in key:
        pytest.skip("an environment variable cannot hold NUL")
    caplog.set_level(logging.DEBUG)
    outbox = tmp_path / "outbox.db"
    with recording_server() as server:
        with pytest.raises(ConfigurationError) as info:
            if build == "client":
                ChatClient(server.url, key, outbox=outbox)
            elif build == "session":
                ChatSession(server.url, key)
            else:
                monkeypatch.setenv("CHATSDK_API_KEY", key)
                ChatClient(server.url, outbox=outbox)
        assert server.requests == []  # refused before any I/O
    error = info.value
    assert "api_key" in str(error)
    for text in (str(error), repr(error), repr(error.args)):
        assert not _leaks(text)
    assert not outbox.exists()  # nothing was built with it
    _assert_no_key_in_logs(caplog)


@pytest.mark.parametrize("key", ["", 123, b"s3cr3t-Key-7f9c2e", ["k"]])
def test_row4_empty_or_non_string_key_is_a_configuration_error(key: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        ChatClient("http://127.0.0.1:9", key)
    assert not _leaks(str(info.value))
    with pytest.raises(ConfigurationError) as info:
        ChatSession("http://127.0.0.1:9", key)
    assert not _leaks(str(info.value))


def test_row4_a_refused_key_leaves_no_trace_in_logs_errors_or_the_outbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed key the server refuses (401): sent, but never in any log, error or row."""
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "outbox.db"
    with recording_server(unauthorized=True) as server:
        client = ChatClient(server.url, KEY, retry=ONE_ATTEMPT, outbox=path, close_timeout=0)
        try:
            errors: list[BaseException] = []
            for call in (
                lambda: client.send_message("general", "hi"),
                lambda: client.add_reaction("m1", "ok"),
                lambda: client.edit_message("m1", "new text"),
                lambda: client.delete_message("m1"),
                lambda: client.list_messages("general"),
                lambda: client.remove_reaction("m1", "ok"),
            ):
                with pytest.raises(chatsdk.UnauthorizedError) as info:
                    call()
                errors.append(info.value)
            entry = client.queue_message("general", "queued")
            assert wait_until(lambda: client.outbox_auth_error is not None)
            errors.append(client.outbox_auth_error)  # type: ignore[arg-type]
            assert client.outbox is not None
            assert client.outbox.get(entry.id) is not None
        finally:
            client.close()
        # The key did go out, in the header only: the checks below would see a leak.
        assert all(r.header("X-API-Key") == KEY for r in server.requests)
    for error in errors:
        assert not _leaks(str(error))
        assert not _leaks(repr(error))
        assert not _leaks(pickle.dumps(error))
    assert not _leaks(repr(client)) and not _leaks(repr(client.session))
    values = _sqlite_values(path)
    assert values  # the entry is there, with its error columns
    for value in values:
        assert not _leaks(value if isinstance(value, (str, bytes)) else str(value))
    _assert_no_key_in_logs(caplog)


# -- row 5: a pickled error holds no key, and unpickles to the same error ---------------------


def _error(status: int, code: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": f"said the server ({code})"}}


REPLIES = [
    pytest.param((400, _error(400, "invalid_request"), {}), chatsdk.BadRequestError, id="400"),
    pytest.param((401, _error(401, "unauthorized"), {}), chatsdk.UnauthorizedError, id="401"),
    pytest.param((403, _error(403, "forbidden"), {}), chatsdk.ForbiddenError, id="403"),
    pytest.param((404, _error(404, "not_found"), {}), chatsdk.NotFoundError, id="404"),
    pytest.param(
        (409, _error(409, "idempotency_key_in_use"), {}),
        chatsdk.IdempotencyKeyInUseError,
        id="409",
    ),
    pytest.param(
        (413, _error(413, "payload_too_large"), {}), chatsdk.PayloadTooLargeError, id="413"
    ),
    pytest.param(
        (422, _error(422, "idempotency_key_reused"), {}),
        chatsdk.IdempotencyKeyReusedError,
        id="422",
    ),
    pytest.param(
        (429, _error(429, "rate_limited"), {"Retry-After": "3"}), chatsdk.RateLimitedError, id="429"
    ),
    pytest.param((500, _error(500, "internal"), {}), chatsdk.ServerError, id="500"),
    pytest.param((502, b"<html>bad gateway</html>", {}), chatsdk.ServerError, id="502-html"),
    pytest.param((201, b"not json", {}), chatsdk.InvalidResponseError, id="201-not-json"),
]


def _assert_pickles_clean(error: BaseException) -> BaseException:
    """Every pickle protocol: no key in the bytes, the same type, message and attributes back."""
    copy: BaseException | None = None
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(error, protocol=protocol)
        assert not _leaks(data), (type(error).__name__, protocol)
        copy = pickle.loads(data)
        assert type(copy) is type(error)
        assert str(copy) == str(error) and copy.args == error.args
        for name in ("attempts", "idempotency_key", "status", "code", "message", "retry_after"):
            assert getattr(copy, name, None) == getattr(error, name, None), name
    assert copy is not None
    return copy


@pytest.mark.parametrize(("reply", "expected"), REPLIES)
def test_row5_pickled_api_errors_hold_no_key(
    reply: tuple[int, object, dict[str, str]], expected: type[chatsdk.APIError]
) -> None:
    with (
        recording_server(reply=reply) as server,
        ChatClient(server.url, KEY, retry=ONE_ATTEMPT) as client,
    ):
        with pytest.raises(expected) as info:
            client.send_message("general", "hi", idempotency_key="key-1")
    error = info.value
    assert error.request is not None and error.request.headers["X-API-Key"] == KEY
    copy = _assert_pickles_clean(error)
    assert isinstance(copy, chatsdk.APIError)
    assert copy.request.headers["X-API-Key"] == "[redacted]"
    assert copy.request.headers["Idempotency-Key"] == "key-1"
    assert copy.request.method == "POST" and copy.request.url == error.request.url
    assert copy.response.status_code == reply[0]
    assert copy.response.request.headers["X-API-Key"] == "[redacted]"
    assert copy.response.content == error.response.content
    assert copy.body == error.body
    # The caller's own error is untouched: only the pickled copy is redacted.
    assert error.request.headers["X-API-Key"] == KEY


def test_row5_pickled_transport_errors_hold_no_key() -> None:
    errors: list[BaseException] = []
    with (
        recording_server(silent=True) as server,
        ChatClient(server.url, KEY, retry=ONE_ATTEMPT, timeout=(5, 0.2)) as client,
    ):
        with pytest.raises(chatsdk.TransportTimeoutError) as timeout:
            client.send_message("general", "hi")
        errors.append(timeout.value)
    with recording_server() as gone:
        url = gone.url  # closed when the block ends: the port now refuses
    with ChatClient(url, KEY, retry=ONE_ATTEMPT) as client:
        with pytest.raises(chatsdk.ConnectError) as refused:
            client.delete_message("m1")
        errors.append(refused.value)
    policy = chatsdk.BreakerPolicy(failure_threshold=1, window_size=1, failed_operations=1)
    with (
        recording_server(reply=(500, _error(500, "internal"), {})) as server,
        ChatClient(server.url, KEY, retry=ONE_ATTEMPT, breaker=policy) as client,
    ):
        with pytest.raises(chatsdk.ServerError):
            client.delete_message("m1")
        with pytest.raises(chatsdk.CircuitBreakerOpenError) as open_:
            client.delete_message("m1")
        errors.append(open_.value)
    for error in errors:
        copy = _assert_pickles_clean(error)
        assert isinstance(copy, chatsdk.TransportError)
        assert copy.request_sent == error.request_sent  # type: ignore[attr-defined]
        if error.request is not None:  # type: ignore[attr-defined]
            assert copy.request.headers["X-API-Key"] == "[redacted]"
    assert errors[0].request is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error",
    [
        chatsdk.ValidationError("text", "must not be empty"),
        chatsdk.ConfigurationError("no API key"),
        chatsdk.CircuitBreakerOpenError("rest:http://h:1", 2.5),
        chatsdk.IdempotencyKeyReusedError(422, "idempotency_key_reused", "in flight", body={}),
        chatsdk.OutboxCorruptError("/a", "/a.corrupt", "not a database"),
        chatsdk.OutboxFileError("/a", "foreign tables"),
        chatsdk.OutboxEntryExpiredError("too old"),
        chatsdk.RealtimeError("closed", code=3500),
        chatsdk.WaitTimeoutError("waited 1s"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_row5_every_error_unpickles_to_itself(error: chatsdk.ChatSDKError) -> None:
    error.attempts = 3
    copy = _assert_pickles_clean(error)
    assert vars(copy) == vars(error)


def test_row5_an_unknown_request_object_is_not_carried_into_the_pickle() -> None:
    error = chatsdk.TransportError("boom", request=object())
    copy = pickle.loads(pickle.dumps(error))
    assert copy.request is None and str(copy) == "boom"


# -- row 6: every id and channel reaches the server as one path segment -----------------------

#: value -> the segment the server must see (decoding it gives the value back).
SEGMENTS = {
    ".": "%2E",
    "..": "%2E%2E",
    "...": "...",
    "%2e": "%252e",
    "%2E": "%252E",
    ".%2E": ".%252E",
    "%2E.": "%252E.",
    "%2e%2e": "%252e%252e",
    ". ": ".%20",
    "..;": "..%3B",
    "\\..": "%5C..",
    ".?": ".%3F",
    "#..": "%23..",
    "m1": "m1",
}
#: channels allow only [A-Za-z0-9_.:-]: the dot forms among them.
CHANNELS = {".": "%2E", "..": "%2E%2E", "...": "...", "..:": "..%3A", ".-.": ".-."}


def _calls(value: str, segment: str) -> list[tuple[str, Any, str]]:
    """(name, call, the exact request-target) of every ChatClient method with a path id."""
    return [
        ("edit_message", lambda c: c.edit_message(value, "t"), f"PATCH /api/messages/{segment}"),
        ("delete_message", lambda c: c.delete_message(value), f"DELETE /api/messages/{segment}"),
        (
            "remove_reaction(id)",
            lambda c: c.remove_reaction(value, "ok"),
            f"DELETE /api/messages/{segment}/reactions/ok",
        ),
        (
            "remove_reaction(reaction)",
            lambda c: c.remove_reaction("m1", value),
            f"DELETE /api/messages/m1/reactions/{segment}",
        ),
        (
            "list_messages(before)",
            lambda c: c.list_messages("general", before=value),
            None,  # a query value, checked below
        ),
    ]


@pytest.mark.parametrize(("value", "segment"), SEGMENTS.items(), ids=repr)
def test_row6_ids_and_reactions_reach_the_server_as_one_segment(value: str, segment: str) -> None:
    with recording_server() as server, ChatClient(server.url, KEY, retry=ONE_ATTEMPT) as client:
        for name, call, target in _calls(value, segment):
            server.clear()
            call(client)
            (got,) = server.targets()
            if target is None:
                path, _, query = got.partition("?")
                assert path == "GET /api/channels/general/messages", name
                assert parse_qs(query)["before"] == [value], name
                continue
            assert got == target, name
            # The server's own reading: split the raw path, then decode each segment.
            segments = got.split(" ", 1)[1].split("/")
            assert segment in segments and unquote(segment) == value
            assert not {".", ".."} & set(segments)


@pytest.mark.parametrize(("channel", "segment"), CHANNELS.items(), ids=repr)
def test_row6_channels_reach_the_server_as_one_segment(channel: str, segment: str) -> None:
    with recording_server() as server, ChatClient(server.url, KEY, retry=ONE_ATTEMPT) as client:
        client.list_messages(channel)
        assert server.targets() == [f"GET /api/channels/{segment}/messages?limit=50"]
        server.clear()
        client.send_message(channel, "hi", parent_id="..")
        client.add_reaction("..", "..")
        assert server.targets() == ["POST /api/messages", "POST /api/reactions"]
        message, reaction = (json.loads(r.body) for r in server.requests)
        assert (message["channelId"], message["parentId"]) == (channel, "..")
        assert reaction == {"messageId": "..", "reaction": ".."}


@pytest.mark.parametrize("channel", ["%2e", "%2E%2E", "./..", "..%2F", "a/b"])
def test_row6_channels_outside_the_contract_are_refused_before_io(channel: str) -> None:
    with recording_server() as server, ChatClient(server.url, KEY, retry=ONE_ATTEMPT) as client:
        with pytest.raises(chatsdk.ValidationError, match="channelId"):
            client.list_messages(channel)
        with pytest.raises(chatsdk.ValidationError, match="channelId"):
            client.send_message(channel, "hi")
        assert server.requests == []


def test_row6_a_session_keeps_percent_encoded_dot_segments_encoded() -> None:
    """ChatSession itself: a caller's ``%2E%2E`` stays one segment; literal dots resolve."""
    with recording_server() as server, ChatSession(server.url, KEY, retry=ONE_ATTEMPT) as session:
        session.delete("api/messages/%2e%2E")
        session.delete("api/messages/x/%2E/reactions/%2E%2E")
        session.delete("api/messages/a/../m1")  # the caller's literal dots mean what URLs mean
        session.delete("/api/.well-known/x")
        assert server.targets() == [
            "DELETE /api/messages/%2E%2E",
            "DELETE /api/messages/x/%2E/reactions/%2E%2E",
            "DELETE /api/messages/m1",
            "DELETE /api/.well-known/x",
        ]
