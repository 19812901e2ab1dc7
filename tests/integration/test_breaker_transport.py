"""The per-host circuit breaker against real loopback servers."""

from __future__ import annotations

import statistics
import time

import pytest

from chatsdk import ChatClient, ChatSession, CircuitBreakerOpenError, ConnectError
from chatsdk._resilience.breaker import CircuitState
from chatsdk.testing import ReferenceServer


def test_a_refusing_host_opens_fails_fast_and_recovers(sleep, clock) -> None:
    with ReferenceServer() as down, ReferenceServer() as other:
        down.stop()  # connections to its port are now refused
        chat = ChatClient(session=ChatSession(down.url, "test-key", sleep=sleep, clock=clock))
        with pytest.raises(ConnectError) as info:
            chat.send_message("general", "first")
        assert info.value.attempts == 5
        name = f"rest:http://127.0.0.1:{down.port}"
        assert chat.session.breakers[name].state is CircuitState.OPEN

        timings = []
        for _ in range(100):
            start = time.perf_counter()
            with pytest.raises(CircuitBreakerOpenError) as open_info:
                chat.send_message("general", "while open")
            timings.append(time.perf_counter() - start)
        assert open_info.value.attempts == 0
        assert statistics.median(timings) < 0.002  # fails fast: nothing is sent

        with ChatClient(session=ChatSession(other.url, "test-key", sleep=sleep, clock=clock)) as ok:
            assert ok.send_message("general", "elsewhere").text == "elsewhere"

        down.start()
        down.reset_counters()
        clock.advance(60.0)
        assert chat.session.breakers[name].state is CircuitState.HALF_OPEN
        chat.send_message("general", "probe 1")
        chat.send_message("general", "probe 2")
        assert chat.session.breakers[name].state is CircuitState.CLOSED
        assert [m["text"] for m in down.messages("general")] == ["probe 1", "probe 2"]
        assert down.counters()["requests"] == 2  # nothing was sent while open
        chat.close()
