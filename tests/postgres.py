"""A throwaway PostgreSQL for the tests: initdb into a temp dir, pg_ctl on a free port.

``$CHATSDK_TEST_POSTGRES_URL``, when set, is used instead. When neither is possible the
tests that need PostgreSQL are skipped with the reason on a developer's machine, and FAIL
when ``CI=true`` (CI never skips them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

__all__ = ["URL_ENV", "PostgresCluster", "find_binary", "missing", "unique_schema"]

URL_ENV = "CHATSDK_TEST_POSTGRES_URL"
_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")


def find_binary(name: str) -> str | None:
    """The path of a PostgreSQL server binary (``initdb``, ``pg_ctl``), or None."""
    for directory in _DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def missing(reason: str) -> None:
    """Skip the test with ``reason``; fail it instead when running in CI."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL required in CI: {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


class PostgresCluster:
    """One PostgreSQL server of its own in a temp dir (``fsync=off``), for tests.

    As root, initdb and pg_ctl run as the ``postgres`` user in a directory it owns.

    Args:
        listen: ``listen_addresses`` (``"*"`` to reach it from a network namespace).
    """

    def __init__(self, listen: str = "127.0.0.1") -> None:
        self.listen = listen
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="chatsdk-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.started = False

    def url(self, host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 120.0) -> None:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError("initdb/pg_ctl not found (install PostgreSQL server)")
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._pg_ctl = pg_ctl
        self._run(initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")  # fmt: skip
        if self.listen != "127.0.0.1":
            # Reachable from other namespaces: trust them too (a throwaway test server).
            with open(os.path.join(self.data, "pg_hba.conf"), "a") as hba:
                hba.write("host all all 0.0.0.0/0 trust\n")
        self.up()

    def up(self) -> None:
        """Start the server (again) on its port; the log goes to :attr:`log`, not a pipe."""
        options = (
            f"-p {self.port} -c listen_addresses='{self.listen}' -k {self.root}"
            " -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(self._pg_ctl, "-D", self.data, "-l", self.log, "-o", options, "-w", "start")
        self.started = True

    def down(self) -> None:
        """Stop the server the way a restart or a failover does (fast: sessions are cut)."""
        self._run(self._pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop")
        self.started = False

    def stop(self) -> None:
        if self.started:
            self._run(self._pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def cluster(listen: str = "127.0.0.1") -> Iterator[PostgresCluster]:
    """A started :class:`PostgresCluster`, stopped and removed afterwards."""
    pg = PostgresCluster(listen)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
