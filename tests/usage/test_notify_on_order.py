"""User-style tests of shop.notify_on_order over the in-memory transport, in test mode.

This is how an app tests its own chatsdk code: the ``chatsdk_memory`` client (no server,
no sockets, no waits), ``chatsdk_sent`` for what was posted, and the transport's scripted
faults for the bad days. ``benchmarks/bench_usage.py`` measures this file's real time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import chatsdk
from chatsdk.testing import InMemoryTransport, SentLog, advance
from tests.usage.shop import CHANNEL, Order, notify_on_order, order_text

ORDER = Order(id=42, customer="Ada", total_cents=1999)
KEY = chatsdk.idempotency_key_for("order-placed", "42")


@pytest.fixture
def chat_with_outbox(
    chatsdk_transport: InMemoryTransport, chatsdk_testing: None, tmp_path: Path
) -> Iterator[chatsdk.ChatClient]:
    client = chatsdk.ChatClient(
        chatsdk_transport.url,
        "test-key",
        transport=chatsdk_transport,
        outbox=tmp_path / "outbox.db",
    )
    try:
        yield client
    finally:
        client.close()


def test_an_order_posts_one_message(
    chatsdk_memory: chatsdk.ChatClient, chatsdk_sent: SentLog
) -> None:
    assert notify_on_order(chatsdk_memory, ORDER) == "sent"
    assert [(s.kind, s.text, s.idempotency_key) for s in chatsdk_sent] == [
        ("message", order_text(ORDER), KEY)
    ]
    assert chatsdk_sent.messages[0].channel_id == CHANNEL


def test_notifying_twice_posts_once(
    chatsdk_memory: chatsdk.ChatClient, chatsdk_sent: SentLog
) -> None:
    notify_on_order(chatsdk_memory, ORDER)
    notify_on_order(chatsdk_memory, ORDER)  # e.g. the task was retried
    assert len(chatsdk_sent) == 1


def test_a_503_then_success(
    chatsdk_memory: chatsdk.ChatClient,
    chatsdk_transport: InMemoryTransport,
    chatsdk_sent: SentLog,
) -> None:
    chatsdk_transport.fail_next(1, status=503, retry_after=2)
    assert notify_on_order(chatsdk_memory, ORDER) == "sent"
    assert [a.status for a in chatsdk_transport.attempts] == [503, 201]
    assert {a.idempotency_key for a in chatsdk_transport.attempts} == {KEY}
    assert len(chatsdk_sent) == 1


def test_a_lost_response_is_not_a_duplicate(
    chatsdk_memory: chatsdk.ChatClient,
    chatsdk_transport: InMemoryTransport,
    chatsdk_sent: SentLog,
) -> None:
    chatsdk_transport.drop_after_next()
    assert notify_on_order(chatsdk_memory, ORDER) == "sent"
    assert len(chatsdk_sent) == 1
    assert chatsdk_transport.counters()["replays"] == 1


def test_a_permanent_400_is_recorded_not_retried(
    chatsdk_memory: chatsdk.ChatClient,
    chatsdk_transport: InMemoryTransport,
    chatsdk_sent: SentLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    chatsdk_transport.fail_next(status=400)
    assert notify_on_order(chatsdk_memory, ORDER) == "rejected"
    assert len(chatsdk_transport.attempts) == 1
    assert chatsdk_sent == []
    assert "refused the notification (400)" in caplog.text


def test_without_an_outbox_an_outage_reaches_the_caller(
    chatsdk_memory: chatsdk.ChatClient, chatsdk_transport: InMemoryTransport
) -> None:
    with chatsdk_transport.outage(), pytest.raises(chatsdk.TransportError):
        notify_on_order(chatsdk_memory, ORDER)


def test_an_outage_with_the_outbox(
    chat_with_outbox: chatsdk.ChatClient,
    chatsdk_transport: InMemoryTransport,
    chatsdk_sent: SentLog,
) -> None:
    with chatsdk_transport.outage():
        assert notify_on_order(chat_with_outbox, ORDER) == "queued"
        assert notify_on_order(chat_with_outbox, Order(43, "Bob", 500)) == "queued"
        assert not chat_with_outbox.flush()  # still down: nothing can be delivered
        assert chatsdk_sent == []
    assert chat_with_outbox.flush()  # back: delivered in this thread, in order
    assert [s.text for s in chatsdk_sent] == [order_text(ORDER), order_text(Order(43, "Bob", 500))]
    assert chatsdk_sent[0].idempotency_key == KEY
    outbox = chat_with_outbox.outbox
    assert outbox is not None and not outbox.has_pending()


def test_the_breaker_after_an_outage(
    chatsdk_memory: chatsdk.ChatClient, chatsdk_transport: InMemoryTransport
) -> None:
    with chatsdk_transport.outage():
        for _ in range(2):  # one failed call is a blip; the second opens the circuit
            with pytest.raises(chatsdk.TransportError):
                notify_on_order(chatsdk_memory, ORDER)
    breaker = chatsdk_memory.session.breaker_for()
    assert breaker is not None and breaker.state is chatsdk.CircuitState.OPEN
    with pytest.raises(chatsdk.CircuitBreakerOpenError):
        notify_on_order(chatsdk_memory, ORDER)  # told the truth at once, nothing sent
    advance(breaker.retry_after)  # the breaker's wait, without waiting
    assert notify_on_order(chatsdk_memory, ORDER) == "sent"
