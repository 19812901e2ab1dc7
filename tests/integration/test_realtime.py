"""RealtimeClient against the reference server (chatsdk.testing.ReferenceServer)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from chatsdk import ChatClient
from chatsdk._realtime.client import RealtimeClient, RealtimeState
from chatsdk._realtime.connection import CODE_NO_PING
from chatsdk._realtime.events import MessageEvent, ReactionEvent
from chatsdk.testing import ReferenceServer
from tests.helpers import Collector, realtime_clients, realtime_threads, wait_until

WAIT = 10.0
FAST = {
    "min_reconnect_delay": 0.01,
    "max_reconnect_delay": 0.1,
    "restart_spread": 0.05,
    "timeout": 3.0,
}


def token_getter(server: ReferenceServer) -> Callable[[], str]:
    def get_token() -> str:
        response = requests.post(
            f"{server.url}/api/realtime/token", headers={"X-API-Key": "test-key"}, timeout=5
        )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    return get_token


@pytest.fixture
def make_client() -> Iterator[Callable[..., RealtimeClient]]:
    with realtime_clients(FAST) as make:

        def make_for(server: ReferenceServer, **options: Any) -> RealtimeClient:
            return make(server.ws_url, get_token=token_getter(server), **options)

        yield make_for


def test_exactly_once_in_order_across_20_disconnects_and_a_restart(
    chatsdk_server_factory: Callable[..., ReferenceServer],
    make_client: Callable[..., RealtimeClient],
) -> None:
    server = chatsdk_server_factory()
    stream = Collector(timeout=WAIT)
    client = make_client(server)
    client.connect()
    sub = client.subscribe("chat:42", stream)
    assert sub.wait_subscribed(WAIT)
    codes = [1000, 1001, 3001, 1011, 1012, 3000, 3005, 3012, 4000, 4499] * 2
    seq = 0
    for round_, code in enumerate(codes):
        for _ in range(3):
            server.publish("chat:42", {"seq": seq})
            seq += 1
        server.disconnect_websockets(code, "test")
        for _ in range(2):  # published while the client is away: recovered
            server.publish("chat:42", {"seq": seq})
            seq += 1
        assert stream.wait_count(seq)  # recovered: reconnected and resubscribed
        if round_ == 10:
            server.stop()
            server.start(keep_state=True)
            server.publish("chat:42", {"seq": seq})
            seq += 1
            assert stream.wait_count(seq)
    assert client.wait_connected(WAIT)
    server.publish("chat:42", {"seq": seq})
    seq += 1
    assert stream.wait_count(seq)
    assert not stream.wait_count(seq + 1, 0.2)
    assert stream.seqs == list(range(seq))
    offsets = [p.offset for p in stream.items]
    assert offsets == list(range(offsets[0], offsets[0] + seq))
    stats = client.stats()
    assert stats.connects == 22 and stats.recoveries == 21
    assert stats.recovery_failures == 0
    assert server.ws_stats()["connections"] == 1


def test_restart_without_state_reports_recovery_failed_and_continues(
    chatsdk_server_factory: Callable[..., ReferenceServer],
    make_client: Callable[..., RealtimeClient],
) -> None:
    server = chatsdk_server_factory()
    stream = Collector(timeout=WAIT)
    failed = threading.Event()
    client = make_client(server)
    client.connect()
    sub = client.subscribe("chat:7", stream, on_recovery_failed=lambda ch: failed.set())
    assert sub.wait_subscribed(WAIT)
    for seq in range(3):
        server.publish("chat:7", {"seq": seq})
    assert stream.wait_count(3)
    old_epoch = stream.items[-1].epoch
    server.stop()
    server.start()  # new epochs: the history is gone
    assert failed.wait(WAIT)
    for seq in range(3, 6):
        server.publish("chat:7", {"seq": seq})
    assert stream.wait_count(6)
    assert stream.seqs == list(range(6))
    assert stream.items[-1].epoch != old_epoch
    assert [p.offset for p in stream.items[3:]] == [1, 2, 3]
    assert client.stats().recovery_failures == 1


@pytest.mark.parametrize("code", [3500, 3503, 3504, 4500])
def test_final_codes_stop_reconnecting(
    chatsdk_server_factory: Callable[..., ReferenceServer],
    make_client: Callable[..., RealtimeClient],
    code: int,
) -> None:
    server = chatsdk_server_factory()
    client = make_client(server)
    client.connect()
    assert client.wait_connected(WAIT)
    server.disconnect_websockets(code, "stop it")
    assert wait_until(lambda: client.state is RealtimeState.DISCONNECTED, WAIT)
    assert client.last_close_code == code and client.last_close_reason == "stop it"
    assert client.error is not None and client.error.code == code
    assert not wait_until(lambda: server.ws_stats()["opens_total"] > 1, 0.3)


def test_3012_and_1006_reconnect(
    chatsdk_server_factory: Callable[..., ReferenceServer],
    make_client: Callable[..., RealtimeClient],
) -> None:
    server = chatsdk_server_factory()
    client = make_client(server)
    client.connect()
    assert client.wait_connected(WAIT)
    server.disconnect_websockets(3012, "no pong")
    assert wait_until(lambda: server.ws_stats()["connects_total"] == 2, WAIT)
    assert client.wait_connected(WAIT)
    assert client.last_close_code == 3012
    server.stop()  # resets every connection: 1006 on the client
    server.start()
    assert wait_until(lambda: server.ws_stats()["connects_total"] == 3, WAIT)
    assert client.wait_connected(WAIT)
    assert client.last_close_code == 1006


def test_silent_server_detected_within_ping_plus_grace(
    chatsdk_server_factory: Callable[..., ReferenceServer],
    make_client: Callable[..., RealtimeClient],
) -> None:
    server = chatsdk_server_factory(ping_interval=0.5)
    left = threading.Event()
    client = make_client(
        server,
        ping_grace=0.5,
        on_state_change=lambda old, new: left.set() if old is RealtimeState.CONNECTED else None,
    )
    client.connect()
    assert client.wait_connected(WAIT)
    assert wait_until(lambda: server.ws_stats()["pongs_received"] >= 1, WAIT)
    server.set_realtime_faults(silent=True)
    assert left.wait(WAIT)
    assert client.last_close_code == CODE_NO_PING  # left because the pings stopped
    server.set_realtime_faults(silent=False)
    assert client.wait_connected(WAIT)


def test_duplicated_and_skipped_pushes(
    chatsdk_server_factory: Callable[..., ReferenceServer],
    make_client: Callable[..., RealtimeClient],
) -> None:
    server = chatsdk_server_factory()
    stream = Collector(timeout=WAIT)
    client = make_client(server)
    client.connect()
    sub = client.subscribe("chat:9", stream)
    assert sub.wait_subscribed(WAIT)
    server.set_realtime_faults(duplicate_rate=0.3, skip_rate=0.15, seed=3)
    pause = threading.Event()
    for seq in range(150):
        server.publish("chat:9", {"seq": seq})
        if seq % 10 == 0:
            pause.wait(0.005)  # let some recoveries interleave with live pushes
    server.set_realtime_faults()
    server.publish("chat:9", {"seq": 150})  # reveals a gap left by a skipped last push
    assert stream.wait_count(151)
    assert not stream.wait_count(152, 0.2)
    assert stream.seqs == list(range(151))
    stats = client.stats()
    ws = server.ws_stats()
    assert ws["pushes_duplicated"] > 0 and ws["pushes_skipped"] > 0
    assert stats.duplicates_dropped > 0 and stats.gaps > 0
    assert ws["connects_total"] == 1


def test_irregular_pings_one_pong_each(
    chatsdk_server_factory: Callable[..., ReferenceServer],
    make_client: Callable[..., RealtimeClient],
) -> None:
    server = chatsdk_server_factory(ping_interval=0.3)
    client = make_client(server, ping_grace=1.0)
    client.connect()
    assert client.wait_connected(WAIT)
    rng = random.Random(5)
    gap = threading.Event()
    for _ in range(25):
        for _ in range(rng.choice([1, 1, 2, 3])):
            server.send_ping()
        gap.wait(rng.uniform(0, 0.04))
    assert wait_until(
        lambda: server.ws_stats()["pongs_received"] == server.ws_stats()["pings_sent"], WAIT
    )
    stats = server.ws_stats()
    assert stats["pings_sent"] >= 25
    assert stats["unexpected_pongs"] == 0
    assert stats["connects_total"] == 1 and stats["connections"] == 1
    assert client.stats().pongs == client.stats().pings == stats["pings_sent"]


def test_token_refresh_keeps_connection(
    chatsdk_server_factory: Callable[..., ReferenceServer],
    make_client: Callable[..., RealtimeClient],
) -> None:
    server = chatsdk_server_factory(token_ttl=1.0)
    client = make_client(server)
    client.connect()
    assert client.wait_connected(WAIT)
    assert not wait_until(lambda: server.ws_stats()["connects_total"] > 1, 2.5)
    assert client.state is RealtimeState.CONNECTED
    assert server.counters().get("tokens_issued", 0) >= 3


def test_chat_client_realtime_typed_events(chatsdk_server: ReferenceServer) -> None:
    events: list[Any] = []
    got = threading.Semaphore(0)

    def on_event(event: Any) -> None:
        events.append(event)
        got.release()

    with ChatClient(chatsdk_server.url, "test-key") as chat:
        realtime = chat.realtime(**FAST)
        assert realtime._breaker is chat.session.breaker_for(realtime.url, kind="ws")
        assert realtime._breaker is not None and realtime._breaker.name.startswith("ws:")
        try:
            realtime.connect()
            sub = realtime.subscribe_channel("general", on_event)
            assert sub.wait_subscribed(WAIT)
            message = chat.send_message("general", "hello")
            chat.add_reaction(message.id, "+1")
            chat.edit_message(message.id, "hello again")
            for _ in range(3):
                assert got.acquire(timeout=WAIT)
            chatsdk_server.publish("chat:general", {"type": "mystery"})  # skipped, logged
            chat.delete_message(message.id)
            assert got.acquire(timeout=WAIT)
        finally:
            realtime.close()
    kinds = [e.type for e in events]
    assert kinds == ["message.new", "reaction.added", "message.updated", "message.deleted"]
    assert isinstance(events[0], MessageEvent) and events[0].message == message
    assert events[0].channel_id == "general"
    assert isinstance(events[1], ReactionEvent) and events[1].reaction.reaction == "+1"
    assert realtime_threads() == []
