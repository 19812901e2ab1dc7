"""What the deployment tests share: real processes started, watched and stopped."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tests.helpers import require, wait_until


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a server process: no pytest-cov subprocess hooks (processes
    that end with os._exit would share and corrupt a coverage file), the test's modules
    importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE_")}
    env.update(extra)
    return env


def require_module(name: str) -> None:
    """Skip (fail under CI=true) when the Python package ``name`` is not installed."""
    require(
        importlib.util.find_spec(name) is not None, f"{name} is not installed (the [test] extra)"
    )


class Process:
    """A process whose combined output is collected line by line as it runs."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    assert wait_until(predicate, timeout), f"timed out waiting for {what}"
