"""``chatsdk outbox status --json``: what a monitor alerts on, machine-readable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from chatsdk._errors import BadRequestError
from chatsdk._outbox.outbox import Outbox
from tests.integration.test_outbox_cli import body, run


def test_status_json_has_counts_oldest_pending_age_and_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "o.db"
    queued_at = time.time() - 90
    with Outbox(file, clock=lambda: queued_at) as box:
        box.enqueue("message", "a", body("a", "one"))
        box.enqueue("message", "b", body("b", "two"))
        (first, _second), _ = box.claim(2)
        box.fail(first, BadRequestError(400, "invalid_request", "text: too long"))
    assert run("--path", str(file), "status", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dead_letters"] == 1 and data["failed"] == 1
    assert data["pending"] == 1 and data["sending"] == 1
    assert 90 <= data["oldest_pending_age"] < 3600
    assert set(data) == {
        "queued",
        "sending",
        "sent",
        "failed",
        "expired",
        "pending",
        "dead_letters",
        "oldest_pending_age",
    }
    assert run("--path", str(file), "status") == 0
    assert "dead letters: 1" in capsys.readouterr().out


def test_status_json_of_an_empty_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "o.db"
    Outbox(file).close()
    assert run("--path", str(file), "status", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["oldest_pending_age"] is None and data["dead_letters"] == 0
