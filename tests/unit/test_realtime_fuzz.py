"""Property tests: malformed protocol frames never crash the client nor move a subscription."""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsdk._realtime.connection import ClientContext, Connection
from chatsdk._realtime.dispatch import Dispatcher
from chatsdk._realtime.stats import Counters
from chatsdk._realtime.subscription import StreamPosition, Subscription, SubscriptionState


class RecordingWS:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, payload: str) -> None:
        self.sent.append(payload)


def feed(conn: Connection, payload: str | bytes) -> None:
    """What the socket thread does with a received frame: handle it, then send the answers."""
    conn.handle_frame(payload)
    conn.flush()


def connected() -> tuple[Connection, RecordingWS, Subscription, Subscription]:
    """A connection with chat:1 subscribed at (5, "e") and chat:2's subscribe (id 3) pending."""
    ws = RecordingWS()
    lock = threading.RLock()
    subs: dict[str, Subscription] = {}
    session = ClientContext(
        lock=lock,
        subs=subs,
        dispatcher=Dispatcher(),
        counters=Counters(),
        clock=time.monotonic,
        rng=random.Random(0),
        timeout=60.0,
        ping_grace=10.0,
        min_delay=0.1,
        max_delay=1.0,
        get_token=None,
        on_connected=lambda conn: None,
        spawn=lambda fn: None,
    )
    one = Subscription("chat:1", lambda pub: None)
    subs["chat:1"] = one
    conn = Connection(session, ws)
    conn.send_connect("t", "chatsdk", "0")
    conn.flush()
    feed(conn, '{"id":1,"connect":{"client":"c","ping":25,"pong":true}}')
    feed(conn, '{"id":2,"subscribe":{"recoverable":true,"epoch":"e","offset":5}}')
    two = Subscription("chat:2", lambda pub: None)
    subs["chat:2"] = two
    conn.subscribe(two)
    conn.flush()
    assert one.state is SubscriptionState.SUBSCRIBED and one.stream == StreamPosition(5, "e")
    assert two.state is SubscriptionState.SUBSCRIBING
    ws.sent.clear()
    return conn, ws, one, two


# -- strategies ---------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def wrong(kind: str) -> st.SearchStrategy[Any]:
    """JSON values that are not of the protocol type ``kind``."""
    if kind == "int":
        return json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, int) or v < 0)
    if kind == "id":
        return json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, int) or v <= 0)
    if kind == "str":
        return json_values.filter(lambda v: not isinstance(v, str))
    if kind == "nonempty_str":
        return json_values.filter(lambda v: not isinstance(v, str) or v == "")
    if kind == "bool":
        return json_values.filter(lambda v: not isinstance(v, bool))
    if kind == "obj":
        return json_values.filter(lambda v: not isinstance(v, dict))
    if kind == "opt_obj":
        return json_values.filter(lambda v: v is not None and not isinstance(v, dict))
    if kind == "list":
        return json_values.filter(lambda v: not isinstance(v, list))
    raise AssertionError(kind)


PUB = {"push": {"channel": "chat:1", "pub": {"data": {"x": 1}, "offset": 6, "info": {}}}}
UNSUB = {"push": {"channel": "chat:1", "unsubscribe": {"code": 2000, "reason": "r"}}}
SUB_REPLY = {
    "id": 3,
    "subscribe": {
        "recoverable": True,
        "epoch": "e",
        "offset": 0,
        "recovered": False,
        "was_recovering": False,
        "publications": [{"data": 1, "offset": 1}],
    },
}
ERR_REPLY = {"id": 3, "error": {"code": 103, "message": "denied", "temporary": False}}

# (template, path to the field, the field's protocol type)
MUTATIONS: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [
    (PUB, ("push", "channel"), "nonempty_str"),
    (PUB, ("push", "pub"), "obj"),
    (PUB, ("push", "pub", "offset"), "int"),
    (PUB, ("push", "pub", "info"), "opt_obj"),
    (PUB, ("push",), "obj"),
    (UNSUB, ("push", "channel"), "nonempty_str"),
    (UNSUB, ("push", "unsubscribe"), "obj"),
    (UNSUB, ("push", "unsubscribe", "code"), "int"),
    (UNSUB, ("push", "unsubscribe", "reason"), "str"),
    (SUB_REPLY, ("id",), "id"),
    (SUB_REPLY, ("subscribe",), "obj"),
    (SUB_REPLY, ("subscribe", "recoverable"), "bool"),
    (SUB_REPLY, ("subscribe", "epoch"), "str"),
    (SUB_REPLY, ("subscribe", "offset"), "int"),
    (SUB_REPLY, ("subscribe", "recovered"), "bool"),
    (SUB_REPLY, ("subscribe", "publications"), "list"),
    (SUB_REPLY, ("subscribe", "publications", 0), "obj"),
    (SUB_REPLY, ("subscribe", "publications", 0, "offset"), "int"),
    (ERR_REPLY, ("id",), "id"),
    (ERR_REPLY, ("error",), "obj"),
    (ERR_REPLY, ("error", "code"), "int"),
    (ERR_REPLY, ("error", "message"), "str"),
    (ERR_REPLY, ("error", "temporary"), "bool"),
]


@st.composite
def mutated_line(draw: st.DrawFn) -> str:
    template, path, kind = draw(st.sampled_from(MUTATIONS))
    obj = copy.deepcopy(template)
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(wrong(kind))
    return json.dumps(obj)


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


non_object_json = json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps)
garbage = st.text(min_size=1).filter(lambda t: "\n" not in t and t.strip() != "" and _not_json(t))
huge = st.sampled_from(
    [
        "[" * 200_000,
        '{"push":{"channel":"chat:1","pub":{"offset":"' + "9" * 1_000_000 + '"}}}',
        '{"id":3,"subscribe":{"epoch":' + "1" * 5000 + "}}",
        "x" * 2_000_000,
    ]
)
bad_line = st.one_of(mutated_line(), non_object_json, garbage, huge)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.one_of(bad_line, st.just("")), min_size=1, max_size=6), as_bytes=st.booleans()
)
def test_malformed_frames_change_nothing(lines: list[str], as_bytes: bool) -> None:
    conn, ws, one, two = connected()
    frame = "\n".join(lines)
    before = conn.context.counters.dropped
    feed(conn, frame.encode() if as_bytes else frame)
    assert one.state is SubscriptionState.SUBSCRIBED and one.stream == StreamPosition(5, "e")
    assert one.active and two.active
    assert two.state is SubscriptionState.SUBSCRIBING
    assert conn.ending is None
    assert ws.sent == []  # no pong, no resubscribe
    assert conn.context.counters.dropped - before == sum(1 for line in lines if line.strip())
    # the pending subscribe is still answered normally afterwards
    feed(conn, '{"id":3,"subscribe":{"recoverable":true,"epoch":"f","offset":2}}')
    assert two.state is SubscriptionState.SUBSCRIBED and two.stream == StreamPosition(2, "f")


@settings(max_examples=100, deadline=None)
@given(payload=st.one_of(st.text(), st.binary(), json_values.map(json.dumps)))
def test_arbitrary_frames_never_raise(payload: str | bytes) -> None:
    conn, ws, one, two = connected()  # noqa: RUF059
    feed(conn, payload)
    assert all(frame in ("{}",) or frame.startswith('{"id"') for frame in ws.sent)


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(["ping", "empty", "join", "garbage", "unknown_reply"]),
        min_size=1,
        max_size=30,
    ),
    split=st.lists(st.integers(1, 5), min_size=1, max_size=30),
)
def test_one_pong_per_ping_whatever_the_batching(parts: list[str], split: list[int]) -> None:
    conn, ws, one, two = connected()  # noqa: RUF059
    text = {
        "ping": "{}",
        "empty": "",
        "join": '{"push":{"channel":"chat:1","join":{}}}',
        "garbage": "{{",
        "unknown_reply": '{"id":99,"connect":{}}',
    }
    lines = [text[p] for p in parts]
    i = 0
    sizes = iter(split * 30)
    while i < len(lines):
        n = next(sizes)
        feed(conn, "\n".join(lines[i : i + n]))
        i += n
    assert ws.sent == ["{}"] * parts.count("ping")
    assert one.stream == StreamPosition(5, "e")


def test_no_pong_before_connect_reply() -> None:
    conn, ws, one, two = connected()  # noqa: RUF059
    conn.pong = False
    feed(conn, "{}")
    assert ws.sent == []


def test_events_of_an_older_connection_are_dropped() -> None:
    conn, ws, one, two = connected()  # noqa: RUF059
    conn.live = False
    feed(conn, '{"push":{"channel":"chat:1","pub":{"data":1,"offset":6}}}\n{}')
    assert one.stream == StreamPosition(5, "e") and ws.sent == []


def test_frames_are_written_without_the_clients_lock() -> None:
    # Before: a ping's pong and every command were written to the socket under the client's
    # lock, so a stalled peer blocked every thread that needed it (subscribe, stats, close).
    conn, ws, _one, _two = connected()
    lock = conn.context.lock
    free_while_sending: list[bool] = []

    def send(payload: str) -> None:
        taken: list[bool] = []

        def take() -> None:
            got = lock.acquire(timeout=5)
            taken.append(got)
            if got:
                lock.release()

        other = threading.Thread(target=take)
        other.start()
        other.join()
        free_while_sending.append(taken[0])
        ws.sent.append(payload)

    ws.send = send  # type: ignore[method-assign]
    conn.handle_frame("{}")  # a ping: answered with a pong
    with lock:
        conn.subscribe(Subscription("chat:3", lambda pub: None))
    assert ws.sent == []  # queued, not written, while the caller may hold the lock
    conn.flush()
    assert len(ws.sent) == 2, ws.sent
    assert ws.sent[0] == "{}" and "chat:3" in ws.sent[1]
    assert free_while_sending == [True, True]
