"""Celery prefork with a Redis broker and ``acks_late``: a child SIGKILLed mid-task.

A module-level ChatClient with an outbox (made in the worker's main process, inherited by
every prefork child); each task queues one message under a key derived from the task's own
argument (``idempotency_key_for``). One task's child is killed with SIGKILL after it queued
its message; Celery redelivers the task (``acks_late``, ``task_reject_on_worker_lost``),
it runs again in another child and queues the same key again. Every task's message reaches
the server exactly once.

Redis: ``$CHATSDK_TEST_REDIS_URL``, or a redis-server started on a free port.
"""

from __future__ import annotations

import os
import signal
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsdk.testing import ReferenceServer
from tests.processes import Process, child_env, python, redis_server, require_module, until

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="Celery prefork needs fork (POSIX)"),
    pytest.mark.slow,
]

TASKS = 200
KILLED = 37  # the task whose child is killed mid-task

TASKS_MODULE = textwrap.dedent(
    """
    import logging, os, threading
    import celery
    import chatsdk

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    app = celery.Celery("tasks", broker=os.environ["BROKER"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    chat = chatsdk.ChatClient(os.environ["CHATSDK_URL"], "test-key", outbox=os.environ["OUTBOX"])
    MARK = os.environ["MARK"]
    KILLED = int(os.environ["KILLED"])

    @app.task(name="tasks.notify")
    def notify(n):
        key = chatsdk.idempotency_key_for("notify", n)
        chat.queue_message(f"ch{n % 4}", f"task-{n}", idempotency_key=key)
        if n == KILLED:
            with open(MARK + ".runs", "a") as f:
                f.write(f"{os.getpid()} ")
        if n == KILLED and not os.path.exists(MARK):
            with open(MARK + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(MARK + ".tmp", MARK)
            threading.Event().wait(120)  # SIGKILLed here by the test
    """
)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


def test_celery_prefork_child_sigkilled_mid_task_every_message_once(
    tmp_path: Path, redis_url: str
) -> None:
    require_module("celery")
    require_module("redis")
    import celery

    (tmp_path / "tasks.py").write_text(TASKS_MODULE)
    mark = tmp_path / "killed.pid"
    with ReferenceServer() as server:
        env = child_env(
            BROKER=redis_url,
            CHATSDK_URL=server.url,
            OUTBOX=str(tmp_path / "outbox.db"),
            MARK=str(mark),
            KILLED=str(KILLED),
            PYTHONPATH=str(tmp_path),
        )
        worker = Process(
            python(
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "4",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ),
            cwd=tmp_path,
            env=env,
        )
        client = celery.Celery("tasks", broker=redis_url)
        try:
            worker.wait_for(r"ready\.")
            for n in range(TASKS):
                client.send_task("tasks.notify", args=[n])
            until(mark.exists, 60, "the task to be killed to start")
            os.kill(int(mark.read_text()), signal.SIGKILL)
            until(lambda: len(server.all_messages()) >= TASKS, 120, "every task's message")
            runs = Path(f"{mark}.runs")
            until(lambda: len(runs.read_text().split()) == 2, 60, "the killed task's rerun")
            assert worker.stop(signal.SIGTERM) == 0, worker.output
        finally:
            worker.kill()
            client.close()
        texts = Counter(m["text"] for m in server.all_messages())
    assert set(texts) == {f"task-{n}" for n in range(TASKS)}
    assert [t for t, count in texts.items() if count != 1] == []  # exactly once
    # The killed task ran again (acks_late) in another child, and queued the same key again.
    killed_pid, rerun_pid = runs.read_text().split()
    assert killed_pid == mark.read_text() != rerun_pid
    assert "WorkerLostError" in worker.output
    assert "database is locked" not in worker.output
