"""Deduplication inside one client: single-flight by key, the multi-tap window by intent."""

from __future__ import annotations

import threading

import pytest
import responses

from chatsdk import (
    ChatClient,
    ChatSession,
    ConfigurationError,
    IdempotencyKeyReusedError,
    RetryPolicy,
    ServerError,
    idempotency_key_for,
)
from chatsdk._http.idempotency import Deduplicator
from chatsdk._validation import check_idempotency_key
from tests.unit.test_transport import BASE, KEY, MESSAGES, error_json, message_json

REACTIONS = f"{BASE}/api/reactions"
REACTION = {
    "messageId": "m1",
    "reaction": "+1",
    "userId": "u1",
    "createdAt": "2026-11-28T12:00:00Z",
}


def make(sleep, clock, window: float = 1.0, **session_kwargs) -> ChatClient:
    chat = ChatClient(session=ChatSession(BASE, KEY, sleep=sleep, clock=clock, **session_kwargs))
    chat._dedup = Deduplicator(window, clock=clock)  # the window's clock is the test's
    return chat


@responses.activate
def test_a_double_tap_within_the_window_sends_once(sleep, clock, caplog) -> None:
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    chat = make(sleep, clock)
    first = chat.send_message("general", "hello")
    clock.advance(0.5)
    with caplog.at_level("INFO", logger="chatsdk"):
        second = chat.send_message("general", "hello")
    assert len(responses.calls) == 1
    assert second == first and second.replayed and not first.replayed
    assert "multi-tap" in caplog.text and "hello" not in caplog.text


@responses.activate
def test_the_same_text_after_the_window_sends_again(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    chat = make(sleep, clock)
    chat.send_message("general", "hello")
    clock.advance(1.0)  # the window counts from the first call
    chat.send_message("general", "hello")
    keys = [c.request.headers["Idempotency-Key"] for c in responses.calls]
    assert len(keys) == 2 and keys[0] != keys[1]


@responses.activate
def test_a_different_text_or_channel_within_the_window_sends_again(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    chat = make(sleep, clock)
    chat.send_message("general", "hello")
    chat.send_message("general", "hello!")
    chat.send_message("random", "hello")
    chat.send_message("general", "hello", parent_id="m0")
    assert len(responses.calls) == 4


@responses.activate
def test_a_repeat_after_a_failure_resends_under_the_same_key(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json("unavailable"), status=503)
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    chat = make(sleep, clock, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(ServerError) as info:
        chat.send_message("general", "hello")
    message = chat.send_message("general", "hello")
    keys = [c.request.headers["Idempotency-Key"] for c in responses.calls]
    assert keys == [info.value.idempotency_key] * 2
    assert message.id == "m1"


@responses.activate
def test_window_zero_turns_it_off(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    chat = make(sleep, clock, window=0)
    chat.send_message("general", "hello")
    chat.send_message("general", "hello")
    assert len(responses.calls) == 2


@responses.activate
def test_reactions_are_deduplicated_too(sleep, clock) -> None:
    responses.add(responses.POST, REACTIONS, json=REACTION, status=201)
    chat = make(sleep, clock)
    assert not chat.add_reaction("m1", "+1").replayed
    assert chat.add_reaction("m1", "+1").replayed
    chat.add_reaction("m1", "-1")
    assert len(responses.calls) == 2


@responses.activate
def test_an_explicit_key_is_left_to_the_server(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=message_json(), status=201)
    chat = make(sleep, clock)
    chat.send_message("general", "hello", idempotency_key="job-1")
    chat.send_message("general", "hello", idempotency_key="job-1")
    assert [c.request.headers["Idempotency-Key"] for c in responses.calls] == ["job-1"] * 2


@responses.activate
def test_concurrent_calls_with_one_key_share_one_request(sleep, clock) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow(_request):  # type: ignore[no-untyped-def]
        entered.set()
        assert release.wait(10)
        return (201, {}, __import__("json").dumps(message_json()))

    responses.add_callback(responses.POST, MESSAGES, callback=slow)
    chat = make(sleep, clock)
    results: list[object] = []
    errors: list[BaseException] = []

    def send(text: str) -> None:
        try:
            results.append(chat.send_message("general", text, idempotency_key="same"))
        except BaseException as exc:
            errors.append(exc)

    leader = threading.Thread(target=send, args=("hello",))
    leader.start()
    assert entered.wait(10)
    followers = [threading.Thread(target=send, args=("hello",)) for _ in range(9)]
    for t in followers:
        t.start()
    # A different body under a key in flight is refused locally, like the server's 422.
    with pytest.raises(IdempotencyKeyReusedError):
        chat.send_message("general", "other text", idempotency_key="same")
    _wait_for_waiters(chat, "same", 9)
    release.set()
    for t in [leader, *followers]:
        t.join(10)
    assert errors == [] and len(results) == 10
    assert len(responses.calls) == 1
    assert len({id(r) for r in results}) >= 2 and all(r == results[0] for r in results)
    assert sum(not r.replayed for r in results) == 1  # type: ignore[attr-defined]


@responses.activate
def test_followers_get_the_leaders_error(sleep, clock) -> None:
    release = threading.Event()
    entered = threading.Event()

    def failing(_request):  # type: ignore[no-untyped-def]
        entered.set()
        assert release.wait(10)
        return (400, {}, '{"error": {"code": "invalid_request", "message": "text: no"}}')

    responses.add_callback(responses.POST, MESSAGES, callback=failing)
    chat = make(sleep, clock)
    outcomes: list[BaseException] = []

    def send() -> None:
        try:
            chat.send_message("general", "hello", idempotency_key="k")
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=send)]
    threads[0].start()
    assert entered.wait(10)
    threads += [threading.Thread(target=send) for _ in range(3)]
    for t in threads[1:]:
        t.start()
    _wait_for_waiters(chat, "k", 3)
    release.set()
    for t in threads:
        t.join(10)
    assert len(outcomes) == 4 and all(type(e).__name__ == "BadRequestError" for e in outcomes)
    assert len(responses.calls) == 1


def _wait_for_waiters(chat: ChatClient, key: str, count: int) -> None:
    """Block until ``count`` followers wait on the flight of ``key`` (no sleeping)."""
    flight = chat._dedup._flights[key]
    pause = threading.Event()
    for _ in range(10_000):
        if flight.followers >= count:
            return
        pause.wait(0.001)
    raise AssertionError("followers never joined the flight")


def test_window_memory_is_bounded(clock) -> None:
    dedup = Deduplicator(60.0, clock=clock, max_entries=50)
    for i in range(500):
        dedup.run("message", {"text": str(i)}, None, lambda _k: _Result())
    assert len(dedup._taps) <= 50
    clock.advance(61)
    dedup.run("message", {"text": "new"}, None, lambda _k: _Result())
    assert len(dedup._taps) == 1


def test_window_must_not_be_negative() -> None:
    with pytest.raises(ConfigurationError):
        ChatClient(BASE, KEY, dedup_window=-1)


class _Result:
    replayed = False


class TestIdempotencyKeyFor:
    def test_stable_and_valid(self) -> None:
        key = idempotency_key_for("order-shipped", 42)
        assert key == idempotency_key_for("order-shipped", 42)
        assert check_idempotency_key(key) == key
        assert key == "chatsdk-" + key.removeprefix("chatsdk-")

    def test_parts_are_told_apart(self) -> None:
        keys = {
            idempotency_key_for("a", 1),
            idempotency_key_for("a", "1"),
            idempotency_key_for("a1"),
            idempotency_key_for("1", "a"),
            idempotency_key_for("a", 1.0),
        }
        assert len(keys) == 5

    def test_needs_parts(self) -> None:
        with pytest.raises(ValueError):
            idempotency_key_for()
