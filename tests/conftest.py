"""Shared fixtures: injected time, so no test waits for real."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import postgres
from tests.helpers import FakeClock

__all__ = ["FakeClock", "FakeSleep"]

pytest_plugins = ("chatsdk.testing.pytest_plugin",)


class FakeSleep:
    """Records requested sleeps and advances a FakeClock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleep(clock: FakeClock) -> FakeSleep:
    return FakeSleep(clock)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the session: ``$CHATSDK_TEST_POSTGRES_URL`` or a throwaway one."""
    url = os.environ.get(postgres.URL_ENV)
    if url:
        yield url
        return
    pg = postgres.PostgresCluster()
    try:
        pg.start()
    except (OSError, RuntimeError) as exc:
        pg.stop()
        postgres.missing(str(exc))
    try:
        yield pg.url()
    finally:
        pg.stop()


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A schema name of this test's own in the session's PostgreSQL; dropped afterwards."""
    import psycopg

    schema = postgres.unique_schema()
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
