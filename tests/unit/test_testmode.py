"""Test mode: chatsdk._testmode (the core switch) and chatsdk.testing.set_testing over it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

import chatsdk._testmode as testmode
from chatsdk import ChatClient, ChatSession, CircuitBreakerOpenError, ServerError
from chatsdk._http.adapter import ResilientAdapter
from chatsdk._outbox.drainer import Drainer
from chatsdk._outbox.models import Operation
from chatsdk._outbox.outbox import Outbox
from chatsdk._resilience.breaker import CircuitState
from chatsdk.testing import InMemoryTransport, is_testing, set_testing

URL = "http://chat.test"


@pytest.fixture(autouse=True)
def _off() -> Iterator[None]:
    """Every test starts and ends with test mode off."""
    testmode.disable()
    yield
    testmode.disable()


def test_sleep_waits_for_real_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    testmode.sleep(0.25)
    assert slept == [0.25]


def test_sleep_skips_and_moves_the_clock_on_when_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _s: pytest.fail("slept for real"))
    testmode.enable()
    before = testmode.monotonic()
    testmode.sleep(30.0)
    testmode.sleep(-1.0)  # a negative wait skips nothing
    after = testmode.monotonic()
    assert 30.0 <= after - before < 31.0
    testmode.disable()
    assert testmode.monotonic() >= after  # turning it off never moves the clock back


def test_inline_flush_only_while_on() -> None:
    def flush(_drainer: Any, _timeout: float | None) -> bool:
        return True

    assert testmode.inline_flush() is None
    testmode.enable(flush)
    assert testmode.active()
    assert testmode.inline_flush() is flush
    testmode.disable()
    assert testmode.inline_flush() is None
    assert not testmode.active()


def test_set_testing_is_a_call_and_a_context_manager() -> None:
    assert not is_testing()
    with set_testing(True):
        assert is_testing()
        with set_testing(False):
            assert not is_testing()
        assert is_testing()
    assert not is_testing()
    set_testing(True)
    assert is_testing() and testmode.inline_flush() is not None
    set_testing(False)
    assert not is_testing()


@responses.activate
def test_backoff_and_retry_after_take_no_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Four 503s with Retry-After: 2, then a 201: production would wait 8 s.
    monkeypatch.setattr(time, "sleep", lambda _s: pytest.fail("slept for real"))
    for _ in range(4):
        responses.post(f"{URL}/api/health", status=503, headers={"Retry-After": "2"})
    responses.post(f"{URL}/api/health", json={"status": "ok"})
    with set_testing(True), ChatSession(URL, "k", breaker=False) as session:
        before = testmode.monotonic()
        response = session.post("api/health", headers={"Idempotency-Key": "x"})
        assert response.status_code == 200
        assert testmode.monotonic() - before >= 8.0  # the waits happened, on the SDK's clock
    assert len(responses.calls) == 5


def test_breaker_open_period_passes_on_the_skipped_clock() -> None:
    memory = InMemoryTransport()
    with set_testing(True), ChatClient(memory.url, "k", transport=memory) as chat:
        memory.fail_next(5, status=500)
        with pytest.raises(ServerError):
            chat.send_message("c", "one")
        breaker = chat.session.breaker_for()
        assert breaker is not None
        # Keep failing until the circuit opens; then it stays open until its timeout.
        memory.outage(status=500)
        for _ in range(20):
            try:
                chat.send_message("c", "x")
            except (ServerError, CircuitBreakerOpenError):
                continue
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitBreakerOpenError):
            chat.send_message("c", "fails fast")
        testmode.sleep(breaker.retry_after + 0.01)  # e.g. an app's own wait, skipped too
        memory.reset_faults()
        assert chat.send_message("c", "back").text == "back"


def test_adapter_defaults_to_the_test_mode_clock_and_sleep() -> None:
    adapter = ResilientAdapter()
    assert adapter._sleep is testmode.sleep
    assert adapter._clock is testmode.monotonic


# -- the drainer in test mode ----------------------------------------------------------------


def _message(op: Operation) -> dict[str, Any]:
    return {"id": f"m-{op.idempotency_key}", "channelId": op.channel, "text": op.body["text"]}


def _body(text: str) -> dict[str, Any]:
    return {"channelId": "c", "text": text, "attachments": [], "parentId": None}


def test_drainer_in_test_mode_starts_no_thread_and_flushes_inline(tmp_path: Path) -> None:
    delivered: list[tuple[str, str]] = []

    def deliver(op: Operation) -> dict[str, Any]:
        delivered.append((op.body["text"], threading.current_thread().name))
        return _message(op)

    with Outbox(tmp_path / "o.db") as outbox, set_testing(True):
        drainer = Drainer(outbox, deliver)
        threads = threading.active_count()
        drainer.start()
        assert threading.active_count() == threads
        for text in ("a", "b", "c"):
            outbox.enqueue("message", "c", _body(text), idempotency_key=f"k-{text}")
        assert delivered == []  # nothing is sent until the test flushes
        assert drainer.flush() is True
        me = threading.current_thread().name
        assert delivered == [("a", me), ("b", me), ("c", me)]
        assert drainer.stop(1.0)


def test_drainer_threads_start_on_notify_after_test_mode(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        with set_testing(True):
            drainer = Drainer(outbox, _message)
            drainer.start()
        outbox.enqueue("message", "c", _body("later"), idempotency_key="k")
        assert drainer.flush(5.0) is True  # threads started by the notify
        entry = outbox.get(1)
        assert entry is not None and entry.status == "sent"
        assert drainer.stop(5.0)


def test_a_running_drainer_flushes_as_usual_in_test_mode(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        drainer = Drainer(outbox, _message)
        drainer.start()
        with set_testing(True):
            outbox.enqueue("message", "c", _body("x"), idempotency_key="k")
            assert drainer.flush(5.0) is True
        assert drainer.stop(5.0)


def test_inline_flush_stops_at_a_rejected_key(tmp_path: Path) -> None:
    memory = InMemoryTransport(api_keys=["good"])
    with (
        set_testing(True),
        ChatClient(memory.url, "bad", transport=memory, outbox=tmp_path / "o.db") as chat,
    ):
        chat.queue_message("c", "hello")
        assert chat.flush().pending == 1  # draining stopped by the 401; the entry stays
        assert chat.outbox is not None and chat.outbox.pending_count() == 1
        assert len(memory.attempts) == 1


def test_inline_flush_keeps_a_retry_after_the_server_asked_for(tmp_path: Path) -> None:
    memory = InMemoryTransport()
    with (
        set_testing(True),
        ChatClient(
            memory.url, "k", transport=memory, outbox=tmp_path / "o.db", breaker=False
        ) as chat,
    ):
        chat.queue_message("c", "hello")
        memory.fail_next(5, status=429, retry_after=600)
        assert chat.flush().pending == 1  # due in 600 s of wall-clock time: not now
        assert memory.sent == []
