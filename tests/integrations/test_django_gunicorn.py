"""gunicorn --preload, 4 workers, get_client() called in the master: 500 orders, 500 messages.

The master imports wsgi.py, which calls get_client() (as a project that warms its client
does); each of the 4 forked workers builds its own client on first use. Each request saves
an order row and queues a message in one ``transaction.atomic()``: with the outbox in a file
(Django on SQLite), and with ``OUTBOX = "database"`` (Django on PostgreSQL, the message in
the same transaction as the row). Then: 500 rows, and every message on the server exactly
once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from chatsdk.testing import ReferenceServer
from tests.processes import (
    DJANGO_MANAGE,
    Process,
    child_env,
    free_port,
    python,
    require_module,
    until,
)

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork (POSIX)"),
    pytest.mark.slow,
]

REQUESTS = 500


@pytest.fixture(params=["file-outbox", "database-outbox"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Where the orders and the outbox live: the settings, and how to count the orders."""
    if request.param == "file-outbox":
        yield {"DJANGO_TEST_DB": str(tmp_path / "db.sqlite3"), "OUTBOX": str(tmp_path / "o.db")}
        return
    import psycopg

    pg_url = request.getfixturevalue("postgres_url")
    schema = request.getfixturevalue("pg_schema")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield {
        "DJANGO_TEST_POSTGRES_URL": pg_url,
        "DJANGO_TEST_POSTGRES_SCHEMA": schema,
        "OUTBOX": "database",
    }


def count_orders(store: dict[str, str]) -> int:
    if "DJANGO_TEST_DB" in store:
        with sqlite3.connect(store["DJANGO_TEST_DB"]) as db:
            (rows,) = db.execute("SELECT count(*) FROM shop_order").fetchone()
        return int(rows)
    import psycopg

    with psycopg.connect(store["DJANGO_TEST_POSTGRES_URL"]) as conn:
        schema = store["DJANGO_TEST_POSTGRES_SCHEMA"]
        (rows,) = conn.execute(f'SELECT count(*) FROM "{schema}".shop_order').fetchone()
    return int(rows)


def test_gunicorn_preload_4_workers_500_orders_each_message_once(
    tmp_path: Path, store: dict[str, str]
) -> None:
    require_module("gunicorn")
    require_module("django")
    with ReferenceServer(api_keys=("test-key",)) as server:
        databases = {name: value for name, value in store.items() if name != "OUTBOX"}
        env = child_env(
            **databases,
            DJANGO_CHATSDK=json.dumps(
                {"URL": server.url, "API_KEY": "test-key", "OUTBOX": store["OUTBOX"]}
            ),
            CHATSDK_CLIENT_IN_MASTER="1",
        )
        subprocess.run(
            python(str(DJANGO_MANAGE), "migrate", "-v0"), env=env, check=True, timeout=120
        )
        port = free_port()
        app = Process(
            python(
                "-m", "gunicorn", "--preload", "--workers", "4", "--bind", f"127.0.0.1:{port}",
                "tests.integrations.django_project.project.wsgi:application",
            ),
            cwd=Path.cwd(),
            env=env,
        )  # fmt: skip
        try:
            app.wait_for(r"Booting worker")
            url = f"http://127.0.0.1:{port}/orders/"

            def answers() -> bool:
                try:
                    return requests.get(url, timeout=5).status_code == 405
                except requests.ConnectionError:
                    return False

            until(answers, 60, "gunicorn to answer")
            with ThreadPoolExecutor(8) as pool, requests.Session() as session:
                codes = list(pool.map(lambda n: session.post(url, timeout=60).status_code,
                                      range(REQUESTS)))  # fmt: skip
            assert codes == [200] * REQUESTS
            until(lambda: len(server.all_messages()) >= REQUESTS, 120, "every message")
            assert app.stop(signal.SIGTERM) == 0, app.output
        finally:
            app.kill()
        texts = Counter(m["text"] for m in server.all_messages())
    assert count_orders(store) == REQUESTS
    assert set(texts) == {f"order {n}" for n in range(1, REQUESTS + 1)}
    assert [t for t, c in texts.items() if c != 1] == []
    assert "Traceback" not in app.output, app.output
