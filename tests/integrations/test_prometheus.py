"""chatsdk.integrations.prometheus on a private prometheus_client registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
from prometheus_client import CollectorRegistry, Counter

import chatsdk.integrations.prometheus as prom
from chatsdk import BreakerPolicy, ChatClient, ChatSession, RetryPolicy, ServerError
from chatsdk._instrument import PROCESS, RealtimeReconnecting
from chatsdk._outbox.outbox import STATUSES
from tests.unit.test_transport import BASE, KEY, MESSAGES, message_json

HOST = "http://chat.test:80"
NO_JITTER = RetryPolicy(base_delay=0.5, max_delay=8.0, jitter="none")


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    prom.register(registry)
    yield registry
    prom.unregister(registry)


def value(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    return registry.get_sample_value(metric, labels) or 0.0


@responses.activate
def test_503_503_201_counts_two_retries_and_three_requests(registry, sleep, clock) -> None:
    for status in (503, 503):
        responses.post(MESSAGES, status=status, json={})
    responses.post(MESSAGES, status=201, json=message_json())
    before = value(registry, "chatsdk_retries_total", host=HOST, reason="503")
    session = ChatSession(BASE, KEY, retry=NO_JITTER, sleep=sleep, clock=clock)
    with ChatClient(session=session) as chat:
        chat.send_message("general", "hi")
    assert value(registry, "chatsdk_retries_total", host=HOST, reason="503") == before + 2
    labels = {"host": HOST, "method": "POST"}
    assert value(registry, "chatsdk_requests_total", outcome="503", **labels) == 2
    assert value(registry, "chatsdk_requests_total", outcome="201", **labels) == 1


@responses.activate
def test_a_breaker_opening_moves_the_gauge_to_2(registry, clock) -> None:
    policy = BreakerPolicy(failure_threshold=2, failed_operations=2, recovery_timeout=30)
    retry = RetryPolicy(max_attempts=1)
    session = ChatSession(BASE, KEY, retry=retry, breaker=policy, clock=clock)
    responses.post(MESSAGES, status=503, json={})
    name = f"rest:{HOST}"
    with ChatClient(session=session) as chat:
        with pytest.raises(ServerError):
            chat.send_message("general", "one")
        assert registry.get_sample_value("chatsdk_breaker_state", {"name": name}) is None
        with pytest.raises(ServerError):
            chat.send_message("general", "two")
        assert value(registry, "chatsdk_breaker_state", name=name) == 2
        clock.advance(31)
        session.breaker_for()  # reading the state moves it to half-open
        assert session.breaker_for().state.value == "half_open"  # type: ignore[union-attr]
        assert value(registry, "chatsdk_breaker_state", name=name) == 1
        session.breaker_for().reset()  # type: ignore[union-attr]
        assert value(registry, "chatsdk_breaker_state", name=name) == 0


@responses.activate
def test_outbox_entries_are_read_on_scrape_and_deliveries_timed(registry, tmp_path: Path) -> None:
    responses.post(MESSAGES, status=201, json=message_json())
    chat = ChatClient(BASE, KEY, outbox=tmp_path / "o.db", close_timeout=5)
    chat._drainer.stop()  # type: ignore[union-attr]  # hold the entries: count them queued
    chat.queue_message("general", "one")
    chat.queue_message("general", "two")
    assert value(registry, "chatsdk_outbox_entries", status="queued") >= 2
    assert value(registry, "chatsdk_outbox_oldest_pending_age_seconds") >= 0
    chat.close()
    assert value(registry, "chatsdk_outbox_entries", status="queued") == 0  # closed: gone

    before = value(registry, "chatsdk_outbox_delivery_seconds_count")
    chat = ChatClient(BASE, KEY, outbox=tmp_path / "o.db", close_timeout=5)
    assert chat.flush(10)
    assert value(registry, "chatsdk_outbox_entries", status="sent") == 2
    assert value(registry, "chatsdk_outbox_delivery_seconds_count") == before + 2
    for status in STATUSES:
        assert registry.get_sample_value("chatsdk_outbox_entries", {"status": status}) is not None
    chat.close()


def test_an_unreadable_outbox_is_skipped_on_scrape(registry, tmp_path: Path, caplog) -> None:
    chat = ChatClient(BASE, KEY, outbox=tmp_path / "o.db", close_timeout=0)
    outbox = chat.outbox
    assert outbox is not None
    broken = type(outbox).stats

    def fail(self):  # type: ignore[no-untyped-def]
        from chatsdk import OutboxError

        raise OutboxError("disk on fire")

    try:
        type(outbox).stats = fail  # type: ignore[method-assign]
        assert value(registry, "chatsdk_outbox_entries", status="queued") == 0
    finally:
        type(outbox).stats = broken  # type: ignore[method-assign]
    assert "disk on fire" in caplog.text
    chat.close()


def test_realtime_reconnects_are_counted(registry) -> None:
    before = value(registry, "chatsdk_realtime_reconnects_total")
    PROCESS.emit(RealtimeReconnecting(url="ws://x", attempt=1, delay=0.1, close_code=None))
    assert value(registry, "chatsdk_realtime_reconnects_total") == before + 1


def test_register_is_idempotent_and_unregister_removes_everything() -> None:
    registry = CollectorRegistry()
    first = prom.register(registry)
    assert prom.register(registry) is first
    assert first in PROCESS._hooks
    prom.unregister(registry)
    assert first not in PROCESS._hooks
    assert list(registry.collect()) == []
    prom.unregister(registry)  # no-op


def test_a_name_taken_by_someone_else_is_an_error() -> None:
    registry = CollectorRegistry()
    Counter("chatsdk_realtime_reconnects", "not ours", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        prom.register(registry)
    assert not [h for h in PROCESS._hooks if isinstance(h, prom.ChatSDKMetrics)]
    # Left as it was: only the foreign metric, none of the ones built before the clash.
    assert [m.name for m in registry.collect()] == ["chatsdk_realtime_reconnects"]


def test_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    monkeypatch.setattr(prom, "REGISTRY", registry)
    metrics = prom.register()
    assert metrics.registry is registry
    prom.unregister()
    assert list(registry.collect()) == []
