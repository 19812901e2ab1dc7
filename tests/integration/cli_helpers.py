"""Running the ``chatsdk`` command as a script would: a subprocess, env config, exit codes.

Every run checks that the API key appears in neither stdout nor stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import attrs

#: A key no output could contain by chance.
KEY = "sk-cli-7f3a9c1e5b2d4068"
FORBIDDEN_KEY = "sk-cli-forbidden-93b1c4"
CONFIG_VARS = ("CHATSDK_URL", "CHATSDK_API_KEY", "CHATSDK_API_KEY_FILE", "CHATSDK_OUTBOX")


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def base_env(**extra: str) -> dict[str, str]:
    """The environment without any chatsdk configuration, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def config_env(url: str, tmp: Path, *, key: str = KEY, **extra: str) -> dict[str, str]:
    """Configuration as a cron job would have it: the URL, a key file, an outbox path."""
    key_file = tmp / f"key-{abs(hash(key))}"
    key_file.write_text(key + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    config = {
        "CHATSDK_URL": url,
        "CHATSDK_API_KEY_FILE": str(key_file),
        "CHATSDK_OUTBOX": str(tmp / "outbox.db"),
    }
    return base_env(**{**config, **extra})


def chatsdk(
    *argv: str,
    env: Mapping[str, str],
    stdin: bytes | None = None,
    timeout: float = 60,
    secrets: tuple[str, ...] = (KEY, FORBIDDEN_KEY),
) -> Result:
    """Run ``python -m chatsdk ARGV`` to completion; asserts no secret in its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "chatsdk", *argv],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=dict(env),
        timeout=timeout,
        check=False,
    )
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    for secret in secrets:
        assert secret not in out and secret not in err, f"the key leaked: {argv}"
    return Result(proc.returncode, out, err)
