"""A parent with a busy drainer, and a thread still queueing, forks 300 times.

What gunicorn ``--preload``, Celery prefork and ``multiprocessing`` (fork) do to a process
holding a ChatClient. Every child's ``queue_message`` must return: each child arms a
generous ``alarm(10)``, which ends it with SIGALRM if it hangs (hang detection, not a timing
assertion). None may see "database is locked", and every entry of the parent and of the
children reaches the server exactly once. One child in ten also closes its client, which
starts (and stops) the child's own drainer, lazily, on first use (and must return).
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from chatsdk import ChatClient
from chatsdk.testing import ReferenceServer
from tests.helpers import wait_until

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    pytest.mark.slow,
    # A parent stuck inside os.fork() (the at-fork hook) cannot take a signal: the thread
    # method still ends the run, with every thread's stack.
    pytest.mark.timeout(300, method="thread"),
]

FORKS = 300
AT_ONCE = 6  # children alive at a time
HANG = 10  # seconds after which a child counts as hung


def child(chat: ChatClient, n: int, report: Path) -> None:  # pragma: no cover - in the child
    signal.alarm(HANG)  # default action: the child dies of SIGALRM, the parent sees it
    status = 1
    try:
        chat.queue_message(f"child{n % 4}", f"child-{n}")
        if n % 10 == 0:
            # Starts the child's own drainer; what it cannot deliver within close_timeout
            # stays for the parent, so the result is not this test's business.
            chat.close()
        status = 0
    except BaseException as exc:
        report.write_text(f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(status)


def test_300_forks_under_a_busy_drainer(tmp_path: Path) -> None:
    with ReferenceServer() as server:
        chat = ChatClient(server.url, "test-key", outbox=tmp_path / "o.db", close_timeout=5)
        stop = threading.Event()
        parent_texts: list[str] = []

        def keep_queueing() -> None:
            i = 0
            while not stop.is_set():
                text = f"parent-{i}"
                chat.queue_message(f"parent{i % 3}", text)
                parent_texts.append(text)
                i += 1
                stop.wait(0.002)

        queueing = threading.Thread(target=keep_queueing)
        queueing.start()
        assert wait_until(lambda: len(server.all_messages()) >= 20, 30)  # the drainer is busy
        running: dict[int, int] = {}
        statuses: dict[int, int] = {}
        for n in range(FORKS):
            while len(running) >= AT_ONCE:
                pid, status = os.wait()
                statuses[running.pop(pid)] = status
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                child(chat, n, tmp_path / f"child-{n}.err")
            running[pid] = n
        for pid, n in list(running.items()):
            _, status = os.waitpid(pid, 0)
            statuses[n] = status
        stop.set()
        queueing.join(30)

        hung = sorted(n for n, s in statuses.items() if os.WIFSIGNALED(s))
        errors = {p.name: p.read_text() for p in tmp_path.glob("child-*.err")}
        assert hung == [] and errors == {}
        assert [n for n, s in statuses.items() if os.waitstatus_to_exitcode(s) != 0] == []
        assert not any("locked" in e for e in errors.values())

        assert chat.flush(120)
        texts = Counter(m["text"] for m in server.all_messages())
        expected = set(parent_texts) | {f"child-{n}" for n in range(FORKS)}
        assert set(texts) == expected
        assert [t for t, count in texts.items() if count != 1] == []  # exactly once
        chat.close()
