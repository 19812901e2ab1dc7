"""One message per intent against the reference server, however often the intent arrives."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsdk import (
    ChatClient,
    ChatSDKError,
    ChatSession,
    IdempotencyKeyReusedError,
    Message,
    RetryPolicy,
    idempotency_key_for,
)
from chatsdk.testing import FaultPlan, ReferenceServer


def no_sleep(_seconds: float) -> None:
    pass


def client(srv: ReferenceServer, **kwargs) -> ChatClient:
    kwargs.setdefault("sleep", no_sleep)
    return ChatClient(session=ChatSession(srv.url, "test-key", breaker=False, **kwargs))


def test_twenty_threads_with_one_key_make_one_post() -> None:
    with ReferenceServer(faults=FaultPlan(delay=1.0, delay_range=(0.4, 0.4))) as srv:
        chat = client(srv)
        barrier = threading.Barrier(20)

        def send(_: int) -> Message:
            barrier.wait(10)
            return chat.send_message("general", "once", idempotency_key="tap-20")

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(send, range(20)))
        assert srv.counters()["requests"] == 1
        assert len(srv.messages("general")) == 1
        assert {m.id for m in results} == {srv.messages("general")[0]["id"]}
        assert sum(not m.replayed for m in results) == 1


def test_a_double_tap_is_one_message_and_a_later_tap_is_two() -> None:
    with ReferenceServer() as srv:
        chat = client(srv)
        first = chat.send_message("general", "tap")
        again = chat.send_message("general", "tap")
        other = chat.send_message("general", "tap tap")
        assert again.replayed and again.id == first.id and other.id != first.id
        assert srv.counters()["requests"] == 2
        chat._dedup.window = 0  # the window has passed
        chat.send_message("general", "tap")
        assert [m["text"] for m in srv.messages("general")] == ["tap", "tap tap", "tap"]


def test_two_processes_with_one_explicit_key_post_once() -> None:
    script = (
        "import sys, chatsdk\n"
        "chat = chatsdk.ChatClient(sys.argv[1], 'test-key')\n"
        "m = chat.send_message('general', 'nightly report', "
        "idempotency_key=chatsdk.idempotency_key_for('nightly', '2026-11-28'))\n"
        "print(m.id, m.replayed)\n"
    )
    with ReferenceServer(faults=FaultPlan(delay=1.0, delay_range=(0.2, 0.2))) as srv:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, srv.url], stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=60)[0].split() for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert len(srv.messages("general")) == 1
        assert {o[0] for o in outputs} == {srv.messages("general")[0]["id"]}
        assert sorted(o[1] for o in outputs) == ["False", "True"]


def test_a_concurrent_second_client_waits_out_409_then_gets_the_replay() -> None:
    with ReferenceServer(faults=FaultPlan(delay=1.0, delay_range=(0.3, 0.3))) as srv:
        key = idempotency_key_for("conflict", 1)
        with ThreadPoolExecutor(2) as pool:
            # Real backoff: the second client must outwait the first request's 0.3 s.
            chats = [
                client(srv, retry=RetryPolicy(jitter="none"), sleep=time.sleep) for _ in range(2)
            ]
            futures = [
                pool.submit(chats[i].send_message, "general", "x", idempotency_key=key)
                for i in range(2)
            ]
            results = [f.result(timeout=30) for f in futures]
        assert results[0].id == results[1].id
        assert len(srv.messages("general")) == 1
        assert srv.counters()["conflicts"] >= 1


def test_same_key_different_body_is_refused_and_not_retried() -> None:
    with ReferenceServer() as srv:
        chat = client(srv)
        chat.send_message("general", "one", idempotency_key="reused")
        with pytest.raises(IdempotencyKeyReusedError) as info:
            chat.send_message("general", "two", idempotency_key="reused")
        assert info.value.status == 422 and info.value.attempts == 1
        assert len(srv.messages("general")) == 1


def test_drop_after_faults_500_sends_from_8_threads_hold_exactly_500() -> None:
    plan = FaultPlan(drop_after=0.3, seed=11)
    with ReferenceServer(faults=plan) as srv:
        chat = client(srv)

        def send(i: int) -> Message:
            try:
                return chat.send_message("general", f"message {i}")
            except ChatSDKError as exc:  # 0.3**5 of sends: an outer retry, same key
                return chat.send_message(
                    "general", f"message {i}", idempotency_key=exc.idempotency_key
                )

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(send, range(500)))
        texts = [m["text"] for m in srv.messages("general")]
        assert len(texts) == 500 and len(set(texts)) == 500
        assert srv.counters()["fault.drop_after"] > 100
        by_text = {m["text"]: m["id"] for m in srv.messages("general")}
        assert all(by_text[m.text] == m.id for m in results)  # each caller got its message
        assert 0 < sum(m.replayed for m in results) <= srv.counters()["replays"]


ACTIONS = st.lists(
    st.tuples(
        st.integers(0, 5), st.sampled_from(["send", "double_tap", "outer_retry", "new_process"])
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(actions=ACTIONS, seed=st.integers(0, 2**16))
def test_any_interleaving_of_n_intents_leaves_n_messages(shared_server, actions, seed) -> None:
    shared_server.faults = FaultPlan(drop_after=0.25, drop_before=0.1, server_error=0.1, seed=seed)
    channel = f"prop-{uuid.uuid4().hex[:12]}"
    intents = sorted({i for i, _ in actions})
    keys = {i: idempotency_key_for(channel, i) for i in intents}
    chat = client(shared_server, retry=RetryPolicy(max_attempts=2))
    for intent, action in actions:
        text = f"intent {intent}"
        try:
            if action == "send":
                chat.send_message(channel, text, idempotency_key=keys[intent])
            elif action == "double_tap":
                chat.send_message(channel, text, idempotency_key=keys[intent])
                chat.send_message(channel, text, idempotency_key=keys[intent])
            elif action == "outer_retry":
                try:
                    chat.send_message(channel, text, idempotency_key=keys[intent])
                except ChatSDKError:
                    chat.send_message(channel, text, idempotency_key=keys[intent])
            else:  # another process: a fresh client, same derived key
                client(shared_server).send_message(channel, text, idempotency_key=keys[intent])
        except ChatSDKError:
            pass  # the network won this round; the intent is completed below
    shared_server.faults = "none"
    for intent in intents:  # every intent eventually delivered, under its own key
        client(shared_server).send_message(
            channel, f"intent {intent}", idempotency_key=keys[intent]
        )
    texts = sorted(m["text"] for m in shared_server.messages(channel))
    assert texts == sorted(f"intent {i}" for i in intents)


@pytest.fixture(scope="module")
def shared_server():
    with ReferenceServer() as srv:
        yield srv
