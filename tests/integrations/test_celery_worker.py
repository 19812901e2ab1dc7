"""A real Celery prefork worker on a Redis broker the test starts, with ``acks_late``.

200 tasks each create one message, with no idempotency key in the task code; 20 of them
SIGKILL their own pool process right after creating it, on their first run only. Celery
redelivers those (``task_reject_on_worker_lost``) to another pool process, which creates
the message again: the key derived from the task id and the create's position makes the
server answer from the first run. Half the tasks use ``get_client()``, half a ChatClient
of their own: the rule holds for any client inside a task. The control run (no
``setup(app)``) shows what a Celery user got before: a duplicate per redelivered task.
"""

from __future__ import annotations

import os
import signal
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from chatsdk.testing import ReferenceServer
from tests.processes import (
    Process,
    child_env,
    python,
    redis_server,
    require_module,
    until,
)

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="Celery prefork needs fork (POSIX)"),
    pytest.mark.slow,
]

TASKS_MODULE = textwrap.dedent(
    """
    import os, signal
    import celery
    import chatsdk
    from chatsdk.integrations import celery as chatsdk_celery

    app = celery.Celery("tasks", broker=os.environ["BROKER"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        chatsdk_url=os.environ["SERVER"],
        chatsdk_api_key="test-key",
        chatsdk_key_namespace="celery-test",
    )
    SETUP = os.environ["SETUP"] == "1"
    if SETUP:
        chatsdk_celery.setup(app)
    MARKS = os.environ["MARKS"]

    def first_run(n):
        try:
            os.close(os.open(os.path.join(MARKS, str(n)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    @app.task(name="tasks.notify")
    def notify(n, kill):
        with open(os.path.join(MARKS, "runs"), "a") as f:
            f.write(f"{n} {os.getpid()}\\n")
        if SETUP and n % 2 == 0:
            chatsdk_celery.get_client().send_message(f"ch{n % 4}", f"task-{n}")
        else:
            with chatsdk.ChatClient(os.environ["SERVER"], "test-key") as chat:
                chat.send_message(f"ch{n % 4}", f"task-{n}")
        if kill and first_run(n):
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def run_worker(tmp_path: Path, *, setup: bool, tasks: int, killed: set[int]) -> Counter[str]:
    require_module("celery")
    require_module("redis")
    import celery

    (tmp_path / "tasks.py").write_text(TASKS_MODULE)
    marks = tmp_path / "marks"
    marks.mkdir()
    with redis_server(tmp_path) as broker, ReferenceServer(api_keys=("test-key",)) as server:
        env = child_env(
            BROKER=broker,
            SERVER=server.url,
            SETUP="1" if setup else "0",
            MARKS=str(marks),
            PYTHONPATH=str(tmp_path),
        )
        worker = Process(
            python(
                "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork",
                "--concurrency", "4", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ),
            cwd=tmp_path,
            env=env,
        )  # fmt: skip
        sender = celery.Celery("tasks", broker=broker)
        try:
            worker.wait_for(r"ready\.")
            for n in range(tasks):
                sender.send_task("tasks.notify", args=[n, n in killed])
            runs = marks / "runs"

            def all_ran() -> bool:
                if not runs.exists():
                    return False
                counts = Counter(line.split()[0] for line in runs.read_text().splitlines())
                return len(counts) == tasks and all(counts[str(n)] >= 2 for n in killed)

            until(all_ran, 240, "every task to run, and every killed task to run again")
            assert worker.stop(signal.SIGTERM) == 0, worker.output
        finally:
            worker.kill()
            sender.close()
        assert worker.output.count("WorkerLostError") >= len(killed), worker.output
        return Counter(m["text"] for m in server.all_messages())


def test_200_tasks_20_killed_after_creating_their_message_every_message_once(
    tmp_path: Path,
) -> None:
    killed = set(range(3, 200, 10))
    assert len(killed) == 20
    texts = run_worker(tmp_path, setup=True, tasks=200, killed=killed)
    assert set(texts) == {f"task-{n}" for n in range(200)}
    assert {t: c for t, c in texts.items() if c != 1} == {}  # exactly once


def test_without_setup_a_redelivered_task_posts_its_message_again(tmp_path: Path) -> None:
    # The control: random keys, as a Celery user had them before this integration.
    killed = set(range(10))
    texts = run_worker(tmp_path, setup=False, tasks=10, killed=killed)
    assert all(texts[f"task-{n}"] == 2 for n in killed), texts
