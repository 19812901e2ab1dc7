"""Shared fixtures: injected time, so no test waits for real."""

from __future__ import annotations

import pytest

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
