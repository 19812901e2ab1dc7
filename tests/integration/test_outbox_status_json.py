"""``chatsdk outbox status --json``: what a monitor alerts on, machine-readable."""

from __future__ import annotations

import json
import time
from pathlib import Path

from chatsdk._errors import BadRequestError
from chatsdk._outbox.outbox import Outbox
from tests.integration.cli_helpers import base_env, chatsdk
from tests.integration.test_outbox_cli import body

FIELDS = {
    "queued",
    "sending",
    "sent",
    "failed",
    "expired",
    "pending",
    "dead_letters",
    "oldest_pending_age",
}


def test_status_json_has_counts_oldest_pending_age_and_dead_letters(tmp_path: Path) -> None:
    file = tmp_path / "o.db"
    queued_at = time.time() - 90
    with Outbox(file, clock=lambda: queued_at) as box:
        box.enqueue("message", "a", body("a", "one"))
        box.enqueue("message", "b", body("b", "two"))
        (first, _second), _ = box.claim(2)
        box.fail(first, BadRequestError(400, "invalid_request", "text: too long"))
    result = chatsdk("outbox", "--path", str(file), "status", "--json", env=base_env())
    assert result.code == 65, result  # dead letters: the monitor's alarm
    data = json.loads(result.out)
    assert set(data) == FIELDS
    assert data["dead_letters"] == 1 and data["failed"] == 1
    assert data["pending"] == 1 and data["sending"] == 1
    assert 90 <= data["oldest_pending_age"] < 3600


def test_status_json_of_an_empty_outbox(tmp_path: Path) -> None:
    file = tmp_path / "o.db"
    Outbox(file).close()
    result = chatsdk("outbox", "--path", str(file), "status", "--json", env=base_env())
    assert result.code == 0, result
    data = json.loads(result.out)
    assert set(data) == FIELDS
    assert data["oldest_pending_age"] is None and data["dead_letters"] == 0
