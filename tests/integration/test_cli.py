"""The ``chatsdk`` command line: ``serve`` and ``drill``, run as a user would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from chatsdk.cli import build_parser, main, serve
from chatsdk.cli._drill import GRADES
from tests.helpers import wait_until

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


def _read_url(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("REST:"):
            return line.split("REST:", 1)[1].strip()
    raise AssertionError(f"serve printed no REST URL: {lines!r}")


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
def test_serve_subprocess_answers_health_and_stops_on_a_signal(stop_with: int) -> None:
    argv = [sys.executable, "-m", "chatsdk", "serve", "--port", "0", "--api-key", "cli-key"]
    # A SIGINT this process ignores (a shell's background job) would be ignored by the child
    # too, as Python leaves an inherited SIG_IGN alone (seen: the child never stopped). A
    # handler is not inherited: the child starts with the default, as under a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    with proc:
        try:
            url = _read_url(proc, time.monotonic() + 20)
            assert url.startswith("http://127.0.0.1:")
            assert requests.get(f"{url}/api/health", timeout=5).json() == {"status": "ok"}
            response = requests.post(
                f"{url}/api/messages",
                json={"channelId": "c", "text": "hi"},
                headers={"X-API-Key": "cli-key", "Idempotency-Key": "k-1"},
                timeout=5,
            )
            assert response.status_code == 201
            proc.send_signal(stop_with)
            try:
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:  # say where it hangs
                proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
                _, stacks = proc.communicate(timeout=15)
                pytest.fail(f"serve did not stop within 15 s of {stop_with!r}:\n{stacks}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "Traceback" not in err


def test_serve_prints_urls_and_key_and_stops_on_hook(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", "--port", "0", "--faults", "flaky"])
    stop = threading.Event()
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(serve.run(args, stop=stop)))
    thread.start()
    try:
        captured: list[str] = []

        def ready() -> bool:
            captured.append(capsys.readouterr().out)
            return "Press Ctrl-C" in "".join(captured)

        assert wait_until(ready, 10)
        out = "".join(captured)
        assert "API key:   test-key" in out and "faults: flaky" in out
        url = next(line.split()[-1] for line in out.splitlines() if "REST:" in line)
        ws = next(line.split()[-1] for line in out.splitlines() if "WebSocket:" in line)
        assert ws.startswith("ws://127.0.0.1:") and ws.endswith("/connection/websocket")
        assert requests.get(f"{url}/api/health", timeout=5).status_code == 200
    finally:
        stop.set()
        thread.join(timeout=10)
    assert status == [0]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/api/health", timeout=2)


def test_serve_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = build_parser().parse_args(["serve", "--port", str(port)])
        assert serve.run(args) == 1
    assert "cannot listen" in capsys.readouterr().err


def test_main_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "drill" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["drill", "--messages", "0"],
        ["drill", "--outage", "-1"],
        ["drill", "--profile", "awful"],
        ["drill", "--scenario", "nope"],
        ["serve", "--faults", "awful"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("chatsdk ")


def test_drill_json_small_run() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatsdk",
            "drill",
            "--messages",
            "60",
            "--threads",
            "4",
            "--json",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints one object and nothing else on stdout"
    data = json.loads(lines[0])
    assert data["profile"] == "terrible"
    assert data["messages"] == 60
    arms = data["arms"]
    names = [arm["name"] for arm in arms]
    assert all(any(word in n for word in ("requests", "urllib3", "chatsdk")) for n in names)
    for arm in arms:
        assert isinstance(arm["name"], str)
        for key in (
            "delivered_exactly_once_pct",
            "caller_errors_pct",
            "requests_per_message",
            "mean_retry_delay_ms",
        ):
            assert isinstance(arm[key], float), (arm["name"], key)
        assert isinstance(arm["duplicates"], int) and isinstance(arm["lost"], int)
        assert set(arm["latency_ms"]) == {"mean", "p99"}
        assert 0 <= arm["latency_ms"]["mean"] <= arm["latency_ms"]["p99"]
        assert 0.0 <= arm["delivered_exactly_once_pct"] <= 100.0
        assert 0.0 <= arm["caller_errors_pct"] <= 100.0
        assert arm["grade"] in GRADES
    by_name = {arm["name"]: arm for arm in arms}
    plain = by_name["requests (no retry)"]
    assert plain["lost"] > 0 or plain["caller_errors_pct"] > 0
    assert plain["mean_retry_delay_ms"] == 0.0
    assert plain["requests_per_message"] == 1.0
    urllib3_arm = next(a for a in arms if "urllib3" in a["name"])
    assert urllib3_arm["requests_per_message"] > 1.0
    chatsdk_arms = [a for a in arms if "chatsdk" in a["name"]]
    assert chatsdk_arms
    for arm in chatsdk_arms:
        assert arm["duplicates"] == 0, arm
    for arm in chatsdk_arms:
        if "realtime" in arm["name"]:
            continue
        assert arm["requests_per_message"] > 1.0  # it retried: the profile is terrible
        assert arm["mean_retry_delay_ms"] > 0.0


def test_drill_multi_tap_counts_duplicates_per_arm() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatsdk",
            "drill",
            "--scenario",
            "multi-tap",
            "--messages",
            "24",
            "--threads",
            "8",
            "--profile",
            "flaky",
            "--json",
            "--seed",
            "2",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["scenario"] == "multi-tap"
    by_name = {arm["name"]: arm for arm in data["arms"]}
    # Every message is submitted 2-3 times: the naive arms store most submissions.
    assert by_name["requests (no retry)"]["duplicates"] >= 10
    assert by_name["requests + urllib3 Retry(5)"]["duplicates"] >= 24
    for name, arm in by_name.items():
        if "chatsdk" in name:
            assert arm["duplicates"] == 0, arm
        assert arm["operations"] >= 48 or "outbox" in name or "realtime" in name


def test_drill_outage_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatsdk.cli._drill import DrillConfig, _runner, run_drill
    from chatsdk.cli._drill._arms import ChatsdkNoBreakerArm, RequestsArm

    monkeypatch.setattr(
        _runner,
        "arm_specs",
        lambda config: [
            _runner.ArmSpec("requests", RequestsArm),
            _runner.ArmSpec("no-breaker", ChatsdkNoBreakerArm),
        ],
    )
    config = DrillConfig(
        messages=80, threads=4, profile="none", outage=0.5, rate=40.0, seed=3, realtime=False
    )
    report = run_drill(config)
    assert not report.crashed
    assert report.to_json()["outage_s"] == 0.5
    plain, sdk = report.arms
    assert plain.outage is not None and sdk.outage is not None
    # Plain requests: one refused connection per call while down; those messages are lost.
    assert plain.outage.requests_while_down >= 1
    assert plain.lost >= 1 and plain.caller_errors_pct > 0
    assert plain.outage.first_success_after_s is not None
    # chatsdk without the breaker retries through a half-second outage.
    assert sdk.outage.requests_while_down >= 1
    assert sdk.outage.first_success_after_s is not None
    assert sdk.duplicates == 0
