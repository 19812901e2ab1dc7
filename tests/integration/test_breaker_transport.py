"""The per-host circuit breaker against real loopback servers."""

from __future__ import annotations

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
        # One failed operation is a blip; the second operation's failure opens the circuit.
        assert chat.session.breakers[name].state is CircuitState.CLOSED
        with pytest.raises(CircuitBreakerOpenError) as second:
            chat.send_message("general", "second")
        assert second.value.attempts == 1
        assert chat.session.breakers[name].state is CircuitState.OPEN

        for _ in range(100):
            with pytest.raises(CircuitBreakerOpenError) as open_info:
                chat.send_message("general", "while open")
            assert open_info.value.attempts == 0  # failed fast: nothing was sent

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
