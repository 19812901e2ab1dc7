"""Real processes for the deployment and framework tests: started, watched, stopped;
a redis-server of the test's own."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import require, wait_until

REDIS_URL_ENV = "CHATSDK_TEST_REDIS_URL"
#: The test Django project's manage.py (its settings read ``$DJANGO_CHATSDK``, JSON).
DJANGO_MANAGE = Path(__file__).parent / "integrations" / "django_project" / "manage.py"


def require_module(name: str) -> None:
    """Skip (fail under CI=true) when the Python package ``name`` is not installed."""
    require(
        importlib.util.find_spec(name) is not None, f"{name} is not installed (the [test] extra)"
    )


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: no pytest-cov hooks (processes that end with
    ``os._exit`` would corrupt a shared coverage file), the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE_")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra.pop("PYTHONPATH", ""), root) if p)
    env.update(extra)
    return env


class Process:
    """A process whose combined output is collected line by line as it runs."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first output line matching ``pattern``; fails with the output if none comes."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    found.append(match)
                    return True
            return self.proc.poll() is not None

        wait_until(seen, timeout)
        assert found, f"no line matching {pattern!r} in:\n{self.output}"
        return found[0]

    def stop(self, signal_number: int, timeout: float = 60) -> int:
        """Send ``signal_number``, wait for the exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal_number)
        try:
            return self.proc.wait(timeout)
        finally:
            self._close()

    def kill(self) -> None:
        """End the process for good (idempotent), e.g. after a failed assertion."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._close()

    def _close(self) -> None:
        if self.proc.poll() is not None:
            self._reader.join(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def manage_py(
    env: dict[str, str], chatsdk: dict[str, object], *args: str
) -> subprocess.CompletedProcess[str]:
    """``manage.py *args`` of the test Django project, ``CHATSDK = chatsdk``, in ``env``."""
    return subprocess.run(
        python(str(DJANGO_MANAGE), *args),
        env={**env, "DJANGO_CHATSDK": json.dumps(chatsdk)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    assert wait_until(predicate, timeout), f"timed out waiting for {what}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(tmp_path: Path) -> Iterator[str]:
    """``$CHATSDK_TEST_REDIS_URL``, or a redis-server of the test's own on a free port."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    require(binary is not None, f"redis-server is not installed (or set ${REDIS_URL_ENV})")
    assert binary is not None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        assert wait_until(answers, 30), "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(30)
