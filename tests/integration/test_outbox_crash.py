"""The outbox across crashes and processes, against the reference server.

- ``kill -9`` of a process at 50 random points while it enqueues and drains 200 messages,
  restarting each time: every message reaches the server exactly once, in order per channel.
- Two processes draining one file at once: 1,000 messages, none twice.

Workers are forked from a small "zygote" subprocess that imported chatsdk once, so 51
restarts cost milliseconds each instead of an interpreter start-up each.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from chatsdk._outbox.outbox import Outbox
from chatsdk.testing import ReferenceServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

KEY = "test-key"
CHANNELS = 4
MESSAGES = 200

# Reads "run" lines; forks a worker per line that queues MESSAGES messages under
# deterministic keys (a restarted worker re-queues nothing twice) and flushes. Reports
# "pid N" at once and "exit N STATUS" once the worker is reaped; the worker reports its
# progress, "e ID" per entry queued and "s" per delivery, so kills land mid-work.
ZYGOTE = textwrap.dedent(
    """
    import os, sys
    from chatsdk._client import ChatClient

    url, path, channels, messages = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    deliver = ChatClient._deliver

    def reporting_deliver(self, op):
        response = deliver(self, op)
        os.write(1, b"s\\n")
        return response

    ChatClient._deliver = reporting_deliver

    def work():
        client = ChatClient(url, "test-key", outbox=path, close_timeout=0)
        for i in range(messages):
            entry = client.queue_message(f"ch{i % channels}", f"m{i}", idempotency_key=f"k-{i}")
            os.write(1, b"e %d\\n" % entry.id)
        ok = client.flush(60)
        os._exit(0 if ok else 3)

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                work()
            finally:
                os._exit(4)
        os.write(1, b"pid %d\\n" % pid)  # one write each: lines never interleave
        _, status = os.waitpid(pid, 0)
        os.write(1, b"exit %d %d\\n" % (pid, status))
    """
)

DRAINER = textwrap.dedent(
    """
    import sys
    from chatsdk._client import ChatClient
    from chatsdk._outbox.drainer import Drainer
    from chatsdk._outbox.outbox import Outbox

    url, path = sys.argv[1], sys.argv[2]
    client = ChatClient(url, "test-key")
    outbox = Outbox(path)
    sent = []

    def deliver(op):
        sent.append(op.idempotency_key)
        return client._deliver(op)

    drainer = Drainer(outbox, deliver, workers=4)
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start draining together
    drainer.start()
    ok = drainer.flush(120)
    drainer.stop(10)
    print("sent", len(sent), flush=True)
    sys.exit(0 if ok else 3)
    """
)


def child_env() -> dict[str, str]:
    """The environment without pytest-cov's subprocess hooks: forked workers that exit with
    os._exit would share (and corrupt) a coverage data file; the outbox modules are
    measured in-process anyway."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE_")}


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,)) as srv:
        yield srv


def readline(stream: IO[str]) -> list[str]:
    line = stream.readline()
    assert line, "the helper process died"
    return line.split()


def test_kill_9_at_50_random_points_delivers_each_message_once_in_order(
    server: ReferenceServer, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    rng = random.Random(20240606)
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, server.url, str(path), str(CHANNELS), str(MESSAGES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert zygote.stdin is not None and zygote.stdout is not None
    killed = 0
    newest = 0  # the highest entry id seen: a lower one is a re-queue, not progress
    try:
        for _ in range(51):
            # A kill point: after 1-6 new steps (queued or delivered) of this run; the worker
            # runs on while the signal is sent, so the exact point is random as well.
            kill_after = rng.randint(1, 6)
            zygote.stdin.write("run\n")
            zygote.stdin.flush()
            word, pid = readline(zygote.stdout)
            assert word == "pid"
            steps, sent_kill = 0, False
            while True:
                event = readline(zygote.stdout)
                if event[0] == "exit":
                    break
                if event[0] == "s" or (event[0] == "e" and int(event[1]) > newest):
                    newest = max(newest, int(event[1])) if event[0] == "e" else newest
                    steps += 1
                if steps >= kill_after and not sent_kill and killed < 50:
                    os.kill(int(pid), signal.SIGKILL)
                    sent_kill = True
                    killed += 1
            status = int(event[2])
            if not sent_kill:
                assert status == 0  # the run left alone drained everything
                break
            assert status in (0, signal.SIGKILL), status
    finally:
        zygote.stdin.close()
        zygote.wait(30)
        zygote.stdout.close()

    for c in range(CHANNELS):
        texts = [m["text"] for m in server.messages(f"ch{c}")]
        assert texts == [f"m{i}" for i in range(c, MESSAGES, CHANNELS)], f"ch{c}"
    assert len(server.all_messages()) == MESSAGES
    with Outbox(path) as box:
        stats = box.stats()
    assert (stats.sent, stats.pending, stats.failed, stats.expired) == (MESSAGES, 0, 0, 0)
    assert killed == 50


def test_two_processes_draining_one_file_send_each_message_once(
    server: ReferenceServer, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        for i in range(1000):
            channel = f"ch{i % 20}"
            box.enqueue(
                "message",
                channel,
                {"channelId": channel, "text": f"m{i}", "attachments": [], "parentId": None},
            )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRAINER, server.url, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(2)
    ]
    counts = []
    try:
        for proc in procs:
            assert proc.stdout is not None and readline(proc.stdout) == ["ready"]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            word, count = readline(proc.stdout)
            assert word == "sent"
            counts.append(int(count))
            assert proc.wait(60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:  # pragma: no cover - only when the test already failed
                proc.kill()
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    texts = [m["text"] for m in server.all_messages()]
    assert len(texts) == 1000 and len(set(texts)) == 1000
    assert server.counters()["replays"] == 0  # no entry was even sent twice
    assert sum(counts) == 1000 and min(counts) > 0, counts  # both processes took part
    for c in range(20):
        got = [int(m["text"][1:]) for m in server.messages(f"ch{c}")]
        assert got == sorted(got)
