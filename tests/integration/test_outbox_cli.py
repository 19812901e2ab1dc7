"""``chatsdk outbox`` (chatsdk.cli.outbox) against real files and the reference server."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsdk._errors import BadRequestError
from chatsdk._outbox.outbox import Outbox
from chatsdk.cli import outbox as command
from chatsdk.testing import ReferenceServer

KEY = "test-key"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="chatsdk")
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["outbox", *argv])
    status: int = args.func(args)
    return status


def body(channel: str, text: str) -> dict[str, object]:
    return {"channelId": channel, "text": text, "attachments": [], "parentId": None}


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,)) as srv:
        yield srv


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = tmp_path / "o.db"
    with Outbox(file) as box:
        box.enqueue("message", "a", body("a", "one"))
        box.enqueue("message", "b", body("b", "two"))
        (first, second), _ = box.claim(2)
        box.fail(first, BadRequestError(400, "invalid_request", "text: too long"))
        box.release(second)
    return file


def test_status_and_list(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--path", str(path), "status") == 0
    out = capsys.readouterr().out
    assert "queued   1" in out and "failed   1" in out and "oldest pending:" in out
    assert run("--path", str(path), "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "HTTP 400 invalid_request: text: too long" in lines[1]
    assert run("--path", str(path), "list", "--status", "queued", "--limit", "5") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_retry_and_purge(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--path", str(path), "retry", "1") == 0
    assert "entry 1 queued again" in capsys.readouterr().out
    assert run("--path", str(path), "retry", "1") == 1  # queued now: not retryable
    assert "cannot retry" in capsys.readouterr().err
    assert run("--path", str(path), "purge", "--status", "failed", "--status", "sent") == 0
    assert "purged 0 entries" in capsys.readouterr().out


def test_missing_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(command.PATH_ENV, raising=False)
    assert run("status") == 2
    assert "--path" in capsys.readouterr().err
    assert run("--path", str(tmp_path / "nope.db"), "status") == 2
    assert "no such file" in capsys.readouterr().err


def test_drain_with_progress(
    path: Path,
    server: ReferenceServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATSDK_URL", server.url)
    monkeypatch.setenv("CHATSDK_API_KEY", KEY)
    assert run("--path", str(path), "drain", "--timeout", "20") == 0
    captured = capsys.readouterr()
    assert "draining [" in captured.err and "1/1" in captured.err
    assert "sent 1, failed 1, pending 0" in captured.out
    assert [m["text"] for m in server.messages("b")] == ["two"]


def test_drain_stops_on_a_refused_key_or_timeout(
    path: Path, server: ReferenceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--path", str(path), "drain", "--url", server.url)
    assert run(*args, "--api-key", "wrong") == 1
    assert "left undelivered" in capsys.readouterr().err
    server.outage(5.0)
    assert run(*args, "--api-key", KEY, "--timeout", "0.3") == 1
    assert "pending 1" in capsys.readouterr().out
