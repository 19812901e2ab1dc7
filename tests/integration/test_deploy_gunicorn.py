"""gunicorn --preload with a module-level ChatClient: fork, backlog, SIGTERM, restart.

1,000 requests each call ``queue_message``; halfway the chat server goes down, so a backlog
builds; gunicorn gets SIGTERM (each worker's exit flushes for ``close_timeout`` and warns
of what is left); the chat server comes back and gunicorn is started again: its client
adopts the entries of the workers that exited and delivers them. 1,000/1,000, exactly
once, with sync workers and with gthread workers. The master's drainer runs while
gunicorn forks its workers (the at-fork hook at work).
"""

from __future__ import annotations

import http.client
import os
import signal
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chatsdk import Outbox
from chatsdk.testing import ReferenceServer
from tests.processes import Process, child_env, python, require_module, until

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork (POSIX)"),
    pytest.mark.slow,
]

REQUESTS = 1000

APP = textwrap.dedent(
    """
    import logging, os
    import chatsdk

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    # Module level, imported once by the master (--preload) and inherited by every worker.
    chat = chatsdk.ChatClient(os.environ["CHATSDK_URL"], "test-key", outbox=os.environ["OUTBOX"])

    def app(environ, start_response):
        n = int(environ["PATH_INFO"].strip("/"))
        chat.queue_message(f"ch{n % 8}", f"request-{n}", idempotency_key=f"request-{n}")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"queued"]
    """
)


def gunicorn(tmp_path: Path, url: str, worker_args: list[str]) -> tuple[Process, int]:
    env = child_env(CHATSDK_URL=url, OUTBOX=str(tmp_path / "outbox.db"), PYTHONPATH=str(tmp_path))
    proc = Process(
        python(
            "-m",
            "gunicorn",
            "--preload",
            "--bind",
            "127.0.0.1:0",
            "--graceful-timeout",
            "20",
            *worker_args,
            "app:app",
        ),
        cwd=tmp_path,
        env=env,
    )
    port = int(proc.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)").group(1))
    proc.wait_for(r"Booting worker")
    return proc, port


def get(port: int, n: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/{n}")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize(
    "worker_args",
    [
        pytest.param(["--worker-class", "sync", "--workers", "4"], id="sync"),
        pytest.param(
            ["--worker-class", "gthread", "--workers", "2", "--threads", "4"], id="gthread"
        ),
    ],
)
def test_gunicorn_preload_sigterm_with_backlog_then_restart(
    tmp_path: Path, worker_args: list[str]
) -> None:
    require_module("gunicorn")
    (tmp_path / "app.py").write_text(APP)
    server = ReferenceServer()
    server.start()
    first, port = gunicorn(tmp_path, server.url, worker_args)
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda n: get(port, n), range(REQUESTS // 2)))
            until(lambda: len(server.all_messages()) > 0, 30, "first deliveries")
            server.stop()  # the chat server goes down: a backlog builds on disk
            statuses += list(pool.map(lambda n: get(port, n), range(REQUESTS // 2, REQUESTS)))
        assert statuses == [200] * REQUESTS  # every request queued its message at once
        exit_status = first.stop(signal.SIGTERM)
    finally:
        first.kill()
    assert exit_status == 0, first.output
    with Outbox(tmp_path / "outbox.db") as box:
        backlog = box.pending_count()
    assert backlog > 0  # the flush at exit could not deliver: the server was down
    assert "not delivered yet" in first.output and str(tmp_path / "outbox.db") in first.output
    assert "database is locked" not in first.output

    server.start()  # back (same port, the messages it had are kept)
    second, _ = gunicorn(tmp_path, server.url, worker_args)
    try:
        # Delivered by the new processes without being asked: no request needs to come in.
        until(lambda: len(server.all_messages()) >= REQUESTS, 120, "the backlog's delivery")
        assert second.stop(signal.SIGTERM) == 0, second.output
    finally:
        second.kill()
        server.stop()
    texts = Counter(m["text"] for m in server.all_messages())
    assert set(texts) == {f"request-{n}" for n in range(REQUESTS)}
    assert [t for t, count in texts.items() if count != 1] == []  # exactly once
    assert "Traceback" not in first.output + second.output
