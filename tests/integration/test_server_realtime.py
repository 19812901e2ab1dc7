"""The reference server's realtime endpoint, driven with websocket-client's raw WebSocket."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import websocket

from chatsdk.testing import ReferenceServer
from tests.helpers import FakeClock, wait_until

KEY = {"X-API-Key": "test-key"}
CLOSE = websocket.ABNF.OPCODE_CLOSE


_OPEN: list[Ws] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Ws:
    """A raw protocol client: send commands, read JSON objects and the close code."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        _OPEN.append(self)
        self.ws = websocket.WebSocket()
        self.ws.connect(url, timeout=timeout)  # type: ignore[no-untyped-call]
        self.pending: deque[dict[str, Any]] = deque()
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames = 0
        self.next_id = 0

    def send(self, *commands: dict[str, Any]) -> None:
        self.ws.send("\n".join(json.dumps(c) for c in commands))

    def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        self.send({"id": self.next_id, method: params})
        return self.reply(self.next_id)

    def reply(self, command_id: int) -> dict[str, Any]:
        while True:
            obj = self.recv()
            if obj.get("id") == command_id:
                return obj
            assert obj == {} or "push" in obj, obj
            if obj == {}:
                self.send({})

    def _read_frame(self) -> None:
        # Raw frames: no automatic close reply (the peer may be gone already).
        frame = self.ws.recv_frame()  # type: ignore[no-untyped-call]
        opcode = frame.opcode
        if opcode == CLOSE:
            self.close_code = int.from_bytes(frame.data[:2], "big")
            self.close_reason = frame.data[2:].decode()
            raise ConnectionAbortedError(self.close_code)
        if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            self.frames += 1
            for line in frame.data.decode().split("\n"):
                if line.strip():
                    self.pending.append(json.loads(line))

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        self.ws.settimeout(timeout)
        while not self.pending:
            self._read_frame()
        return self.pending.popleft()

    def push(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next publication push (answering pings on the way)."""
        while True:
            obj = self.recv(timeout)
            if obj == {}:
                self.send({})
                continue
            assert "push" in obj, obj
            return obj["push"]  # type: ignore[no-any-return]

    def closed_with(self, timeout: float = 5.0) -> int:
        self.ws.settimeout(timeout)
        try:
            while True:
                self._read_frame()
        except ConnectionAbortedError:
            pass
        assert self.close_code is not None
        return self.close_code

    def quiet(self, timeout: float) -> bool:
        """True when nothing arrives for ``timeout`` seconds."""
        if self.pending:
            return False
        self.ws.settimeout(timeout)
        try:
            self._read_frame()
        except websocket.WebSocketTimeoutException:
            return True
        return False

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except (OSError, websocket.WebSocketException):
            pass
        finally:
            self.ws.shutdown()  # type: ignore[no-untyped-call]


def token(srv: ReferenceServer) -> str:
    response = requests.post(f"{srv.url}/api/realtime/token", headers=KEY, timeout=5)
    return str(response.json()["token"])


def connect(srv: ReferenceServer) -> Ws:
    ws = Ws(srv.ws_url)
    reply = ws.command("connect", {"token": token(srv), "name": "test"})
    assert "connect" in reply, reply
    return ws


def post(srv: ReferenceServer, channel: str, text: str) -> dict[str, Any]:
    response = requests.post(
        f"{srv.url}/api/messages",
        json={"channelId": channel, "text": text},
        headers=KEY,
        timeout=5,
    )
    assert response.status_code == 201
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def srv() -> Iterator[ReferenceServer]:
    with ReferenceServer() as s:
        yield s


@pytest.fixture
def ws(srv: ReferenceServer) -> Iterator[Ws]:
    client = connect(srv)
    yield client
    client.close()


# -- connect, subscribe, publications ------------------------------------------------------


def test_connect_reply(srv: ReferenceServer) -> None:
    client = Ws(srv.ws_url)
    reply = client.command("connect", {"token": token(srv), "name": "t", "version": "1"})
    result = reply["connect"]
    assert result["pong"] is True
    assert result["expires"] is True
    assert result["ping"] == 25
    assert 3590 <= result["ttl"] <= 3600
    assert len(result["client"]) == 36
    assert srv.ws_stats()["connections"] == 1
    assert srv.ws_stats()["connects_total"] == 1
    client.close()


def test_every_rest_change_is_published(srv: ReferenceServer, ws: Ws) -> None:
    reply = ws.command("subscribe", {"channel": "chat:room"})
    assert reply["subscribe"]["recoverable"] is True
    assert reply["subscribe"]["offset"] == 0
    epoch = reply["subscribe"]["epoch"]
    message = post(srv, "room", "hello")
    url = f"{srv.url}/api/messages/{message['id']}"
    requests.patch(url, json={"text": "edited"}, headers=KEY, timeout=5)
    requests.post(
        f"{srv.url}/api/reactions",
        json={"messageId": message["id"], "reaction": "+1"},
        headers=KEY,
        timeout=5,
    )
    requests.delete(f"{url}/reactions/+1", headers=KEY, timeout=5)
    requests.delete(url, headers=KEY, timeout=5)
    requests.delete(url, headers=KEY, timeout=5)  # already deleted: nothing published
    post(srv, "other-room", "not for us")
    pushes = [ws.push() for _ in range(5)]
    assert [p["channel"] for p in pushes] == ["chat:room"] * 5
    assert [p["pub"]["offset"] for p in pushes] == [1, 2, 3, 4, 5]
    types = [p["pub"]["data"]["type"] for p in pushes]
    assert types == [
        "message.new",
        "message.updated",
        "reaction.added",
        "reaction.removed",
        "message.deleted",
    ]
    assert pushes[0]["pub"]["data"]["message"] == message
    assert pushes[1]["pub"]["data"]["message"]["text"] == "edited"
    assert pushes[2]["pub"]["data"]["reaction"]["reaction"] == "+1"
    assert ws.quiet(0.2)
    history = ws.command("history", {"channel": "chat:room", "limit": -1})["history"]
    assert history["epoch"] == epoch
    assert [p["offset"] for p in history["publications"]] == [1, 2, 3, 4, 5]


def test_already_subscribed_and_unsubscribe(srv: ReferenceServer, ws: Ws) -> None:
    ws.command("subscribe", {"channel": "chat:a"})
    again = ws.command("subscribe", {"channel": "chat:a"})
    assert again["error"]["code"] == 105
    assert ws.command("unsubscribe", {"channel": "chat:a"}) == {"id": ws.next_id, "unsubscribe": {}}
    post(srv, "a", "after unsubscribe")
    assert ws.quiet(0.2)


def test_publish_helper(srv: ReferenceServer, ws: Ws) -> None:
    ws.command("subscribe", {"channel": "news"})
    assert srv.publish("news", {"n": 1}) == 1
    assert srv.publish("news", {"n": 2}) == 2
    assert [ws.push()["pub"]["data"]["n"] for _ in range(2)] == [1, 2]


def test_batched_frames_both_ways(srv: ReferenceServer) -> None:
    client = Ws(srv.ws_url)
    client.send(
        {"id": 1, "connect": {"token": token(srv)}},
        {"id": 2, "subscribe": {"channel": "chat:b1"}},
        {"id": 3, "subscribe": {"channel": "chat:b2"}},
        {"id": 4, "history": {"channel": "chat:b1", "limit": 10}},
    )
    replies = [client.recv() for _ in range(4)]
    assert [r["id"] for r in replies] == [1, 2, 3, 4]
    assert client.frames < 4  # the server batched its replies too
    client.close()


# -- recovery ------------------------------------------------------------------------------


def subscribe_and_read_one(srv: ReferenceServer, ws: Ws, channel: str) -> tuple[str, int]:
    epoch = ws.command("subscribe", {"channel": f"chat:{channel}"})["subscribe"]["epoch"]
    post(srv, channel, "first")
    return epoch, ws.push()["pub"]["offset"]


def recover(ws: Ws, channel: str, epoch: str, offset: int) -> dict[str, Any]:
    params = {"channel": f"chat:{channel}", "recover": True, "epoch": epoch, "offset": offset}
    return ws.command("subscribe", params)["subscribe"]  # type: ignore[no-any-return]


def test_recovery_after_reconnect(srv: ReferenceServer, ws: Ws) -> None:
    epoch, offset = subscribe_and_read_one(srv, ws, "r")
    ws.close()
    missed = [post(srv, "r", f"missed {i}")["id"] for i in range(3)]
    again = connect(srv)
    result = recover(again, "r", epoch, offset)
    assert result["recovered"] is True
    assert result["was_recovering"] is True
    assert result["epoch"] == epoch
    assert result["offset"] == offset
    pubs = result["publications"]
    assert [p["offset"] for p in pubs] == [2, 3, 4]
    assert [p["data"]["message"]["id"] for p in pubs] == missed
    post(srv, "r", "live")
    assert again.push()["pub"]["offset"] == 5
    assert srv.ws_stats()["recovered_total"] == 1
    again.close()


def test_restart_without_keep_state_is_a_new_epoch(srv: ReferenceServer, ws: Ws) -> None:
    epoch, offset = subscribe_and_read_one(srv, ws, "e")
    srv.stop()
    with pytest.raises((ConnectionError, websocket.WebSocketConnectionClosedException)):
        ws.recv()
    srv.start()
    again = connect(srv)
    result = recover(again, "e", epoch, offset)
    assert result["recovered"] is False
    assert result["was_recovering"] is True
    assert result["epoch"] != epoch
    assert result["offset"] == 0
    assert "publications" not in result
    assert srv.ws_stats()["unrecovered_total"] == 1
    again.close()


def test_restart_with_keep_state_recovers(srv: ReferenceServer, ws: Ws) -> None:
    epoch, offset = subscribe_and_read_one(srv, ws, "k")
    srv.stop()
    srv.start(keep_state=True)
    post(srv, "k", "after restart")
    again = connect(srv)
    result = recover(again, "k", epoch, offset)
    assert result["recovered"] is True
    assert result["epoch"] == epoch
    assert [p["offset"] for p in result["publications"]] == [2]
    again.close()


def test_stop_resets_realtime_connections_at_once_and_leaves_no_task(srv: ReferenceServer) -> None:
    clients = [connect(srv) for _ in range(5)]
    for client in clients:
        assert "subscribe" in client.command("subscribe", {"channel": "crash"})
    srv.publish("crash", {"n": 1})
    loop = srv._loop
    assert loop is not None
    srv.stop()
    for client in clients:
        with pytest.raises((ConnectionError, websocket.WebSocketConnectionClosedException)):
            while True:
                client.recv()
    # Writers, pingers and handlers were cancelled, not waited for as a graceful stop would.
    assert asyncio.all_tasks(loop) == set()


def test_publish_racing_restarts_is_never_lost_nor_doubled() -> None:
    with ReferenceServer(history_size=1_000_000) as srv:
        client = connect(srv)
        epoch = client.command("subscribe", {"channel": "chat:race"})["subscribe"]["epoch"]
        client.close()
        offsets: list[int] = []
        errors: list[BaseException] = []
        done = threading.Event()

        def publish() -> None:
            try:
                while not done.is_set():
                    offsets.append(srv.publish("chat:race", {"n": len(offsets)}))
            except BaseException as exc:  # reported below
                errors.append(exc)

        def more_than(count: int) -> Callable[[], bool]:
            return lambda: len(offsets) > count

        thread = threading.Thread(target=publish)
        thread.start()
        try:
            for _ in range(5):
                assert wait_until(lambda: len(offsets) >= 3)
                srv.stop()
                srv.start(keep_state=True)
                assert wait_until(more_than(len(offsets)))
        finally:
            done.set()
            thread.join(5)
        assert errors == []
        assert offsets == list(range(1, len(offsets) + 1))
        again = connect(srv)
        result = recover(again, "race", epoch, 0)
        assert [p["offset"] for p in result["publications"]] == offsets
        again.close()


def test_history_size_bounds_recovery() -> None:
    with ReferenceServer(history_size=2) as srv:
        client = connect(srv)
        epoch, offset = subscribe_and_read_one(srv, client, "h")
        client.close()
        for i in range(3):
            post(srv, "h", f"m{i}")
        again = connect(srv)
        result = recover(again, "h", epoch, offset)
        assert result["recovered"] is False
        assert result["offset"] == 4
        history = again.command("history", {"channel": "chat:h", "limit": -1})["history"]
        assert [p["offset"] for p in history["publications"]] == [3, 4]
        again.close()


def test_history_ttl_bounds_recovery() -> None:
    clock = FakeClock(start=time.time())
    with ReferenceServer(history_ttl=300, clock=clock) as srv:
        client = connect(srv)
        epoch, offset = subscribe_and_read_one(srv, client, "t")
        post(srv, "t", "second")
        client.push()
        clock.now += 301
        result = recover(connect(srv), "t", epoch, offset)
        assert result["recovered"] is False
        client.close()


def test_history_command(srv: ReferenceServer, ws: Ws) -> None:
    for i in range(5):
        srv.publish("chat:hist", {"i": i})
    position = ws.command("history", {"channel": "chat:hist"})["history"]
    assert position["offset"] == 5
    assert position.get("publications") == []
    epoch = position["epoch"]
    since = {"channel": "chat:hist", "limit": 2, "since": {"offset": 1, "epoch": epoch}}
    page = ws.command("history", since)["history"]
    assert [p["offset"] for p in page["publications"]] == [2, 3]
    latest = ws.command("history", {"channel": "chat:hist", "limit": 2})["history"]
    assert [p["data"]["i"] for p in latest["publications"]] == [3, 4]
    wrong = {"channel": "chat:hist", "limit": 2, "since": {"offset": 1, "epoch": "nope"}}
    assert ws.command("history", wrong)["error"]["code"] == 112


# -- ping / pong ---------------------------------------------------------------------------


def test_pings_pongs_and_3012_when_a_pong_is_missing() -> None:
    with ReferenceServer(ping_interval=0.3) as srv:
        client = connect(srv)
        for _ in range(2):
            assert client.recv(timeout=2) == {}
            client.send({})
        assert client.recv(timeout=2) == {}  # not answered
        assert client.closed_with(timeout=2) == 3012
        assert client.close_reason == "no pong"
        stats = srv.ws_stats()
        assert stats["pings_sent"] == 3
        assert stats["pongs_received"] == 2
        assert stats["connections"] == 0


def test_unexpected_pong_closes_3501(srv: ReferenceServer, ws: Ws) -> None:
    ws.send({})
    assert ws.closed_with() == 3501
    assert srv.ws_stats()["unexpected_pongs"] == 1


def test_send_ping_and_runtime_ping_interval(srv: ReferenceServer, ws: Ws) -> None:
    srv.send_ping()
    assert ws.recv() == {}
    ws.send({})
    srv.ping_interval = 0.2
    assert ws.recv(timeout=5) == {}  # the new interval, not the 25 s default
    ws.send({})
    assert wait_until(lambda: srv.ws_stats()["pongs_received"] == 2)
    assert srv.ws_stats()["unexpected_pongs"] == 0


# -- tokens and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"token": "forged"}, {}])
def test_invalid_token_closes_3500(srv: ReferenceServer, params: dict[str, Any]) -> None:
    client = Ws(srv.ws_url)
    client.send({"id": 1, "connect": params})
    assert client.closed_with() == 3500
    assert client.close_reason == "invalid token"


def test_expired_token_is_error_109_then_refresh_and_expiry() -> None:
    clock = FakeClock(start=time.time())
    with ReferenceServer(token_ttl=60, clock=clock) as srv:
        stale = token(srv)
        clock.now += 61
        client = Ws(srv.ws_url)
        reply = client.command("connect", {"token": stale})
        assert reply["error"]["code"] == 109
        reply = client.command("connect", {"token": token(srv)})
        assert reply["connect"]["ttl"] in (59, 60)
        clock.now += 50
        refreshed = client.command("refresh", {"token": token(srv)})
        assert refreshed["refresh"] == {"expires": True, "ttl": 60}
        clock.now += 50
        assert client.quiet(0.7)  # refreshed: still open
        clock.now += 20
        assert client.closed_with(timeout=3) == 3005
        client2 = connect(srv)
        client2.send({"id": 9, "refresh": {"token": "forged"}})
        assert client2.closed_with() == 3500


@pytest.mark.parametrize(
    "frame",
    [
        '{"id": 1, "subscribe": {"channel": "chat:x"}}',
        "not json",
        "[1, 2]",
        '{"connect": {}}',
        '{"id": 1, "connect": {}, "subscribe": {}}',
    ],
)
def test_protocol_errors_close_3501(srv: ReferenceServer, frame: str) -> None:
    client = Ws(srv.ws_url)
    client.ws.send(frame)
    assert client.closed_with() == 3501


def test_unknown_methods_get_errors(ws: Ws) -> None:
    assert ws.command("rpc", {"method": "x"})["error"]["code"] == 104
    assert ws.command("publish", {"channel": "chat:x", "data": {}})["error"]["code"] == 103


def test_frame_over_64_kib_closes_1009(srv: ReferenceServer, ws: Ws) -> None:
    ws.ws.send(json.dumps({"id": 2, "subscribe": {"channel": "x" * (64 * 1024)}}))
    assert ws.closed_with() == 1009


def test_disconnect_websockets(srv: ReferenceServer) -> None:
    clients = [connect(srv) for _ in range(3)]
    assert srv.ws_stats()["connections"] == 3
    srv.disconnect_websockets(3001, "shutdown")
    for client in clients:
        assert client.closed_with() == 3001
        assert client.close_reason == "shutdown"
    assert srv.ws_stats()["connections"] == 0


# -- realtime faults -----------------------------------------------------------------------


def test_duplicate_pushes(srv: ReferenceServer, ws: Ws) -> None:
    srv.set_realtime_faults(duplicate_rate=1.0)
    ws.command("subscribe", {"channel": "chat:d"})
    post(srv, "d", "twice")
    assert [ws.push()["pub"]["offset"] for _ in range(2)] == [1, 1]
    assert srv.ws_stats()["pushes_duplicated"] == 1


def test_skipped_pushes_stay_in_history(srv: ReferenceServer, ws: Ws) -> None:
    epoch = ws.command("subscribe", {"channel": "chat:s"})["subscribe"]["epoch"]
    srv.set_realtime_faults(skip_rate=1.0)
    post(srv, "s", "skipped")
    srv.set_realtime_faults()
    post(srv, "s", "seen")
    assert ws.push()["pub"]["offset"] == 2  # a gap: offset 1 never came
    gap = {"channel": "chat:s", "limit": 10, "since": {"offset": 0, "epoch": epoch}}
    history = ws.command("history", gap)["history"]
    assert [p["offset"] for p in history["publications"]] == [1, 2]
    assert srv.ws_stats()["pushes_skipped"] == 1


def test_silent_server_sends_nothing_and_keeps_connections() -> None:
    with ReferenceServer(ping_interval=0.5) as srv:
        client = connect(srv)
        client.send({"id": 2, "subscribe": {"channel": "chat:q"}})
        client.reply(2)
        srv.set_realtime_faults(silent=True)
        client.send({"id": 3, "history": {"channel": "chat:q"}})
        srv.publish("chat:q", {"x": 1})
        assert client.quiet(0.8)  # no reply, no push, no ping
        assert srv.ws_stats()["connections"] == 1
        assert srv.ws_stats()["pings_sent"] == 0
        srv.set_realtime_faults()
        assert (
            client.command("history", {"channel": "chat:q", "limit": 5})["history"]["offset"] == 1
        )
        client.close()


def test_no_connect_in_time_closes_3502() -> None:
    with ReferenceServer(connect_timeout=0.2) as srv:
        client = Ws(srv.ws_url)
        assert client.closed_with() == 3502
        assert client.close_reason == "stale"


def test_binary_frames_are_read_as_json(srv: ReferenceServer) -> None:
    client = Ws(srv.ws_url)
    command = {"id": 1, "connect": {"token": token(srv)}}
    client.ws.send_binary(json.dumps(command).encode())
    assert "connect" in client.recv()
    client.ws.send_binary(b"\xff\xfe")
    assert client.closed_with() == 3501
