"""Bad input and key hygiene (issue 12, rows 4, 5, 6, 11, 12, 13).

Each test asserts the issue's "must be" column against :mod:`tests.hostile.input_servers`,
a recording server written for these tests (never the reference server).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

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
    assert not _leaks(repr(client)) and not _leaks(repr(client.session))
    values = _sqlite_values(path)
    assert values  # the entry is there, with its error columns
    for value in values:
        assert not _leaks(value if isinstance(value, (str, bytes)) else str(value))
    _assert_no_key_in_logs(caplog)
