"""A one-shot script (cron) that queues and exits without close(), against the server.

Its entries are delivered at exit (the atexit flush, bounded by close_timeout); when the
host is down, a WARNING names the count and the file, the process still exits 0, and the
next run delivers the leftovers without being asked: none lost, none twice.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsdk.testing import ReferenceServer
from tests.processes import child_env

KEY = "test-key"


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,)) as srv:
        yield srv


CRON = textwrap.dedent(
    """
    import logging, sys
    import chatsdk

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    url, path, run = sys.argv[1], sys.argv[2], sys.argv[3]
    chat = chatsdk.ChatClient(url, "test-key", outbox=path)
    for i in range(50):
        chat.queue_message("cron", f"{run}-{i}", idempotency_key=f"{run}-{i}")
    # no close(): the script just ends
    """
)


def cron(server_url: str, path: Path, run: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CRON, server_url, str(path), run],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=child_env(),
    )


def test_a_script_that_never_closes_delivers_at_exit(
    server: ReferenceServer, tmp_path: Path
) -> None:
    done = cron(server.url, tmp_path / "o.db", "a")
    assert done.returncode == 0, done.stderr
    assert sorted(m["text"] for m in server.messages("cron")) == sorted(f"a-{i}" for i in range(50))
    assert "not delivered" not in done.stderr


def test_what_a_script_could_not_deliver_is_reported_and_the_next_run_delivers_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    down = ReferenceServer(api_keys=(KEY,))
    down.start()
    url = down.url
    down.stop()  # the host is down for the first run
    first = cron(url, path, "a")
    assert first.returncode == 0, first.stderr
    assert "50 entries queued by this process are not delivered yet" in first.stderr
    assert str(path) in first.stderr
    down.start()  # back, on the same port, for the next run
    try:
        second = cron(url, path, "b")
        assert second.returncode == 0, second.stderr
        texts = [m["text"] for m in down.messages("cron")]
        assert sorted(texts) == sorted(
            [f"a-{i}" for i in range(50)] + [f"b-{i}" for i in range(50)]
        )
        assert len(texts) == len(set(texts)) == 100  # none lost, none twice
    finally:
        down.stop()
