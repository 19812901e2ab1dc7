"""The circuit breaker and the retry budget inside the transport (responses-based)."""

from __future__ import annotations

import random

import pytest
import requests
import responses

from chatsdk import (
    BreakerPolicy,
    ChatClient,
    ChatSession,
    CircuitBreakerOpenError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from chatsdk._resilience.breaker import CircuitState
from tests.unit.test_transport import BASE, KEY, MESSAGES, error_json, message_json

HEALTH = f"{BASE}/api/health"


def client(sleep, clock, **kwargs) -> ChatClient:
    return ChatClient(session=ChatSession(BASE, KEY, sleep=sleep, clock=clock, **kwargs))


@responses.activate
def test_the_circuit_opens_mid_loop_and_stops_at_once(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json("unavailable"), status=503)
    policy = BreakerPolicy(failure_threshold=2, failed_operations=1)
    chat = client(sleep, clock, breaker=policy)
    with pytest.raises(CircuitBreakerOpenError) as info:
        chat.send_message("c", "t", idempotency_key="k1")
    assert len(responses.calls) == 2  # not the 5 the policy allows
    assert len(sleep.calls) == 1  # no sleeping through the attempts left
    assert info.value.attempts == 2 and info.value.idempotency_key == "k1"
    assert info.value.name == "rest:http://chat.test:80"
    assert info.value.retry_after == pytest.approx(60.0)
    assert isinstance(info.value.__cause__, ServerError)
    assert isinstance(info.value, requests.ConnectionError)
    # Before: not a TransportError, so the README's ``except TransportError`` missed it.
    assert isinstance(info.value, TransportError) and info.value.request_sent is False


@responses.activate
def test_one_failed_operation_leaves_a_quiet_host_closed_and_a_second_opens_it(
    sleep, clock
) -> None:
    # Before: one send_message's 5 failed attempts opened the circuit for 60 s.
    responses.add(responses.POST, MESSAGES, json=error_json("internal"), status=500)
    chat = client(sleep, clock)
    with pytest.raises(ServerError) as info:
        chat.send_message("c", "t")
    assert info.value.attempts == 5
    assert chat.session.breakers["rest:http://chat.test:80"].state is CircuitState.CLOSED
    with pytest.raises(CircuitBreakerOpenError) as second:
        chat.send_message("c", "t")
    assert second.value.attempts == 1  # its first failure opened the circuit
    assert chat.session.breakers["rest:http://chat.test:80"].state is CircuitState.OPEN


@responses.activate
def test_an_open_circuit_fails_fast_with_nothing_sent(sleep, clock, monkeypatch) -> None:
    responses.add(responses.POST, MESSAGES, json=error_json("internal"), status=500)
    chat = client(sleep, clock)
    with pytest.raises(ServerError) as info:  # the last attempt's real error
        chat.send_message("c", "t")
    assert info.value.attempts == 5
    with pytest.raises(CircuitBreakerOpenError):
        chat.send_message("c", "t")
    assert chat.session.breakers["rest:http://chat.test:80"].state is CircuitState.OPEN

    merged: list[str] = []
    original = requests.Session.merge_environment_settings

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        merged.append("called")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "merge_environment_settings", spy)
    with pytest.raises(CircuitBreakerOpenError) as info2:
        chat.send_message("c", "t", idempotency_key="k2")
    assert len(responses.calls) == 6  # nothing more was sent
    assert merged == []  # refused before any request work (proxy lookup, connection)
    assert info2.value.attempts == 0 and info2.value.idempotency_key == "k2"


@responses.activate
def test_other_hosts_are_unaffected_and_recovery_goes_through_half_open(sleep, clock) -> None:
    responses.add(responses.GET, HEALTH, status=502)
    responses.add(responses.GET, "http://other.test/api/health", json={"status": "ok"})
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock)
    changes: list[tuple[str, str]] = []
    session.add_breaker_listener(lambda b, old, new: changes.append((old.name, new.name)))
    assert session.get("/api/health").status_code == 502
    with pytest.raises(CircuitBreakerOpenError):
        session.get("/api/health")
    assert session.get("http://other.test/api/health").status_code == 200

    responses.replace(responses.GET, HEALTH, json={"status": "ok"})
    clock.advance(60.0)
    assert session.breakers["rest:http://chat.test:80"].state is CircuitState.HALF_OPEN
    assert session.get("/api/health").status_code == 200
    assert session.get("/api/health").status_code == 200
    assert session.breakers["rest:http://chat.test:80"].state is CircuitState.CLOSED
    assert changes == [("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")]


@responses.activate
def test_429_is_neither_success_nor_failure(sleep, clock) -> None:
    responses.add(responses.GET, HEALTH, status=429, json=error_json("rate_limited"))
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock)
    for _ in range(3):
        session.get("/api/health")
    snapshot = session.breakers["rest:http://chat.test:80"]
    assert snapshot.state is CircuitState.CLOSED
    assert snapshot.failure_count == 0


@responses.activate
def test_a_long_503_retry_after_keeps_the_circuit_open(sleep, clock) -> None:
    responses.add(responses.GET, HEALTH, status=503, headers={"Retry-After": "50"})
    policy = BreakerPolicy(failure_threshold=1, recovery_timeout=5.0, failed_operations=1)
    no_deadline = RetryPolicy(deadline=None)  # a 50 s wait would pass the default 20 s one
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock, breaker=policy, retry=no_deadline)
    with pytest.raises(CircuitBreakerOpenError) as info:
        session.get("/api/health")
    assert info.value.retry_after == pytest.approx(50.0)
    breaker = session.breaker_for()
    assert breaker is not None and breaker.state is CircuitState.OPEN
    clock.advance(10.0)
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_after == pytest.approx(40.0)


@responses.activate
def test_a_day_long_503_retry_after_holds_the_circuit_only_up_to_the_cap(sleep, clock) -> None:
    # Before: Retry-After: 86400 kept the host's circuit open for a day.
    responses.add(responses.GET, HEALTH, status=503, headers={"Retry-After": "86400"})
    policy = BreakerPolicy(failure_threshold=1, recovery_timeout=30.0, failed_operations=1)
    retry = RetryPolicy(max_retry_after=120.0)
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock, breaker=policy, retry=retry)
    assert session.get("/api/health").status_code == 503  # above max_retry_after: no retry
    breaker = session.breaker_for()
    assert breaker is not None and breaker.state is CircuitState.OPEN
    assert breaker.retry_after == pytest.approx(120.0)  # max(recovery_timeout, max_retry_after)
    clock.advance(120.0)
    assert breaker.state is CircuitState.HALF_OPEN


@responses.activate
def test_a_503_error_carries_its_retry_after(sleep, clock) -> None:
    # Before: ServerError had no .retry_after; every APIError carries it now.
    responses.add(
        responses.POST,
        MESSAGES,
        status=503,
        headers={"Retry-After": "7"},
        json=error_json("unavailable"),
    )
    responses.add(responses.POST, MESSAGES, status=500, json=error_json("internal"))
    chat = client(sleep, clock, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(ServerError) as info:
        chat.send_message("c", "t")
    assert info.value.retry_after == 7.0
    with pytest.raises(ServerError) as info:
        chat.send_message("c", "t")
    assert info.value.retry_after is None


@responses.activate
def test_transport_failures_count_and_breaker_false_turns_it_off(sleep, clock) -> None:
    responses.add(responses.GET, HEALTH, body=requests.ConnectTimeout("slow"))
    with ChatSession(BASE, KEY, sleep=sleep, clock=clock) as session:
        with pytest.raises(requests.ConnectTimeout):
            session.get("/api/health")
        with pytest.raises(CircuitBreakerOpenError):  # a second operation opens the circuit
            session.get("/api/health")
        assert session.breakers["rest:http://chat.test:80"].state is CircuitState.OPEN
    unguarded = RetryPolicy(budget_capacity=None)
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock, breaker=False, retry=unguarded)
    for _ in range(3):
        with pytest.raises(requests.ConnectionError):
            session.get("/api/health")
    assert session.breakers == {} and session.breaker_for() is None
    assert session.adapter.hosts.get("rest:http://chat.test:80").budget is None
    assert len(responses.calls) == 5 + 1 + 15


def test_ws_breakers_are_separate() -> None:
    session = ChatSession(BASE, KEY)
    rest, ws = session.breaker_for(), session.breaker_for("ws://chat.test/connection", kind="ws")
    assert rest is not None and ws is not None and rest is not ws
    assert ws.name == "ws:ws://chat.test:80"


@responses.activate
def test_the_budget_caps_requests_during_a_total_outage(sleep, clock) -> None:
    responses.add(responses.GET, HEALTH, status=503)
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock, breaker=False)
    operations = 200
    for _ in range(operations):
        session.get("/api/health")
    per_op = len(responses.calls) / operations
    # 20 tokens of retries, then first attempts only.
    assert len(responses.calls) == operations + 20
    assert per_op <= 1.2


@responses.activate
def test_the_budget_lets_30_percent_transient_failures_through(sleep, clock) -> None:
    rng = random.Random(7)

    def flaky(_request):  # type: ignore[no-untyped-def]
        if rng.random() < 0.3:
            return (503, {}, '{"error": {"code": "unavailable", "message": "x"}}')
        return (201, {}, __import__("json").dumps(message_json()))

    responses.add_callback(responses.POST, MESSAGES, callback=flaky)
    chat = client(sleep, clock, breaker=False, retry=RetryPolicy())
    cut_short = failed = 0
    for i in range(2000):
        try:
            chat.send_message("c", f"m{i}")
        except ServerError as exc:
            failed += 1  # 0.3**5: all five attempts failed, with or without a budget
            cut_short += exc.attempts != 5
    assert cut_short == 0  # the budget never refused a retry
    assert failed <= 15
    budget = chat.session.adapter.hosts.get("rest:http://chat.test:80").budget
    assert budget is not None and budget.tokens > 5


@responses.activate
def test_a_half_open_circuit_with_its_probe_out_refuses_another_call_unsent(sleep, clock) -> None:
    # The session's fail-fast lets a HALF_OPEN circuit through; the attempt's own permit
    # is what refuses a call while every probe slot is taken (another thread's probe).
    responses.add(responses.GET, HEALTH, status=502)
    policy = BreakerPolicy(failure_threshold=1, failed_operations=1, half_open_max_calls=1)
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock, breaker=policy)
    with pytest.raises(CircuitBreakerOpenError):  # the first 502 opens it
        session.get("/api/health")
    clock.advance(60.0)
    breaker = session.breaker_for()
    assert breaker is not None and breaker.state is CircuitState.HALF_OPEN
    probe = breaker.acquire()  # the one probe, in flight elsewhere
    sent = len(responses.calls)
    with pytest.raises(CircuitBreakerOpenError) as info:
        session.get("/api/health")
    assert len(responses.calls) == sent  # refused before anything was sent
    assert info.value.request_sent is False
    probe.success()
    with pytest.raises(CircuitBreakerOpenError):  # the next probe is let through, and fails
        session.get("/api/health")
    assert len(responses.calls) == sent + 1
