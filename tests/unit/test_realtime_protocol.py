"""Pure parts of the realtime client: framing, parsing, merge/dedupe, backoff formula."""

from __future__ import annotations

import json
import logging
import random

import pytest

from chatsdk._realtime.connection import refresh_delay
from chatsdk._realtime.protocol import (
    MAX_FRAME_BYTES,
    OtherPush,
    Ping,
    PublicationPush,
    RawPublication,
    Reply,
    ReplyError,
    SubscribeResult,
    UnsubscribePush,
    batch_frames,
    decode_frame,
    parse_connect_result,
    parse_subscribe_result,
)
from chatsdk._realtime.reconnect import is_final_close_code, reconnect_delay
from chatsdk._realtime.socket_loop import parse_close_frame
from chatsdk._realtime.subscription import StreamPosition, Subscription, SubscriptionState


class MaxRandom(random.Random):
    """uniform() always returns its upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


# -- backoff ----------------------------------------------------------------------------


def test_backoff_formula_upper_bound_doubles_then_caps() -> None:
    delays = [reconnect_delay(n, 0.1, 10.0, MaxRandom()) for n in range(10)]
    assert delays[:6] == pytest.approx([0.2, 0.3, 0.5, 0.9, 1.7, 3.3])
    assert delays[7:] == [10.0, 10.0, 10.0]


def test_backoff_formula_lower_bound_is_min() -> None:
    assert all(reconnect_delay(n, 0.1, 10.0, MinRandom()) == 0.1 for n in range(40))


def test_backoff_min_spread_widens_the_jitter() -> None:
    assert reconnect_delay(0, 0.1, 10.0, MaxRandom(), min_spread=0.8) == pytest.approx(0.9)
    assert reconnect_delay(5, 0.1, 10.0, MaxRandom(), min_spread=0.8) == pytest.approx(3.3)
    assert reconnect_delay(0, 0.1, 0.5, MaxRandom(), min_spread=0.8) == 0.5


def test_backoff_exponent_is_capped() -> None:
    assert reconnect_delay(10**6, 0.5, 20.0, MaxRandom()) == 20.0


def test_backoff_stays_in_range_with_real_randomness() -> None:
    rng = random.Random(7)
    for n in range(50):
        delay = reconnect_delay(n, 0.1, 10.0, rng)
        assert 0.1 <= delay <= min(10.0, 0.1 + 0.1 * 2 ** min(n, 30))


def test_refresh_happens_before_ttl() -> None:
    assert 0 < refresh_delay(10) < 10
    assert refresh_delay(3600) == 3570
    assert refresh_delay(0) == 0


def test_close_codes() -> None:
    for code in (3500, 3501, 3502, 3999, 4500, 4999):
        assert is_final_close_code(code)
    for code in (1000, 1001, 1006, 1012, 3000, 3001, 3012, 3499, 4000, 4499, 5000):
        assert not is_final_close_code(code)
    assert parse_close_frame(b"\x0d\xac" + b"stale") == (3500, "stale")
    assert parse_close_frame(b"") == (1005, "")


# -- decoding ---------------------------------------------------------------------------


def test_decode_batched_frame() -> None:
    text = (
        "\n".join(
            [
                "{}",
                "",
                '{"id":1,"connect":{"client":"c","ping":25,"pong":true}}',
                '{"push":{"channel":"chat:1","pub":{"data":{"x":1},"offset":3}}}',
                '{"push":{"channel":"chat:1","unsubscribe":{"code":2500,"reason":"r"}}}',
                '{"push":{"channel":"chat:1","join":{"info":{"user":"u"}}}}',
                '{"id":2,"error":{"code":109,"message":"token expired"}}',
            ]
        )
        + "\n"
    )
    items = list(decode_frame(text))
    assert items[0] == Ping()
    assert isinstance(items[1], Reply) and items[1].id == 1
    assert parse_connect_result(items[1].result("connect")).ping == 25.0
    assert items[2] == PublicationPush("chat:1", RawPublication({"x": 1}, 3, None))
    assert items[3] == UnsubscribePush("chat:1", 2500, "r") and items[3].resubscribe
    assert items[4] == OtherPush("chat:1", "join")
    assert isinstance(items[5], Reply) and items[5].error == ReplyError(109, "token expired")
    assert items[5].error.retryable


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1,2]",
        '"text"',
        '{"id":0,"connect":{}}',
        '{"id":-3,"connect":{}}',
        '{"id":true,"connect":{}}',
        '{"id":"1","connect":{}}',
        '{"push":{"channel":5,"pub":{}}}',
        '{"push":{"channel":"c","pub":{"offset":"3"}}}',
        '{"push":{"channel":"c","pub":{"offset":-1}}}',
        '{"push":{"channel":"c","pub":{"offset":true}}}',
        '{"push":{"channel":"","pub":{"offset":1}}}',
        '{"push":{"channel":"c","pub":[]}}',
        '{"push":[]}',
        '{"push":{"channel":"c"}}',
        '{"id":1,"error":"boom"}',
        '{"id":1,"error":{"code":"x"}}',
        '{"id":1,"error":{"code":1,"temporary":"yes"}}',
        "[" * 100_000,
    ],
)
def test_malformed_lines_are_dropped_and_logged(
    line: str, caplog: pytest.LogCaptureFixture
) -> None:
    drops: list[str] = []
    with caplog.at_level(logging.WARNING, logger="chatsdk._realtime.protocol"):
        assert list(decode_frame(line, drops.append)) == []
    assert drops and caplog.records


def test_non_utf8_frame_dropped() -> None:
    drops: list[str] = []
    assert list(decode_frame(b"\xff\xfe{}", drops.append)) == []
    assert drops == ["not utf-8"]


def test_subscribe_result_validation() -> None:
    result = parse_subscribe_result(
        {
            "recoverable": True,
            "epoch": "e",
            "offset": 4,
            "recovered": True,
            "was_recovering": True,
            "publications": [{"data": 1, "offset": 5}],
        }
    )
    assert result.publications == (RawPublication(1, 5),)
    with pytest.raises(ValueError):
        parse_subscribe_result({"publications": {}})
    with pytest.raises(ValueError):
        parse_subscribe_result({"epoch": 3})
    with pytest.raises(ValueError):
        parse_connect_result({"ping": float("nan")})
    with pytest.raises(ValueError):
        parse_connect_result({"ttl": 10**400})
    assert parse_subscribe_result({}) == SubscribeResult()


def test_reply_result_must_be_an_object() -> None:
    (reply,) = decode_frame('{"id":1,"subscribe":[]}')
    assert isinstance(reply, Reply)
    with pytest.raises(ValueError):
        reply.result("subscribe")


# -- encoding ---------------------------------------------------------------------------


def test_batch_frames_split_under_limit() -> None:
    commands = [
        {"id": i, "subscribe": {"channel": "chat:" + "x" * 200 + str(i)}} for i in range(1, 2001)
    ]
    frames = batch_frames(commands)
    assert len(frames) > 1
    assert all(len(f.encode()) < MAX_FRAME_BYTES for f in frames)
    decoded = [json.loads(line) for f in frames for line in f.split("\n")]
    assert decoded == commands


def test_batch_frames_single_small() -> None:
    frames = batch_frames([{"id": 1, "x": {}}, {"id": 2, "x": {}}])
    assert frames == ['{"id":1,"x":{}}\n{"id":2,"x":{}}']
    assert batch_frames([]) == []


# -- subscription merge -------------------------------------------------------------------


def _sub(since: StreamPosition | None = None) -> Subscription:
    return Subscription("chat:1", lambda pub: None, since=since)


def _pub(offset: int) -> RawPublication:
    return RawPublication({"n": offset}, offset)


def test_fresh_subscribe_starts_at_reply_offset_and_drops_older_held() -> None:
    sub = _sub()
    assert sub.subscribe_params() == {"channel": "chat:1"}
    sub.on_publication(_pub(10))  # held while in flight
    sub.on_publication(_pub(11))
    step = sub.on_subscribe_result(SubscribeResult(recoverable=True, epoch="e", offset=10))
    assert [p.offset for p in step.deliver] == [11]
    assert step.rebase == StreamPosition(10, "e") and not step.recovery_failed
    assert step.duplicates == 1
    assert sub.state is SubscriptionState.SUBSCRIBED
    assert sub.stream == StreamPosition(11, "e")


def test_recovery_merges_reply_and_held_pushes_without_duplicates() -> None:
    sub = _sub(StreamPosition(5, "e"))
    params = sub.subscribe_params()
    assert params == {"channel": "chat:1", "recover": True, "offset": 5, "epoch": "e"}
    for offset in (8, 9, 7):
        sub.on_publication(_pub(offset))
    step = sub.on_subscribe_result(
        SubscribeResult(
            recoverable=True,
            epoch="e",
            offset=5,
            recovered=True,
            was_recovering=True,
            publications=(_pub(6), _pub(7), _pub(8)),
        )
    )
    assert [p.offset for p in step.deliver] == [6, 7, 8, 9]
    assert step.duplicates == 2 and step.recovered and not step.resubscribe
    assert step.rebase is None


def test_recovery_failed_continues_from_new_epoch() -> None:
    sub = _sub(StreamPosition(5, "old"))
    sub.subscribe_params()
    sub.on_publication(_pub(2))
    step = sub.on_subscribe_result(
        SubscribeResult(
            recoverable=True, epoch="new", offset=1, recovered=False, was_recovering=True
        )
    )
    assert step.recovery_failed and step.rebase == StreamPosition(1, "new")
    assert [(p.offset, p.epoch) for p in step.deliver] == [(2, "new")]


def test_epoch_change_with_recovered_flag_counts_as_failed() -> None:
    sub = _sub(StreamPosition(5, "old"))
    sub.subscribe_params()
    step = sub.on_subscribe_result(
        SubscribeResult(
            recoverable=True, epoch="new", offset=0, recovered=True, was_recovering=True
        )
    )
    assert step.recovery_failed


def test_live_pushes_dedupe_and_gap() -> None:
    sub = _sub()
    sub.subscribe_params()
    sub.on_subscribe_result(SubscribeResult(recoverable=True, epoch="e", offset=0))
    assert [p.offset for p in sub.on_publication(_pub(1)).deliver] == [1]
    dup = sub.on_publication(_pub(1))
    assert dup.duplicates == 1 and not dup.deliver
    gap = sub.on_publication(_pub(3))
    assert gap.resubscribe and not gap.deliver
    assert sub.stream == StreamPosition(1, "e")
    # resubscribe recovers from 1; the held 3 merges with recovered 2
    assert sub.subscribe_params()["offset"] == 1
    step = sub.on_subscribe_result(
        SubscribeResult(
            recoverable=True, epoch="e", offset=1, recovered=True, publications=(_pub(2),)
        )
    )
    assert [p.offset for p in step.deliver] == [2, 3]


def test_gap_remaining_after_reply_asks_for_resubscribe() -> None:
    sub = _sub(StreamPosition(1, "e"))
    sub.subscribe_params()
    sub.on_publication(_pub(5))
    step = sub.on_subscribe_result(
        SubscribeResult(
            recoverable=True, epoch="e", offset=1, recovered=True, publications=(_pub(2),)
        )
    )
    assert [p.offset for p in step.deliver] == [2]
    assert step.resubscribe


def test_not_recoverable_channel_delivers_in_arrival_order() -> None:
    sub = _sub()
    sub.subscribe_params()
    sub.on_publication(RawPublication("a"))
    step = sub.on_subscribe_result(SubscribeResult(recoverable=False))
    assert [p.data for p in step.deliver] == ["a"]
    assert [p.data for p in sub.on_publication(RawPublication("b")).deliver] == ["b"]
    assert sub.subscribe_params() == {"channel": "chat:1"}


def test_offset_zero_on_recoverable_stream_is_dropped() -> None:
    sub = _sub()
    sub.subscribe_params()
    sub.on_subscribe_result(SubscribeResult(recoverable=True, epoch="e", offset=3))
    step = sub.on_publication(RawPublication("x", 0))
    assert not step.deliver and not step.resubscribe
    assert sub.stream == StreamPosition(3, "e")


def test_subscribe_errors() -> None:
    sub = _sub()
    sub.subscribe_params()
    assert sub.on_subscribe_error(ReplyError(100, "internal", temporary=True))
    assert sub.on_subscribe_error(ReplyError(50, "x"))
    assert sub.on_subscribe_error(ReplyError(109, "expired"))
    assert sub.state is SubscriptionState.SUBSCRIBING
    assert not sub.on_subscribe_error(ReplyError(103, "permission denied"))
    assert sub.state is SubscriptionState.UNSUBSCRIBED and not sub.active
    assert sub.error is not None and sub.error.code == 103


def test_held_overflow_forces_resubscribe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chatsdk._realtime.subscription.MAX_HELD", 2)
    sub = _sub()
    sub.subscribe_params()
    for offset in (1, 2, 3):
        sub.on_publication(_pub(offset))
    step = sub.on_subscribe_result(SubscribeResult(recoverable=True, epoch="e", offset=0))
    assert [p.offset for p in step.deliver] == [1, 2]
    assert step.resubscribe


def test_hand_over_sets_position_and_skips_after_unsubscribe() -> None:
    got: list[int] = []
    sub = Subscription("c", lambda p: got.append(p.offset))
    sub.subscribe_params()
    step = sub.on_subscribe_result(
        SubscribeResult(recoverable=True, epoch="e", offset=0, publications=())
    )
    sub.rebase(step.rebase or StreamPosition(0, "e"), False)
    (pub,) = sub.on_publication(_pub(1)).deliver
    sub.hand_over(pub)
    assert got == [1] and sub.position == StreamPosition(1, "e")
    sub.unsubscribe()
    sub.hand_over(pub)
    assert got == [1]
    assert "unsubscribed" in repr(sub)
