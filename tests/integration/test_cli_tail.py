"""``chatsdk tail`` as a subprocess: every publication once, in order, across reconnects,
server restarts, realtime faults, and kills and restarts of tail itself (``--since-file``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsdk.testing import ReferenceServer
from tests.helpers import wait_until
from tests.integration.cli_helpers import KEY, chatsdk, config_env

WAIT = 20.0


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,)) as srv:
        yield srv


@pytest.fixture
def env(server: ReferenceServer, tmp_path: Path) -> dict[str, str]:
    return config_env(server.url, tmp_path)


_STARTED: list[Tail] = []


@pytest.fixture(autouse=True)
def _reap_tails() -> Iterator[None]:
    """A test that fails half-way leaves no tail process running."""
    yield
    while _STARTED:
        tail = _STARTED.pop()
        if not hasattr(tail, "_err"):
            tail.finish(signal.SIGKILL)


class Tail:
    """A running ``chatsdk tail``; its stdout lines are collected by a thread."""

    def __init__(self, *argv: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatsdk", "tail", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        _STARTED.append(self)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8").rstrip("\n"))

    def wait_lines(self, count: int) -> list[str]:
        assert wait_until(lambda: len(self.lines) >= count, WAIT), (self.lines, self.stderr())
        return self.lines

    def texts(self) -> list[str]:
        return [json.loads(line)["message"]["text"] for line in self.lines]

    def finish(self, sig: int | None = None) -> tuple[int, str]:
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(WAIT)
            assert self.proc.stdout is not None and self.proc.stderr is not None
            self.proc.stdout.close()
            self._err = self.proc.stderr.read().decode("utf-8")
            self.proc.stderr.close()
        assert KEY not in self._err and all(KEY not in line for line in self.lines)
        return code, self._err

    def stderr(self) -> str:
        """For assertion messages: stderr once finished."""
        return getattr(self, "_err", "(still running)")


def subscribed(server: ReferenceServer, count: int = 1) -> bool:
    return server.ws_stats()["subscribes_total"] >= count


def saved_offset(position: Path) -> int:
    offset: int = json.loads(position.read_text())["channels"]["ops"]["offset"]
    return offset


def message(channel: str, text: str, n: int) -> dict[str, object]:
    return {
        "type": "message.new",
        "message": {
            "id": f"msg_{n}",
            "channelId": channel,
            "text": text,
            "attachments": [],
            "parentId": None,
            "userId": "u1",
            "createdAt": "2024-05-01T12:00:00Z",
            "updatedAt": None,
        },
    }


def publish(server: ReferenceServer, channel: str, texts: list[str]) -> None:
    for i, text in enumerate(texts):
        server.publish(f"chat:{channel}", message(channel, text, i))


def test_json_lines_in_order_for_several_channels(
    server: ReferenceServer, env: dict[str, str]
) -> None:
    tail = Tail("ops", "deploys", "--json", "--count", "4", env=env)
    assert wait_until(lambda: subscribed(server, 2), WAIT), tail.stderr()
    # Through the REST API, as a user would post: the server publishes the events.
    assert chatsdk("send", "ops", "one", env=env).code == 0
    assert chatsdk("send", "deploys", "deploy 142 finished", env=env).code == 0
    assert chatsdk("send", "ops", "two", env=env).code == 0
    msg_id = server.messages("ops")[0]["id"]
    assert chatsdk("react", str(msg_id), "+1", env=env).code == 0
    code, err = tail.finish()
    assert code == 0, err
    events = [json.loads(line) for line in tail.lines]
    assert len(events) == 4
    ops = [e for e in events if e["channel"] == "ops"]
    assert [e["type"] for e in ops] == ["message.new", "message.new", "reaction.added"]
    assert [e["offset"] for e in ops] == [1, 2, 3]
    assert ops[0]["message"]["text"] == "one" and ops[2]["reaction"]["reaction"] == "+1"
    (deploy,) = [e for e in events if e["channel"] == "deploys"]
    assert deploy["message"]["text"] == "deploy 142 finished"


def test_text_output_for_people(server: ReferenceServer, env: dict[str, str]) -> None:
    tail = Tail("ops", "--count", "4", env=env)
    assert wait_until(lambda: subscribed(server), WAIT), tail.stderr()
    sent = json.loads(chatsdk("send", "ops", "hello", "--json", env=env).out)
    chatsdk("react", sent["id"], "👍", env=env)
    server.publish("chat:ops", {"type": "message.deleted", "message": {**sent, "text": "hello"}})
    server.publish("chat:ops", {"type": "custom", "n": 1})
    code, err = tail.finish()
    assert code == 0, err
    new, reaction, deleted, other = tail.lines
    assert new.endswith(f"ops  {sent['id']}  {sent['userId']}: hello")
    assert reaction.endswith(f"ops  {sent['id']}  {sent['userId']} reacted 👍")
    assert deleted.endswith("hello [deleted]")
    assert other == 'ops  {"type": "custom", "n": 1}'


def test_exactly_once_in_order_across_reconnects_restarts_and_faults(
    server: ReferenceServer, env: dict[str, str]
) -> None:
    server.set_realtime_faults(duplicate_rate=0.2, skip_rate=0.1, seed=5)
    tail = Tail("ops", "--json", "--count", "40", env=env)
    assert wait_until(lambda: subscribed(server), WAIT), tail.stderr()
    texts = [f"m{i:02}" for i in range(40)]
    publish(server, "ops", texts[:10])
    tail.wait_lines(5)
    server.disconnect_websockets(3001, "shutdown")  # the client reconnects and recovers
    publish(server, "ops", texts[10:20])
    server.stop()  # a crash: connections reset; what is published meanwhile goes to history
    publish(server, "ops", texts[20:30])
    server.start(keep_state=True)
    publish(server, "ops", texts[30:])
    code, err = tail.finish()
    assert code == 0, err
    assert tail.texts() == texts  # each once, in order
    assert "connection lost; reconnecting" in err and "connected again" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_since_file_across_a_signal_and_a_restart(
    server: ReferenceServer, env: dict[str, str], tmp_path: Path, sig: int
) -> None:
    position = tmp_path / "ops.pos"
    texts = [f"m{i:02}" for i in range(12)]
    first = Tail("ops", "--json", "--since-file", str(position), env=env)
    assert wait_until(lambda: subscribed(server), WAIT), first.stderr()
    publish(server, "ops", texts[:5])
    first.wait_lines(5)
    code, err = first.finish(sig)
    assert code == 0, err  # the signal saves the position and exits 0
    saved = json.loads(position.read_text())["channels"]["ops"]
    assert saved["offset"] == 5 and saved["epoch"]
    publish(server, "ops", texts[5:9])  # while no tail runs
    second = Tail("ops", "--json", "--since-file", str(position), "--count", "7", env=env)
    second.wait_lines(4)
    publish(server, "ops", texts[9:])
    code, err = second.finish()
    assert code == 0, err
    assert first.texts() + second.texts() == texts
    assert json.loads(position.read_text())["channels"]["ops"]["offset"] == 12


def test_since_file_across_kill_9_and_a_server_restart(
    server: ReferenceServer, env: dict[str, str], tmp_path: Path
) -> None:
    position = tmp_path / "ops.pos"
    texts = [f"m{i:02}" for i in range(9)]
    first = Tail("ops", "--json", "--since-file", str(position), env=env)
    # The start position is saved before anything is printed: a kill now loses nothing.
    assert wait_until(position.exists, WAIT), first.stderr()
    first.finish(signal.SIGKILL)
    publish(server, "ops", texts[:3])
    second = Tail("ops", "--json", "--since-file", str(position), env=env)
    second.wait_lines(3)
    # Killed once idle, i.e. once the last line's position is on disk. (A kill between
    # printing a line and saving it repeats that line at the next start: at least once.)
    assert wait_until(lambda: saved_offset(position) == 3, WAIT)
    second.finish(signal.SIGKILL)
    server.stop()
    publish(server, "ops", texts[3:6])
    server.start(keep_state=True)
    third = Tail("ops", "--json", "--since-file", str(position), "--count", "6", env=env)
    third.wait_lines(3)
    publish(server, "ops", texts[6:])
    code, err = third.finish()
    assert code == 0, err
    assert second.texts() + third.texts() == texts


def test_lost_history_is_reported_and_tail_goes_on(
    server: ReferenceServer, env: dict[str, str], tmp_path: Path
) -> None:
    position = tmp_path / "ops.pos"
    first = Tail("ops", "--json", "--since-file", str(position), "--count", "1", env=env)
    assert wait_until(lambda: subscribed(server), WAIT)
    publish(server, "ops", ["before"])
    assert first.finish()[0] == 0
    server.stop()
    server.start()  # a new epoch: the stream the position belongs to is gone
    second = Tail("ops", "--json", "--since-file", str(position), "--count", "1", env=env)
    assert wait_until(lambda: subscribed(server), WAIT), second.stderr()
    assert wait_until(lambda: saved_offset(position) == 0)
    publish(server, "ops", ["after"])
    code, err = second.finish()
    assert code == 0, err
    assert second.texts() == ["after"]
    assert "were missed and cannot be recovered" in err


def test_a_final_disconnect_exits_69(server: ReferenceServer, env: dict[str, str]) -> None:
    tail = Tail("ops", env=env)
    assert wait_until(lambda: subscribed(server), WAIT), tail.stderr()
    server.disconnect_websockets(3503, "force disconnect")  # final: no reconnect
    code, err = tail.finish()
    assert code == 69, err
    assert "realtime stopped" in err


def test_a_bad_since_file_exits_65(env: dict[str, str], tmp_path: Path) -> None:
    position = tmp_path / "bad.pos"
    position.write_text('{"not": "positions"}')
    result = chatsdk("tail", "ops", "--since-file", str(position), env=env)
    assert result.code == 65 and "not a chatsdk position file" in result.err
    position.write_text("{")
    result = chatsdk("tail", "ops", "--since-file", str(position), env=env)
    assert result.code == 65 and "unreadable" in result.err


def test_a_closed_pipe_ends_tail_quietly(server: ReferenceServer, env: dict[str, str]) -> None:
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsdk", "tail", "ops", "--json"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(write_end)
    try:
        assert wait_until(lambda: subscribed(server), WAIT)
        publish(server, "ops", ["one"])
        with os.fdopen(read_end, "rb") as reader:  # like `chatsdk tail ops | head -n 1`
            assert json.loads(reader.readline())["message"]["text"] == "one"
        publish(server, "ops", ["two", "three"])
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
