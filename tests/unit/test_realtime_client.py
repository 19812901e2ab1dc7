"""RealtimeClient against a scriptable fake Centrifugo server (tests/unit/realtime_fake.py)."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chatsdk import CircuitBreakerOpenError, RealtimeError, UnauthorizedError, ValidationError
from chatsdk._realtime.client import RealtimeClient, RealtimeState
from chatsdk._realtime.connection import CODE_NO_PING, CODE_REPLY_TIMEOUT, CODE_TOKEN_ERROR
from chatsdk._realtime.protocol import MAX_FRAME_BYTES
from chatsdk._realtime.subscription import Publication, StreamPosition, SubscriptionState
from tests.helpers import Collector, realtime_clients, realtime_threads, wait_until
from tests.unit.realtime_fake import FakeConn, FakeServer

WAIT = 5.0
CLIENT_DEFAULTS = {
    "token": "t0",
    "min_reconnect_delay": 0.01,
    "max_reconnect_delay": 0.05,
    "restart_spread": 0.02,
    "timeout": 2.0,
}


class MaxRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def make_client() -> Iterator[Callable[..., RealtimeClient]]:
    with realtime_clients(CLIENT_DEFAULTS) as make:
        yield make


def push(channel: str, offset: int, data: Any = None) -> str:
    return json.dumps(
        {"push": {"channel": channel, "pub": {"data": data or {"n": offset}, "offset": offset}}}
    )


# -- connecting -----------------------------------------------------------------------------


def test_connect_returns_at_once_and_sends_connect_first(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    changes: list[tuple[str, str]] = []
    client = make_client(fake.url, on_state_change=lambda o, n: changes.append((o.value, n.value)))
    assert client.state is RealtimeState.DISCONNECTED
    client.connect()
    client.connect()  # idempotent
    assert client.wait_connected(WAIT)
    first = fake.last.lines[0]
    assert first["id"] == 1 and first["connect"]["token"] == "t0"
    assert first["connect"]["name"] == "chatsdk" and first["connect"]["version"]
    client.close()
    assert changes == [
        ("disconnected", "connecting"),
        ("connecting", "connected"),
        ("connected", "closed"),
    ]
    assert client.state is RealtimeState.CLOSED
    with pytest.raises(RealtimeError):
        client.connect()
    with pytest.raises(RealtimeError):
        client.subscribe("x", lambda p: None)


def test_token_is_fetched_before_every_socket_opens(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    seen_connections: list[int] = []

    def get_token() -> str:
        seen_connections.append(len(fake.conns))
        return f"tok{len(seen_connections)}"

    client = make_client(fake.url, get_token=get_token)
    client.connect()
    assert client.wait_connected(WAIT)
    fake.close(3001, "shutdown")
    assert fake.wait_for(lambda: len(fake.conns) == 2 and bool(fake.conns[1].lines))
    assert seen_connections == [0, 1]
    assert fake.conns[1].lines[0]["connect"]["token"] == "tok2"


def test_token_expired_error_refetches_and_reconnects(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    tokens = iter(["old", "new"])
    fake.connect_handler = lambda conn, params: (
        {"id": 1, "error": {"code": 109, "message": "token expired"}}
        if params["token"] == "old"
        else {"id": 1, "connect": {"client": "c"}}
    )
    client = make_client(fake.url, get_token=lambda: next(tokens))
    client.connect()
    assert client.wait_connected(WAIT)
    assert len(fake.conns) == 2


@pytest.mark.parametrize(
    "error",
    [{"code": 100, "message": "internal", "temporary": True}, {"code": 42, "message": "transport"}],
)
def test_retryable_connect_errors_reconnect(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], error: dict[str, Any]
) -> None:
    fake.connect_error = error
    client = make_client(fake.url)
    client.connect()
    assert fake.wait_for(lambda: len(fake.conns) >= 3)
    fake.connect_error = None
    assert client.wait_connected(WAIT)
    assert client.stats().attempts >= 3


def test_final_connect_error_stops(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    fake.connect_error = {"code": 101, "message": "unauthorized"}
    client = make_client(fake.url)
    client.connect()
    assert not client.wait_connected(WAIT)
    assert client.state is RealtimeState.DISCONNECTED
    assert client.error is not None and client.error.code == 101
    assert client.last_close_code == 101
    assert not fake.wait_for(lambda: len(fake.conns) > 1, 0.2)


def test_unauthorized_token_fetch_is_final(make_client: Callable[..., RealtimeClient]) -> None:
    def refuse() -> str:
        raise UnauthorizedError(401, "unauthorized", "bad key")

    client = make_client("ws://127.0.0.1:9/connection/websocket", get_token=refuse)
    client.connect()
    assert not client.wait_connected(WAIT)
    assert client.error is not None and client.error.code == CODE_TOKEN_ERROR
    assert client.stats().attempts == 1


def test_failing_token_fetch_retries(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("token endpoint down")
        return "t"

    client = make_client(fake.url, get_token=flaky)
    client.connect()
    assert client.wait_connected(WAIT)
    assert len(calls) == 3 and len(fake.conns) == 1


@pytest.mark.parametrize("code", [3500, 3501, 3502, 3999, 4500, 4999])
def test_final_close_codes_stop(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], code: int
) -> None:
    client = make_client(fake.url)
    client.connect()
    assert client.wait_connected(WAIT)
    fake.close(code, "go away")
    assert wait_until(lambda: client.state is RealtimeState.DISCONNECTED)
    assert client.last_close_code == code and client.last_close_reason == "go away"
    assert client.error is not None and client.error.code == code
    assert not client.wait_connected(0.01)
    assert not fake.wait_for(lambda: len(fake.conns) > 1, 0.2)
    # an explicit connect() starts over
    client.connect()
    assert client.wait_connected(WAIT)


# (>= 5000 is no valid WebSocket close code: websocket-client rejects the frame, a 1006 drop)
@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 3000, 3001, 3005, 3012, 4000, 4499])
def test_other_close_codes_reconnect(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], code: int
) -> None:
    client = make_client(fake.url)
    client.connect()
    assert client.wait_connected(WAIT)
    fake.close(code, "bye")
    assert fake.wait_for(lambda: len(fake.conns) == 2)
    assert client.wait_connected(WAIT)
    assert client.last_close_code == code


def test_abnormal_drop_reconnects_as_1006(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(fake.url)
    client.connect()
    assert client.wait_connected(WAIT)
    fake.abort()
    assert fake.wait_for(lambda: len(fake.conns) == 2)
    assert client.wait_connected(WAIT)
    assert client.last_close_code == 1006


def test_connect_reply_timeout_reconnects(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    answered = []

    def handler(conn: FakeConn, params: dict[str, Any]) -> dict[str, Any] | None:
        answered.append(1)
        return None if len(answered) == 1 else {"id": 1, "connect": {}}

    fake.connect_handler = handler
    client = make_client(fake.url, timeout=0.3)
    client.connect()
    assert client.wait_connected(WAIT)
    assert len(fake.conns) == 2 and client.last_close_code == CODE_REPLY_TIMEOUT


def test_malformed_connect_reply_is_dropped_then_times_out(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    answered = []

    def handler(conn: FakeConn, params: dict[str, Any]) -> dict[str, Any]:
        answered.append(1)
        if len(answered) == 1:
            return {"id": 1, "connect": {"ping": "soon"}}
        return {"id": 1, "connect": {}}

    fake.connect_handler = handler
    client = make_client(fake.url, timeout=0.3)
    client.connect()
    assert client.wait_connected(WAIT)
    assert client.stats().dropped_lines == 1
    assert client.last_close_code == CODE_REPLY_TIMEOUT


def test_subscribe_reply_timeout_reconnects(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    calls = []

    def on_subscribe(conn: FakeConn, params: dict[str, Any]) -> dict[str, Any] | None:
        calls.append(params)
        return None if len(calls) == 1 else {"recoverable": True, "epoch": "e", "offset": 0}

    fake.subscribe_handler = on_subscribe
    client = make_client(fake.url, timeout=0.3)
    client.connect()
    sub = client.subscribe("chat:1", lambda p: None)
    assert sub.wait_subscribed(WAIT)
    assert len(fake.conns) == 2 and client.last_close_code == CODE_REPLY_TIMEOUT


# -- ping / pong / liveness ---------------------------------------------------------------


def test_exactly_one_pong_per_ping(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(fake.url)
    client.connect()
    assert client.wait_connected(WAIT)
    fake.send("{}")
    fake.send("{}\n{}\n")
    fake.send('{}\n{"push":{"channel":"x","join":{"info":{}}}}')
    assert fake.wait_for(lambda: fake.pongs == 4)
    assert not fake.wait_for(lambda: fake.pongs > 4, 0.3)
    assert client.stats().pings == 4 and client.stats().pongs == 4


def test_no_pong_unless_asked(fake: FakeServer, make_client: Callable[..., RealtimeClient]) -> None:
    fake.connect_result = {"client": "c", "ping": 25, "pong": False}
    client = make_client(fake.url)
    client.connect()
    assert client.wait_connected(WAIT)
    fake.send("{}")
    assert wait_until(lambda: client.stats().pings == 1)
    assert not fake.wait_for(lambda: fake.pongs > 0, 0.3)


def test_silent_server_detected_within_ping_plus_grace(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    fake.connect_result = {"client": "c", "ping": 0.2, "pong": True}
    client = make_client(fake.url, ping_grace=0.2)
    client.connect()
    assert client.wait_connected(WAIT)
    assert fake.wait_for(lambda: len(fake.conns) == 2)
    assert client.last_close_code == CODE_NO_PING  # the ping deadline, not another cause


def test_pings_keep_connection_alive(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    fake.connect_result = {"client": "c", "ping": 0.2, "pong": True}
    client = make_client(fake.url, ping_grace=0.1)
    client.connect()
    assert client.wait_connected(WAIT)
    for _ in range(6):
        fake.send("{}")
        assert not fake.wait_for(lambda: len(fake.conns) > 1, 0.1)
    assert len(fake.conns) == 1


def test_no_watchdog_without_ping(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(fake.url, ping_grace=0.05)
    client.connect()
    assert client.wait_connected(WAIT)
    assert not fake.wait_for(lambda: len(fake.conns) > 1, 0.4)


def test_slow_callback_does_not_delay_pong(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    release = threading.Event()
    client = make_client(fake.url)
    client.connect()
    sub = client.subscribe("chat:1", lambda p: release.wait(WAIT))
    assert sub.wait_subscribed(WAIT)
    fake.send(push("chat:1", 1))
    fake.send("{}")
    assert fake.wait_for(lambda: fake.pongs == 1, 1.0)
    release.set()


# -- refresh --------------------------------------------------------------------------------


def test_token_refreshed_before_ttl(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    fake.connect_result = {"client": "c", "expires": True, "ttl": 1}
    tokens = iter(f"t{i}" for i in range(100))
    client = make_client(fake.url, get_token=lambda: next(tokens))
    client.connect()
    assert client.wait_connected(WAIT)
    assert fake.wait_for(lambda: fake.refreshes == ["t1"], WAIT)
    assert len(fake.conns) == 1


# -- reconnect policy -----------------------------------------------------------------------


def test_restart_spread_and_backoff_with_injected_random(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(
        fake.url,
        random=MaxRandom(),
        restart_spread=0.07,
        min_reconnect_delay=0.01,
        max_reconnect_delay=1.0,
    )
    client.connect()
    assert client.wait_connected(WAIT)
    for n, code in enumerate((1001, 3001, 1012), start=2):
        fake.close(code)
        assert fake.wait_for(lambda n=n: len(fake.conns) == n)
        assert client.wait_connected(WAIT)
    fake.close(3000)  # not a restart code: the backoff formula, step 0 then 1
    assert fake.wait_for(lambda: len(fake.conns) == 5)
    assert client.wait_connected(WAIT)
    fake.close(3000)
    assert fake.wait_for(lambda: len(fake.conns) == 6)
    assert client.wait_connected(WAIT)
    assert client.stats().reconnect_delays == pytest.approx((0.07, 0.07, 0.07, 0.02, 0.03))


def test_failed_attempts_after_a_restart_keep_the_restart_spread(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    refuse = {"on": True}
    fake.connect_handler = lambda conn, params: (
        {"id": 1, "error": {"code": 100, "message": "starting", "temporary": True}}
        if refuse["on"] and len(fake.conns) > 1
        else {"id": 1, "connect": {}}
    )
    client = make_client(
        fake.url,
        random=MaxRandom(),
        restart_spread=0.06,
        min_reconnect_delay=0.01,
        max_reconnect_delay=1.0,
    )
    client.connect()
    assert client.wait_connected(WAIT)
    fake.close(1012)
    assert fake.wait_for(lambda: len(fake.conns) == 3)
    refuse["on"] = False
    assert client.wait_connected(WAIT)
    # spread, then min + max(spread, formula) for each failure while the server restarts
    assert client.stats().reconnect_delays[:2] == pytest.approx((0.06, 0.07))


def test_backoff_resets_after_stable(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(
        fake.url,
        random=MaxRandom(),
        stable_after=0.2,
        min_reconnect_delay=0.01,
        max_reconnect_delay=1.0,
    )
    client.connect()
    assert client.wait_connected(WAIT)
    fake.close(3000)
    assert fake.wait_for(lambda: len(fake.conns) == 2)
    assert client.wait_connected(WAIT)
    assert not fake.wait_for(lambda: False, 0.3)  # stays up past stable_after
    fake.close(3000)
    assert fake.wait_for(lambda: len(fake.conns) == 3)
    assert client.stats().reconnect_delays == pytest.approx((0.02, 0.02))


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/connection/websocket"


def test_suspended_then_gives_up(make_client: Callable[..., RealtimeClient]) -> None:
    states: list[RealtimeState] = []
    client = make_client(
        free_port_url(),
        suspend_after=2,
        max_reconnect_attempts=4,
        on_state_change=lambda o, n: states.append(n),
        min_reconnect_delay=0.001,
        max_reconnect_delay=0.005,
    )
    client.connect()
    assert not client.wait_connected(WAIT)
    assert client.state is RealtimeState.DISCONNECTED
    assert client.stats().attempts == 4
    assert client.error is not None and "gave up" in str(client.error)
    assert wait_until(lambda: RealtimeState.DISCONNECTED in states)
    assert states.index(RealtimeState.SUSPENDED) > states.index(RealtimeState.CONNECTING)


def test_never_gives_up_by_default(make_client: Callable[..., RealtimeClient]) -> None:
    client = make_client(free_port_url(), min_reconnect_delay=0.001, max_reconnect_delay=0.002)
    client.connect()
    assert wait_until(lambda: client.stats().attempts >= 15)
    assert client.state is RealtimeState.SUSPENDED


class FakePermit:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.done = False

    def _end(self, what: str) -> None:
        if not self.done:
            self.done = True
            self.log.append(what)

    def success(self) -> None:
        self._end("success")

    def failure(self) -> None:
        self._end("failure")

    def release(self) -> None:
        self._end("release")


class FakeBreaker:
    def __init__(self, closed_after: int) -> None:
        self.calls = 0
        self.closed_after = closed_after
        self.log: list[str] = []

    def acquire(self) -> FakePermit:
        self.calls += 1
        if self.calls <= self.closed_after:
            raise CircuitBreakerOpenError("ws:test", 0.05)
        return FakePermit(self.log)


def test_breaker_open_waits_retry_after_and_records_outcomes(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    breaker = FakeBreaker(closed_after=2)
    client = make_client(fake.url, breaker=breaker)
    client.connect()
    assert client.wait_connected(WAIT)
    assert client.stats().reconnect_delays == pytest.approx((0.05, 0.05))
    assert client.stats().attempts == 1
    fake.close(3000)  # a drop within 5 s of connecting: a failure
    assert fake.wait_for(lambda: len(fake.conns) == 2)
    assert client.wait_connected(WAIT)
    client.close()
    assert breaker.log == ["failure", "release"]


def test_breaker_handshake_failure(make_client: Callable[..., RealtimeClient]) -> None:
    breaker = FakeBreaker(closed_after=0)
    client = make_client(free_port_url(), breaker=breaker, max_reconnect_attempts=2)
    client.connect()
    assert not client.wait_connected(WAIT)
    assert breaker.log == ["failure", "failure"]


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        RealtimeClient("http://x")
    with pytest.raises(ValueError):
        RealtimeClient("ws://x", min_reconnect_delay=2, max_reconnect_delay=1)
    with pytest.raises(ValueError):
        RealtimeClient("ws://x", timeout=0)
    with pytest.raises(ValueError):
        RealtimeClient("ws://x", max_reconnect_attempts=0)


# -- subscriptions --------------------------------------------------------------------------


def test_subscribe_before_connect_and_publications(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    got = Collector()
    client = make_client(fake.url)
    sub = client.subscribe("chat:1", got)
    assert sub.state is SubscriptionState.SUBSCRIBING
    with pytest.raises(ValidationError):
        client.subscribe("chat:1", got)
    with pytest.raises(ValidationError):
        client.subscribe("", got)
    client.connect()
    assert sub.wait_subscribed(WAIT)
    fake.send(push("chat:1", 1) + "\n" + push("chat:1", 2) + "\n" + push("chat:1", 2))
    fake.send(push("chat:2", 1))  # not subscribed: ignored
    assert got.wait_count(2)
    assert got.offsets == [1, 2] and got.items[0].data == {"n": 1}
    assert got.items[0].channel == "chat:1" and got.items[0].epoch == "e1"
    assert wait_until(lambda: sub.position == StreamPosition(2, "e1"))
    assert client.stats().duplicates_dropped == 1
    assert client.subscriptions() == [sub]


def test_resubscribe_recovers_after_reconnect(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    def on_subscribe(conn: FakeConn, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("recover"):
            assert params["offset"] == 1 and params["epoch"] == "e1"
            return {
                "recoverable": True,
                "epoch": "e1",
                "offset": 1,
                "recovered": True,
                "was_recovering": True,
                "publications": [{"data": {"n": 2}, "offset": 2}, {"data": {"n": 3}, "offset": 3}],
            }
        return {"recoverable": True, "epoch": "e1", "offset": 0}

    fake.subscribe_handler = on_subscribe
    got = Collector()
    client = make_client(fake.url)
    client.connect()
    sub = client.subscribe("chat:1", got)
    assert sub.wait_subscribed(WAIT)
    fake.send(push("chat:1", 1))
    assert got.wait_count(1)
    fake.close(3001)
    assert got.wait_count(3)
    fake.send(push("chat:1", 3) + "\n" + push("chat:1", 4))
    assert got.wait_count(4)
    assert got.offsets == [1, 2, 3, 4]
    assert client.stats().recoveries == 1
    assert len(client.stats().reconnect_times) == 1


def test_gap_triggers_resubscribe_and_recovery(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    def on_subscribe(conn: FakeConn, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("recover"):
            return {
                "recoverable": True,
                "epoch": "e1",
                "offset": params["offset"],
                "recovered": True,
                "was_recovering": True,
                "publications": [{"data": {}, "offset": 2}],
            }
        return {"recoverable": True, "epoch": "e1", "offset": 0}

    fake.subscribe_handler = on_subscribe
    got = Collector()
    client = make_client(fake.url)
    client.connect()
    sub = client.subscribe("chat:1", got)
    assert sub.wait_subscribed(WAIT)
    fake.send(push("chat:1", 1) + "\n" + push("chat:1", 3))
    assert got.wait_count(3)
    assert got.offsets == [1, 2, 3]
    kinds = [next(k for k in line if k != "id") for line in fake.last.lines]
    assert kinds == ["connect", "subscribe", "unsubscribe", "subscribe"]
    assert client.stats().gaps == 1 and len(fake.conns) == 1


def test_recovery_failed_callback_then_stream_continues(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    fake.subscribe_handler = lambda conn, params: {
        "recoverable": True,
        "epoch": "e2",
        "offset": 7,
        "recovered": False,
        "was_recovering": True,
    }
    failed: list[str] = []
    got = Collector()
    client = make_client(fake.url)
    client.connect()
    sub = client.subscribe(
        "chat:1", got, on_recovery_failed=failed.append, since=StreamPosition(3, "e1")
    )
    assert sub.wait_subscribed(WAIT)
    fake.send(push("chat:1", 8))
    assert got.wait_count(1)
    assert failed == ["chat:1"]
    assert got.items[0].epoch == "e2" and sub.position == StreamPosition(8, "e2")
    assert fake.commands("subscribe")[0]["subscribe"] == {
        "channel": "chat:1",
        "recover": True,
        "offset": 3,
        "epoch": "e1",
    }


def test_callback_exception_is_logged_and_stream_continues(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], caplog: pytest.LogCaptureFixture
) -> None:
    got = Collector()

    def explode(pub: Publication) -> None:
        got(pub)
        if pub.offset == 1:
            raise RuntimeError("app bug")

    client = make_client(fake.url)
    client.connect()
    sub = client.subscribe("chat:1", explode)
    assert sub.wait_subscribed(WAIT)
    with caplog.at_level(logging.ERROR, logger="chatsdk._realtime.dispatch"):
        fake.send(push("chat:1", 1))
        fake.send(push("chat:1", 2))
        assert got.wait_count(2)
    assert "callback raised" in caplog.text
    assert client.state is RealtimeState.CONNECTED


def test_unsubscribe(fake: FakeServer, make_client: Callable[..., RealtimeClient]) -> None:
    got = Collector()
    client = make_client(fake.url)
    client.connect()
    sub = client.subscribe("chat:1", got)
    assert sub.wait_subscribed(WAIT)
    sub.unsubscribe()
    assert sub.state is SubscriptionState.UNSUBSCRIBED
    assert fake.wait_for(lambda: bool(fake.commands("unsubscribe")))
    fake.send(push("chat:1", 1))
    fake.close(3001)
    assert fake.wait_for(lambda: len(fake.conns) == 2)
    assert client.wait_connected(WAIT)
    assert fake.commands("subscribe", fake.conns[1]) == []
    assert got.items == []
    client.subscribe("chat:1", got)  # may subscribe again


def test_server_unsubscribe_push(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(fake.url)
    client.connect()
    a = client.subscribe("chat:a", lambda p: None)
    b = client.subscribe("chat:b", lambda p: None)
    assert a.wait_subscribed(WAIT) and b.wait_subscribed(WAIT)
    fake.send(
        json.dumps({"push": {"channel": "chat:a", "unsubscribe": {"code": 2000, "reason": "no"}}})
    )
    fake.send(json.dumps({"push": {"channel": "chat:b", "unsubscribe": {"code": 2500}}}))
    assert fake.wait_for(lambda: len(fake.commands("subscribe")) == 3)
    assert wait_until(lambda: a.state is SubscriptionState.UNSUBSCRIBED)
    assert a.error is not None and a.error.code == 2000
    assert b.wait_subscribed(WAIT)
    assert fake.commands("subscribe")[-1]["subscribe"]["channel"] == "chat:b"


def test_subscribe_errors(fake: FakeServer, make_client: Callable[..., RealtimeClient]) -> None:
    counts: dict[str, int] = {}

    def on_subscribe(conn: FakeConn, params: dict[str, Any]) -> dict[str, Any]:
        channel = params["channel"]
        counts[channel] = counts.get(channel, 0) + 1
        if channel == "denied":
            return {"error": {"code": 103, "message": "permission denied"}}
        if channel == "busy" and counts[channel] < 3:
            return {"error": {"code": 100, "message": "internal", "temporary": True}}
        if channel == "dup" and counts[channel] == 1:
            return {"error": {"code": 105, "message": "already subscribed"}}
        return {"recoverable": True, "epoch": "e", "offset": 0}

    fake.subscribe_handler = on_subscribe
    client = make_client(fake.url)
    client.connect()
    denied = client.subscribe("denied", lambda p: None)
    busy = client.subscribe("busy", lambda p: None)
    dup = client.subscribe("dup", lambda p: None)
    assert busy.wait_subscribed(WAIT) and dup.wait_subscribed(WAIT)
    assert wait_until(lambda: denied.state is SubscriptionState.UNSUBSCRIBED)
    assert denied.error is not None and denied.error.code == 103
    assert counts == {"denied": 1, "busy": 3, "dup": 2}
    assert client.subscriptions() == [busy, dup]


def test_resubscribe_batches_split_below_frame_limit(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(fake.url)
    subs = [client.subscribe("chat:" + "c" * 300 + str(i), lambda p: None) for i in range(400)]
    client.connect()
    assert all(s.wait_subscribed(WAIT) for s in subs)
    frames = fake.last.frames[1:]
    assert len(frames) > 1
    assert all(len(f.encode()) < MAX_FRAME_BYTES for f in frames)
    assert len(fake.commands("subscribe")) == 400


def test_reconnect_listener_called_on_every_connect(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    woke = threading.Semaphore(0)
    client = make_client(fake.url)
    client.add_reconnect_listener(woke.release)
    client.connect()
    assert woke.acquire(timeout=WAIT)
    fake.close(1012)
    assert woke.acquire(timeout=WAIT)


def test_close_ends_threads_quickly(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(fake.url)
    client.connect()
    sub = client.subscribe("chat:1", lambda p: None)
    assert sub.wait_subscribed(WAIT)
    assert realtime_threads()
    client.close()
    assert realtime_threads() == []  # close() joined every thread it started
    assert sub.state is SubscriptionState.UNSUBSCRIBED
    client.close()  # idempotent


def test_close_during_backoff(make_client: Callable[..., RealtimeClient]) -> None:
    # A backoff longer than the test's timeout: close() must cut it short to return at all.
    client = make_client(free_port_url(), min_reconnect_delay=1000.0, max_reconnect_delay=1000.0)
    client.connect()
    assert wait_until(lambda: "handshake failed" in client.stats().last_error)
    client.close()
    assert realtime_threads() == []


def test_context_manager(fake: FakeServer) -> None:
    with RealtimeClient(fake.url, token="t") as client:
        client.connect()
        assert client.wait_connected(WAIT)
    assert client.state is RealtimeState.CLOSED
    assert realtime_threads() == []
