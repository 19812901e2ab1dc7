"""Bad input and key hygiene (issue 12, rows 4, 5, 6, 11, 12, 13).

Each test asserts the issue's "must be" column against :mod:`tests.hostile.input_servers`,
a recording server written for these tests (never the reference server).
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

import chatsdk
from chatsdk import ChatClient, ChatSession, ConfigurationError, RetryPolicy
from chatsdk.integrations import _commands
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


# An environment variable cannot hold NUL: that key is tried through the arguments only.
BAD_KEY_BUILDS = [
    pytest.param(key.values[0], build, id=f"{build}-{key.id}")
    for build in ("client", "session", "client-env")
    for key in BAD_KEYS
    if not (build == "client-env" and "\x00" in key.values[0])
]


@pytest.mark.parametrize(("key", "build"), BAD_KEY_BUILDS)
def test_row4_bad_key_is_refused_at_construction_without_echo(
    key: str,
    build: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
    # The capture did see the request path's DEBUG records (urllib3's among them).
    assert any(r.name.startswith("urllib3") and r.levelno == logging.DEBUG for r in caplog.records)
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


# -- row 12: bad text, attachments and reactions: a ValidationError naming the field ----------

_GOOD = {"channel_id": "general", "text": "hi"}

BAD_MESSAGES = [
    pytest.param({"text": "hi \ud800"}, "text", id="text-lone-high-surrogate"),
    pytest.param({"text": "\udfff"}, "text", id="text-lone-low-surrogate"),
    pytest.param({"channel_id": "gen\ud800"}, "channelId", id="channel-surrogate"),
    pytest.param({"parent_id": "m\ud800"}, "parentId", id="parent-surrogate"),
    pytest.param({"attachments": None}, "attachments", id="attachments-None"),
    pytest.param({"attachments": 5}, "attachments", id="attachments-5"),
    pytest.param({"attachments": "file.png"}, "attachments", id="attachments-str"),
    pytest.param({"attachments": [5]}, "attachments[0]", id="attachment-int"),
    pytest.param({"attachments": ["file.png"]}, "attachments[0]", id="attachment-str"),
    pytest.param({"attachments": [None]}, "attachments[0]", id="attachment-None"),
    pytest.param(
        {"attachments": [{"type": "image", "url": 5}]}, "attachments[0].url", id="url-int"
    ),
    pytest.param(
        {"attachments": [{"type": "image", "url": "u\ud800"}]},
        "attachments[0].url",
        id="url-surrogate",
    ),
    pytest.param(
        {"attachments": [{"type": "i", "url": "u", "name": "\ud800"}]},
        "attachments[0].name",
        id="name-surrogate",
    ),
    pytest.param(
        {"attachments": [{"type": "i", "url": "u"}] * 11}, "attachments", id="eleven-attachments"
    ),
]


def _wire(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The wire body a caller of ``Outbox.enqueue`` would build from send_message's kwargs."""
    merged = {**_GOOD, "attachments": [], "parent_id": None, **kwargs}
    return {
        "channelId": merged["channel_id"],
        "text": merged["text"],
        "attachments": merged["attachments"],
        "parentId": merged["parent_id"],
    }


def _assert_refused_alike(field: str, **calls: Callable[[], object]) -> None:
    """Each call raises ValidationError naming ``field``, in the same words whichever way
    the bad value came in."""
    texts = []
    for name, call in calls.items():
        with pytest.raises(chatsdk.ValidationError) as info:
            call()
        assert info.value.field == field, name
        texts.append(str(info.value))
    assert len(set(texts)) == 1, texts


@pytest.mark.parametrize(("kwargs", "field"), BAD_MESSAGES)
def test_row12_bad_messages_are_refused_alike_before_io(
    kwargs: dict[str, Any], field: str, tmp_path: Path
) -> None:
    with (
        recording_server() as server,
        ChatClient(server.url, KEY, outbox=tmp_path / "o.db", close_timeout=0) as client,
    ):
        outbox = client.outbox
        assert outbox is not None
        _assert_refused_alike(
            field,
            send_message=lambda: client.send_message(**{**_GOOD, **kwargs}),
            queue_message=lambda: client.queue_message(**{**_GOOD, **kwargs}),
            enqueue=lambda: outbox.enqueue("message", "general", _wire(kwargs)),
        )
        assert outbox.pending_count() == 0
        assert server.requests == []


def test_row12_an_endless_attachments_iterable_is_refused_without_hanging() -> None:
    with recording_server() as server, ChatClient(server.url, KEY) as client:
        forever = itertools.repeat(chatsdk.Attachment(type="image", url="u"))
        with pytest.raises(chatsdk.ValidationError, match="at most 10") as info:
            client.send_message("general", "hi", attachments=forever)
        assert info.value.field == "attachments"
        assert server.requests == []


BAD_REACTIONS = [
    pytest.param("ok\x00", id="nul"),
    pytest.param("\r\n", id="crlf"),
    pytest.param("ok\r\nX-Evil: 1", id="header-injection"),
    pytest.param("ok\n", id="lf"),
    pytest.param("\tok", id="tab"),
    pytest.param("ok\x7f", id="del"),
    pytest.param("ok\x85", id="c1-next-line"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("   ", id="spaces"),
    pytest.param("\u3000", id="ideographic-space"),
    pytest.param("\ud83d", id="lone-surrogate"),
    pytest.param("\U0001f44d\udc4d", id="emoji-then-surrogate"),
    pytest.param("", id="empty"),
    pytest.param("x" * 65, id="too-long"),
    pytest.param(5, id="int"),
    pytest.param(None, id="None"),
]


@pytest.mark.parametrize("reaction", BAD_REACTIONS)
def test_row12_bad_reactions_are_refused_alike_before_io(reaction: Any, tmp_path: Path) -> None:
    with (
        recording_server() as server,
        ChatClient(server.url, KEY, outbox=tmp_path / "o.db", close_timeout=0) as client,
    ):
        outbox = client.outbox
        assert outbox is not None
        _assert_refused_alike(
            "reaction",
            add_reaction=lambda: client.add_reaction("m1", reaction),
            queue_reaction=lambda: client.queue_reaction("m1", reaction),
            remove_reaction=lambda: client.remove_reaction("m1", reaction),
            enqueue=lambda: outbox.enqueue(
                "reaction", "reaction/m1", {"messageId": "m1", "reaction": reaction}
            ),
        )
        with pytest.raises(chatsdk.ValidationError) as info:
            client.add_reaction("m\ud800", "ok")
        assert info.value.field == "messageId"
        assert outbox.pending_count() == 0
        assert server.requests == []


@pytest.mark.parametrize(
    "reaction",
    ["\U0001f44d", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "+1", "ok", " ok", "\u2764\ufe0f"],
)
def test_row12_real_reactions_still_go_through(reaction: str) -> None:
    with recording_server() as server, ChatClient(server.url, KEY) as client:
        client.add_reaction("m1", reaction)
        client.remove_reaction("m1", reaction)
        post, delete = server.requests
        assert json.loads(post.body)["reaction"] == reaction
        assert unquote(delete.target.rsplit("/", 1)[1]) == reaction


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channelId": "c", "text": "x", "extra": float("nan")}, "extra"),
        ({"channelId": "c", "text": "x", "meta": {"k": [float("inf")]}}, "meta.k[0]"),
        ({"channelId": "c", "text": "x", "meta": {"\ud800": 1}}, "meta (a key)"),
        ({"channelId": "c", "text": "x", "meta": object()}, "meta"),
        ({1: "x"}, "body (a key)"),
        (["not", "a", "mapping"], "body"),
    ],
)
def test_row12_outbox_enqueue_refuses_bodies_that_are_not_sendable_json(
    body: Any, field: str, tmp_path: Path
) -> None:
    with chatsdk.Outbox(tmp_path / "o.db") as outbox:
        with pytest.raises(chatsdk.ValidationError) as info:
            outbox.enqueue("message", "c", body)
        assert info.value.field == field
        assert outbox.pending_count() == 0
        # What the server judges (lengths, patterns) is still stored as given.
        outbox.enqueue("message", "c", {"channelId": "c", "text": "x" * 5000, "n": [1, 2.5, True]})
        assert outbox.pending_count() == 1


# -- row 13: an interrupt in the leader's thread stays there ----------------------------------


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_row13_followers_get_a_chatsdk_error_when_the_leader_is_interrupted(
    interrupt: type[BaseException],
) -> None:
    outcomes: dict[str, BaseException | None] = {}
    client: ChatClient | None = None

    def interrupting_sleep(_seconds: float) -> None:
        # The leader's retry sleep: once the follower waits on this call, "Ctrl-C" it.
        assert client is not None
        flight = client._dedup._flights["k1"]
        assert wait_until(lambda: flight.followers == 1, timeout=30)
        raise interrupt()

    def call(name: str) -> None:
        assert client is not None
        try:
            client.send_message("general", "hi", idempotency_key="k1")
        except BaseException as exc:  # what each thread got is the point
            outcomes[name] = exc
        else:
            outcomes[name] = None

    busy = (503, _error(503, "unavailable"), {})
    with recording_server(reply=busy) as server:
        retry = RetryPolicy(max_attempts=2, base_delay=0.01, deadline=None)
        session = ChatSession(server.url, KEY, retry=retry, sleep=interrupting_sleep)
        client = ChatClient(session=session)
        with client:
            leader = threading.Thread(target=call, args=("leader",))
            leader.start()
            assert wait_until(lambda: "k1" in client._dedup._flights, timeout=30)
            follower = threading.Thread(target=call, args=("follower",))
            follower.start()
            leader.join(30)
            follower.join(30)
            assert not leader.is_alive() and not follower.is_alive()
            assert client._dedup._flights == {}
        assert len(server.requests) == 1  # the follower never sent: it shared the call
    assert isinstance(outcomes["leader"], interrupt)
    error = outcomes["follower"]
    assert type(error) is chatsdk.ChatSDKError
    assert "interrupted" in str(error) and interrupt.__name__ in str(error)
    assert error.idempotency_key == "k1"
    assert error.__cause__ is None and error.__suppress_context__


def test_row13_an_ordinary_leader_error_is_still_shared() -> None:
    """The follower of a leader that failed normally gets that error, as before."""
    client: ChatClient | None = None

    def waiting_sleep(_seconds: float) -> None:
        assert client is not None
        flight = client._dedup._flights["k2"]
        assert wait_until(lambda: flight.followers == 1, timeout=30)

    errors: dict[str, BaseException] = {}

    def call(name: str) -> None:
        assert client is not None
        try:
            client.send_message("general", "hi", idempotency_key="k2")
        except chatsdk.ChatSDKError as exc:
            errors[name] = exc

    with recording_server(reply=(503, _error(503, "unavailable"), {})) as server:
        retry = RetryPolicy(max_attempts=2, base_delay=0.01, deadline=None)
        session = ChatSession(server.url, KEY, retry=retry, sleep=waiting_sleep)
        with ChatClient(session=session) as client:
            leader = threading.Thread(target=call, args=("leader",))
            leader.start()
            assert wait_until(lambda: "k2" in client._dedup._flights, timeout=30)
            follower = threading.Thread(target=call, args=("follower",))
            follower.start()
            leader.join(30)
            follower.join(30)
    assert isinstance(errors["leader"], chatsdk.ServerError)
    assert errors["follower"] is errors["leader"]


# -- row 11: NaN, negative (and where None is not "no limit", infinite) durations -------------

NAN, INF = float("nan"), float("inf")
_WS = "ws://127.0.0.1:9/connection/websocket"

#: (name, call with the duration, None means "no limit" there): every public duration.
CONSTRUCTOR_DURATIONS: list[tuple[str, Any, bool]] = [
    ("ChatClient(timeout)", lambda v: ChatClient("http://127.0.0.1:9", KEY, timeout=v), True),
    (
        "ChatClient(timeout=(v, 5))",
        lambda v: ChatClient("http://127.0.0.1:9", KEY, timeout=(v, 5)),
        True,
    ),
    (
        "ChatClient(timeout=(5, v))",
        lambda v: ChatClient("http://127.0.0.1:9", KEY, timeout=(5, v)),
        True,
    ),
    ("ChatSession(timeout)", lambda v: ChatSession("http://127.0.0.1:9", KEY, timeout=v), True),
    (
        "ChatClient(close_timeout)",
        lambda v: ChatClient("http://127.0.0.1:9", KEY, close_timeout=v),
        False,
    ),
    (
        "ChatClient(dedup_window)",
        lambda v: ChatClient("http://127.0.0.1:9", KEY, dedup_window=v),
        False,
    ),
    ("RetryPolicy(deadline)", lambda v: RetryPolicy(deadline=v), True),
    ("RetryPolicy(base_delay)", lambda v: RetryPolicy(base_delay=v), False),
    ("RetryPolicy(max_delay)", lambda v: RetryPolicy(max_delay=v), False),
    ("RetryPolicy(max_retry_after)", lambda v: RetryPolicy(max_retry_after=v), False),
    ("BreakerPolicy(window)", lambda v: chatsdk.BreakerPolicy(window=v), False),
    (
        "BreakerPolicy(recovery_timeout)",
        lambda v: chatsdk.BreakerPolicy(recovery_timeout=v),
        False,
    ),
    ("CircuitBreaker(window)", lambda v: chatsdk.CircuitBreaker("b", window=v), False),
    (
        "CircuitBreaker(recovery_timeout)",
        lambda v: chatsdk.CircuitBreaker("b", recovery_timeout=v),
        False,
    ),
    ("RealtimeClient(timeout)", lambda v: chatsdk.RealtimeClient(_WS, timeout=v), False),
    ("RealtimeClient(ping_grace)", lambda v: chatsdk.RealtimeClient(_WS, ping_grace=v), False),
    (
        "RealtimeClient(min_reconnect_delay)",
        lambda v: chatsdk.RealtimeClient(_WS, min_reconnect_delay=v),
        False,
    ),
    (
        "RealtimeClient(max_reconnect_delay)",
        lambda v: chatsdk.RealtimeClient(_WS, max_reconnect_delay=v),
        False,
    ),
    (
        "RealtimeClient(restart_spread)",
        lambda v: chatsdk.RealtimeClient(_WS, restart_spread=v),
        False,
    ),
    (
        "RealtimeClient(stable_after)",
        lambda v: chatsdk.RealtimeClient(_WS, stable_after=v),
        False,
    ),
]


@pytest.mark.parametrize(
    ("build", "no_limit"),
    [pytest.param(b, n, id=name) for name, b, n in CONSTRUCTOR_DURATIONS],
)
@pytest.mark.parametrize("value", [NAN, -1.0, -INF, INF, 0.0], ids=repr)
def test_row11_constructor_durations_are_checked(build: Any, no_limit: bool, value: float) -> None:
    built: Any = None
    try:
        if value != value or value < 0 or (value == INF and not no_limit):
            with pytest.raises(ValueError):
                built = build(value)
        else:
            try:
                built = build(value)  # 0 is refused only where it cannot work (checked below)
            except ValueError as exc:
                assert value == 0, exc
    finally:
        if built is not None and hasattr(built, "close"):
            built.close()


@pytest.mark.parametrize("value", [NAN, -1.0, -INF], ids=repr)
def test_row11_wait_durations_refuse_nan_and_negative_at_the_call(
    value: float, tmp_path: Path
) -> None:
    with recording_server() as server:
        client = ChatClient(server.url, KEY, outbox=tmp_path / "o.db", close_timeout=5)
        realtime = chatsdk.RealtimeClient(_WS)
        try:
            entry = client.queue_message("general", "hi")
            outbox = client.outbox
            assert outbox is not None
            subscription = realtime.subscribe("chat:general", lambda _pub: None)
            calls = {
                "ChatClient.flush": lambda: client.flush(value),
                "ChatClient.stop_draining": lambda: client.stop_draining(value),
                "Outbox.wait": lambda: outbox.wait(entry.id, value),
                "Outbox.wait_idle": lambda: outbox.wait_idle(value),
                "OutboxEntry.wait": lambda: entry.wait(value),
                "ChatSession.request": lambda: client.session.get("api/health", timeout=value),
                "ChatSession.request(pair)": lambda: client.session.get(
                    "api/health", timeout=(5, value)
                ),
                "ChatSession.request(positional)": lambda: client.session.request(
                    "GET", "api/health", None, None, None, None, None, None, value
                ),
                "RealtimeClient.wait_connected": lambda: realtime.wait_connected(value),
                "Subscription.wait_subscribed": lambda: subscription.wait_subscribed(value),
            }
            for name, call in calls.items():
                with pytest.raises(ValueError, match="timeout"):
                    call()
                assert name  # (named for the failure message)
            assert all(r.target.startswith("POST /api/messages") for r in server.requests)
        finally:
            realtime.close()
            client.close()


def test_row11_infinity_means_no_limit_where_none_does(tmp_path: Path) -> None:
    assert RetryPolicy(deadline=INF).deadline is None
    with recording_server() as server:
        session = ChatSession(server.url, KEY, timeout=INF)
        assert session.timeout == (None, None)
        assert session.get("api/channels/c/messages", timeout=(INF, 5)).status_code == 200
        assert session.get("api/channels/c/messages").status_code == 200
        positional = session.request("GET", "api/channels/c/messages", *[None] * 6, INF)
        assert positional.status_code == 200
        session.close()
        with ChatClient(
            server.url, KEY, outbox=tmp_path / "o.db", retry=RetryPolicy(deadline=INF)
        ) as client:
            entry = client.queue_message("general", "hi")
            assert entry.wait(INF).id == "m1"
            assert client.outbox is not None
            assert client.outbox.wait(entry.id, INF).id == "m1"
            assert client.flush(INF)
            assert client.outbox.wait_idle(INF)
            assert client.list_messages("general") == []
            assert client.stop_draining(INF)
    realtime = chatsdk.RealtimeClient(_WS)
    try:
        assert realtime.wait_connected(INF) is False  # not started: answers at once
    finally:
        realtime.close()


def test_row11_a_duration_that_is_not_a_number_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="close_timeout"):
        ChatClient("http://127.0.0.1:9", KEY, close_timeout="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout"):
        ChatClient("http://127.0.0.1:9", KEY, timeout=True)
    with pytest.raises(ValueError, match="pair"):
        ChatSession("http://127.0.0.1:9", KEY, timeout=(1, 2, 3))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [NAN, -5.0], ids=repr)
def test_row11_drain_and_status_commands_refuse_nan_and_negative(value: float) -> None:
    """The Django/Flask commands pass ``--timeout``/``--max-age`` floats straight through."""
    errors: list[str] = []

    def never() -> Any:
        raise AssertionError("nothing is opened for a bad argument")

    code = _commands.drain(
        never, never, once=True, timeout=value, out=errors.append, err=errors.append
    )
    assert code == 2 and "--timeout" in errors[-1]
    code = _commands.status(never, max_age=value, out=errors.append, err=errors.append)
    assert code == 2 and "--max-age" in errors[-1]
