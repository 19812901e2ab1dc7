"""``chatsdk send|react|history|health`` as subprocesses against the reference server.

Exit codes are the contract a script branches on: each case of issue 15 is run here, for
every command it applies to. Every run also checks that the key is in no output
(:func:`tests.integration.cli_helpers.chatsdk`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsdk import Outbox, idempotency_key_for
from chatsdk.testing import FaultPlan, ReferenceServer
from tests.integration.cli_helpers import (
    FORBIDDEN_KEY,
    KEY,
    base_env,
    chatsdk,
    config_env,
)

#: One argv per client command, each a valid call once configured.
COMMANDS = {
    "send": ["send", "ops", "hello"],
    "react": ["react", "msg_missing", "+1"],
    "history": ["history", "ops"],
    "tail": ["tail", "ops", "--count", "1"],
    "health": ["health"],
    "outbox drain": ["outbox", "drain", "--timeout", "5"],
}


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(api_keys=(KEY,), forbidden_keys=(FORBIDDEN_KEY,)) as srv:
        yield srv


@pytest.fixture
def env(server: ReferenceServer, tmp_path: Path) -> dict[str, str]:
    return config_env(server.url, tmp_path)


def one_message(server: ReferenceServer, channel: str = "ops") -> dict[str, object]:
    messages = server.messages(channel)
    assert len(messages) == 1, messages
    return messages[0]


# -- 0: done, text and JSON ------------------------------------------------------------------


def test_send_prints_the_message_for_people_and_as_json(
    server: ReferenceServer, env: dict[str, str]
) -> None:
    text = chatsdk("send", "ops", "backup finished", env=env)
    assert text.code == 0, text.err
    stored = one_message(server)
    (line,) = text.lines
    assert f"  ops  {stored['id']}  " in line and line.endswith(": backup finished")
    assert "{" not in line  # no JSON noise for people
    assert text.err == ""
    as_json = chatsdk("send", "ops", "second", "--json", env=env)
    assert as_json.code == 0
    (obj_line,) = as_json.lines
    data = json.loads(obj_line)
    assert data["text"] == "second" and data["channelId"] == "ops" and data["replayed"] is False


def test_send_reply_and_attachments(server: ReferenceServer, env: dict[str, str]) -> None:
    parent = json.loads(chatsdk("send", "ops", "parent", "--json", env=env).out)
    result = chatsdk(
        "send",
        "ops",
        "child",
        "--reply-to",
        parent["id"],
        "--attachment",
        "image",
        "https://x.test/a.png",
        "a.png",
        "--attachment",
        "file",
        "https://x.test/b",
        "--json",
        env=env,
    )
    assert result.code == 0, result.err
    child = json.loads(result.out)
    assert child["parentId"] == parent["id"]
    assert child["attachments"] == [
        {"type": "image", "url": "https://x.test/a.png", "name": "a.png"},
        {"type": "file", "url": "https://x.test/b", "name": None},
    ]


def test_key_from_run_twice_posts_one_message(server: ReferenceServer, env: dict[str, str]) -> None:
    argv = ("send", "ops", "backup of 2024-05-01 finished", "--key-from", "nightly", "2024-05-01")
    first = chatsdk(*argv, "--json", env=env)
    second = chatsdk(*argv, "--json", env=env)
    assert (first.code, second.code) == (0, 0), (first.err, second.err)
    stored = one_message(server)
    a, b = json.loads(first.out), json.loads(second.out)
    assert a["id"] == b["id"] == stored["id"]
    assert (a["replayed"], b["replayed"]) == (False, True)
    assert "replayed" in chatsdk(*argv, env=env).out  # text output says so too
    assert len(server.messages("ops")) == 1
    assert server.counters()["creates"] == 1
    # The key is the library's: a Python job with the same parts shares it.
    assert idempotency_key_for("nightly", "2024-05-01").startswith("chatsdk-")


def test_explicit_key_twice_posts_once(server: ReferenceServer, env: dict[str, str]) -> None:
    for _ in range(2):
        assert chatsdk("send", "ops", "once", "--key", "deploy-142", env=env).code == 0
    one_message(server)


def test_every_command_under_faults_does_its_job_once(
    server: ReferenceServer, env: dict[str, str]
) -> None:
    server.faults = FaultPlan(
        server_error=0.1, drop_before=0.05, drop_after=0.1, rate_limit=0.05, retry_after=0, seed=11
    )
    for i in range(4):
        result = chatsdk("send", "ops", f"m{i}", env=env)
        assert result.code == 0, result.err
    assert sorted(m["text"] for m in server.messages("ops")) == ["m0", "m1", "m2", "m3"]
    first = str(server.messages("ops")[0]["id"])
    assert chatsdk("react", first, "+1", env=env).code == 0
    assert len(server.reactions(first)) == 1
    history = chatsdk("history", "ops", "--json", env=env)
    assert history.code == 0, history.err
    assert len(history.lines) == 4
    assert chatsdk("health", env=env).code == 0  # the health check is not faulted
    for i in range(3):
        assert chatsdk("send", "later", f"q{i}", "--queue", env=env).code == 0
    drained = chatsdk("outbox", "drain", "--timeout", "60", env=env)
    assert drained.code == 0, drained.err
    assert [m["text"] for m in server.messages("later")] == ["q0", "q1", "q2"]
    counters = server.counters()
    # The plan did inject faults (which kinds depends on how the processes' requests land).
    assert sum(v for k, v in counters.items() if k.startswith("fault.")) > 0


def test_history_text_and_json_oldest_first(server: ReferenceServer, env: dict[str, str]) -> None:
    for text in ("one", "two", "three"):
        assert chatsdk("send", "ops", text, env=env).code == 0
    plain = chatsdk("history", "ops", env=env)
    assert plain.code == 0
    assert [line.rsplit(": ", 1)[1] for line in plain.lines] == ["one", "two", "three"]
    limited = chatsdk("history", "ops", "--limit", "2", "--json", env=env)
    rows = [json.loads(line) for line in limited.lines]
    assert [r["text"] for r in rows] == ["two", "three"]
    older = chatsdk("history", "ops", "--before", rows[0]["id"], "--json", env=env)
    assert [json.loads(line)["text"] for line in older.lines] == ["one"]
    assert chatsdk("history", "empty", env=env).out == ""


def test_react_text_and_json(server: ReferenceServer, env: dict[str, str]) -> None:
    message = json.loads(chatsdk("send", "ops", "ship it", "--json", env=env).out)
    text = chatsdk("react", message["id"], "🚀", env=env)
    assert text.code == 0, text.err
    assert text.out.strip().endswith(f"reacted 🚀 to {message['id']}")
    again = chatsdk("react", message["id"], "🚀", "--json", env=env)
    assert again.code == 0  # adding it again is not an error
    assert json.loads(again.out)["reaction"] == "🚀"
    assert len(server.reactions(message["id"])) == 1


def test_health(server: ReferenceServer, env: dict[str, str]) -> None:
    result = chatsdk("health", env=env)
    assert (result.code, result.out.strip()) == (0, f"ok {server.url}")
    as_json = chatsdk("health", "--json", env=env)
    assert json.loads(as_json.out) == {"status": "ok", "url": server.url}


# -- stdin ---------------------------------------------------------------------------------


def test_send_dash_reads_utf8_stdin(server: ReferenceServer, env: dict[str, str]) -> None:
    text = "Sauvegarde terminée ✅\nligne 2 — ok"
    result = chatsdk("send", "reports", "-", env=env, stdin=(text + "\n\n").encode())
    assert result.code == 0, result.err
    assert one_message(server, "reports")["text"] == text  # trailing newlines dropped


def test_send_dash_takes_exactly_the_api_limit(
    server: ReferenceServer, env: dict[str, str]
) -> None:
    text = "é" * 3999 + "✅"  # 4000 characters, 8002 bytes
    assert chatsdk("send", "reports", "-", env=env, stdin=text.encode()).code == 0
    assert one_message(server, "reports")["text"] == text


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("é".encode() * 4001, "4001 characters; a message is at most 4000"),
        (b"caf\xe9 latin-1", "not UTF-8"),
        (b"\n\n", "no text"),
        (b"x" * (64 * 1024 + 1), "more than 65536 bytes"),
    ],
    ids=["too-long", "not-utf8", "empty", "runaway"],
)
def test_send_dash_refuses_bad_stdin_before_sending(
    server: ReferenceServer, env: dict[str, str], data: bytes, says: str
) -> None:
    result = chatsdk("send", "reports", "-", env=env, stdin=data)
    assert result.code == 65, result.err
    assert says in result.err and "nothing was sent" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert server.counters()["requests"] == 0


# -- 2: usage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "ops"],
        ["send", "ops", "hi", "--wait", "1"],
        ["send", "ops", "hi", "--key", "k", "--key-from", "a"],
        ["send", "ops", "hi", "--attachment", "image"],
        ["send", "ops", "hi", "--wait", "-1", "--queue"],
        ["history", "ops", "--limit", "many"],
        ["tail"],
        ["tail", "ops", "--count", "0"],
        ["react", "m1"],
        ["nope"],
    ],
)
def test_usage_errors_exit_2(env: dict[str, str], argv: list[str]) -> None:
    result = chatsdk(*argv, env=env)
    assert result.code == 2, result
    assert result.err.strip()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_takes_the_key_as_an_argument(
    server: ReferenceServer, tmp_path: Path, command: str
) -> None:
    env = base_env(CHATSDK_URL=server.url, CHATSDK_OUTBOX=str(tmp_path / "o.db"))
    for form in (["--api-key", KEY], [f"--api-key={KEY}"]):
        result = chatsdk(*COMMANDS[command], *form, env=env)
        assert result.code == 2, result
        assert "not taken on the command line" in result.err and "--api-key-file" in result.err
    assert server.counters()["requests"] == 0


# -- 65: invalid input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["send", "ops", "   "], "text"),
        (["send", "ops", "x" * 4001], "text"),
        (["send", "bad channel!", "hi"], "channelId"),
        (["send", "ops", "hi", "--key", "bad key\u00e9"], "idempotencyKey"),
        (["send", "ops", "hi", *["--attachment", "image", "u"] * 11], "attachments"),
        (["react", "m1", "x" * 65], "reaction"),
        (["history", "ops", "--limit", "0"], "limit"),
        (["history", "bad channel!"], "channelId"),
        (["tail", "bad channel!"], "channelId"),
    ],
)
def test_invalid_input_exits_65_before_any_request(
    server: ReferenceServer, env: dict[str, str], argv: list[str], says: str
) -> None:
    result = chatsdk(*argv, env=env)
    assert result.code == 65, result
    assert says in result.err and len(result.err.strip().splitlines()) == 1
    assert server.counters()["requests"] == 0


def test_react_to_a_missing_message_exits_65(env: dict[str, str]) -> None:
    result = chatsdk("react", "msg_missing", "+1", env=env)
    assert result.code == 65, result
    assert "HTTP 404" in result.err and "nothing was created" in result.err


# -- 69: the service is unavailable --------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_server_down_exits_69_in_every_command(
    server: ReferenceServer, env: dict[str, str], command: str
) -> None:
    if command == "outbox drain":
        # Queued without a drainer: `send --queue` could deliver it before the stop below
        # (seen in a run: "sent 0, failed 0, pending 0", exit 0).
        with Outbox(env["CHATSDK_OUTBOX"]) as outbox:
            outbox.enqueue("message", "ops", {"channelId": "ops", "text": "queued"})
    server.stop()
    result = chatsdk(*COMMANDS[command], env=env)
    assert result.code == 69, result
    assert "unavailable" in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err


def test_server_errors_after_retries_exit_69(server: ReferenceServer, env: dict[str, str]) -> None:
    server.faults = FaultPlan(server_error=1.0, server_error_retry_after=0.0, seed=1)
    result = chatsdk("send", "ops", "hi", env=env)
    assert result.code == 69, result
    assert "after 5 attempts" in result.err and "HTTP 5" in result.err


def test_verbose_adds_the_retry_log(server: ReferenceServer, env: dict[str, str]) -> None:
    server.stop()
    quiet = chatsdk("send", "ops", "hi", env=env)
    loud = chatsdk("-v", "send", "ops", "hi", env=env)
    assert quiet.code == loud.code == 69
    assert len(quiet.err.strip().splitlines()) == 1
    assert len(loud.err.strip().splitlines()) > 2 and "chatsdk" in loud.err
    assert "retry" in loud.err.lower()


# -- 75: queued, not yet delivered ---------------------------------------------------------


def test_queue_exits_0_once_on_disk(server: ReferenceServer, env: dict[str, str]) -> None:
    server.stop()
    result = chatsdk("send", "deploys", "deploy 142 finished", "--queue", "--json", env=env)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["status"] == "queued" and data["outbox"] == env["CHATSDK_OUTBOX"]
    with Outbox(env["CHATSDK_OUTBOX"]) as box:
        entry = box.get(data["outboxEntry"])
        assert entry is not None and entry.operation.body["text"] == "deploy 142 finished"
        assert entry.idempotency_key == data["idempotencyKey"]


def test_queue_wait_delivered_prints_the_message(
    server: ReferenceServer, env: dict[str, str]
) -> None:
    result = chatsdk("send", "deploys", "shipped", "--queue", "--wait", "20", "--json", env=env)
    assert result.code == 0, result.err
    assert json.loads(result.out)["id"] == one_message(server, "deploys")["id"]


def test_queue_wait_with_the_server_down_exits_75_and_drain_delivers(
    server: ReferenceServer, env: dict[str, str]
) -> None:
    server.stop()
    result = chatsdk("send", "deploys", "deploy 143", "--queue", "--wait", "1", env=env)
    assert result.code == 75, result
    assert "not delivered within 1s" in result.err and "outbox drain" in result.err
    assert len(result.err.strip().splitlines()) == 1
    server.start()
    drained = chatsdk("outbox", "drain", "--timeout", "30", env=env)
    assert drained.code == 0, drained.err
    assert "sent 1, failed 0, pending 0" in drained.out
    assert one_message(server, "deploys")["text"] == "deploy 143"


def test_queue_wait_dead_letter_exits_65(server: ReferenceServer, env: dict[str, str]) -> None:
    assert chatsdk("send", "ops", "first", "--key", "job-7", env=env).code == 0
    # The same key for another text: the server refuses it for good (422), a dead letter.
    result = chatsdk("send", "ops", "other", "--key", "job-7", "--queue", "--wait", "20", env=env)
    assert result.code == 65, result
    assert "HTTP 422" in result.err
    with Outbox(env["CHATSDK_OUTBOX"]) as box:
        assert box.stats().failed == 1


# -- 77: the key was refused ---------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"health"}))
@pytest.mark.parametrize("key", ["sk-wrong-2b7c9d", FORBIDDEN_KEY])
def test_refused_key_exits_77_in_every_command(
    server: ReferenceServer, tmp_path: Path, command: str, key: str
) -> None:
    env = config_env(server.url, tmp_path, key=key)
    if command == "outbox drain":
        with Outbox(env["CHATSDK_OUTBOX"]) as box:
            box.enqueue("message", "ops", {"channelId": "ops", "text": "x", "attachments": []})
    result = chatsdk(*COMMANDS[command], env=env, secrets=(KEY, FORBIDDEN_KEY, key))
    assert result.code == 77, result
    assert "key was refused" in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err


def test_queue_wait_with_a_refused_key_exits_77_at_once(
    server: ReferenceServer, tmp_path: Path
) -> None:
    env = config_env(server.url, tmp_path, key="sk-wrong-2b7c9d")
    result = chatsdk(
        "send", "ops", "x", "--queue", "--wait", "60", env=env, secrets=("sk-wrong-2b7c9d",)
    )
    assert result.code == 77, result
    with Outbox(env["CHATSDK_OUTBOX"]) as box:
        assert box.stats().queued == 1  # kept for a client with a working key


# -- 78: configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_missing_configuration_exits_78_in_every_command(
    server: ReferenceServer, tmp_path: Path, command: str
) -> None:
    full = config_env(server.url, tmp_path)
    cases = {
        "CHATSDK_URL": {k: v for k, v in full.items() if k != "CHATSDK_URL"},
        "CHATSDK_API_KEY": {k: v for k, v in full.items() if k != "CHATSDK_API_KEY_FILE"},
        "both": {**full, "CHATSDK_API_KEY": KEY},
        "cannot read": {**full, "CHATSDK_API_KEY_FILE": str(tmp_path / "missing-key")},
    }
    for says, env in cases.items():
        result = chatsdk(*COMMANDS[command], env=env)
        assert result.code == 78, (says, result)
        assert says in result.err and len(result.err.strip().splitlines()) == 1
    assert server.counters()["requests"] == 0


def test_outbox_needed_but_not_configured_exits_78(server: ReferenceServer, tmp_path: Path) -> None:
    env = {k: v for k, v in config_env(server.url, tmp_path).items() if k != "CHATSDK_OUTBOX"}
    for argv in (["send", "ops", "hi", "--queue"], ["outbox", "drain"], ["outbox", "status"]):
        result = chatsdk(*argv, env=env)
        assert result.code == 78, result
        assert "CHATSDK_OUTBOX" in result.err


def test_key_sources(server: ReferenceServer, tmp_path: Path) -> None:
    env = base_env(CHATSDK_URL=server.url, CHATSDK_API_KEY=KEY)
    assert chatsdk("send", "ops", "from the environment", env=env).code == 0
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n")
    no_key = base_env(CHATSDK_URL=server.url)
    assert (
        chatsdk(
            "send", "ops", "from --api-key-file", "--api-key-file", str(key_file), env=no_key
        ).code
        == 0
    )
    # --api-key-file wins over the environment.
    wrong = base_env(CHATSDK_URL=server.url, CHATSDK_API_KEY="sk-wrong-2b7c9d")
    assert chatsdk("send", "ops", "flag wins", "--api-key-file", str(key_file), env=wrong).code == 0
    assert len(server.messages("ops")) == 3


def test_a_malformed_key_file_is_not_echoed(server: ReferenceServer, tmp_path: Path) -> None:
    secret = "sk-two-words 9c8b7a"
    key_file = tmp_path / "key"
    key_file.write_text(secret)
    env = base_env(CHATSDK_URL=server.url, CHATSDK_API_KEY_FILE=str(key_file))
    result = chatsdk("send", "ops", "hi", env=env, secrets=(secret, "sk-two-words", "9c8b7a"))
    assert result.code == 78 and "one key on one line" in result.err


def test_a_bad_url_exits_78(tmp_path: Path) -> None:
    env = config_env("ftp://nowhere", tmp_path)
    result = chatsdk("send", "ops", "hi", env=env)
    assert result.code == 78, result


# -- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *[c.split()[:1] for c in sorted(COMMANDS)]])
def test_help_documents_the_exit_codes(command: list[str]) -> None:
    result = chatsdk(*command, "--help", env=base_env())
    assert result.code == 0
    for line in (
        "65  invalid input",
        "69  the service is unavailable",
        "75  queued but not yet",
        "77  the API key was refused",
        "78  configuration missing",
    ):
        assert line in result.out, (command, line)


def test_main_in_process_keeps_one_log_handler(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import chatsdk.cli as cli

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        assert cli.main(["health"]) == 0
        assert logging.getLogger("chatsdk").level > logging.CRITICAL  # quiet without -v
        assert cli.main(["-v", "health"]) == 0
        assert logging.getLogger("chatsdk").level == logging.NOTSET
        assert len(root.handlers) == len(before) + 1
    finally:
        for handler in set(root.handlers) - set(before):
            root.removeHandler(handler)
        root.setLevel(level)
    assert capsys.readouterr().out.count("ok http://") == 2
