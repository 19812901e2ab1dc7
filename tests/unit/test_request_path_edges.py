"""Edges of the request path: what a user rarely sees, but the SDK must get right."""

from __future__ import annotations

import pytest
import requests
import responses

from chatsdk import ChatClient, ChatSession, CircuitBreakerOpenError, ConflictError, ConnectError
from chatsdk._errors import excerpt, map_transport_error
from chatsdk._http import session as session_module
from chatsdk._http.retry import classify
from tests.unit.test_transport import BASE, KEY, MESSAGES


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt/SystemExit raised in the middle of an attempt."""


@responses.activate
def test_a_base_exception_mid_attempt_frees_the_probe_slot(sleep, clock) -> None:
    def interrupt(_request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        raise Interrupted

    responses.add_callback(responses.GET, f"{BASE}/api/health", callback=interrupt)
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock)
    breaker = session.breaker_for()
    assert breaker is not None
    breaker.force_open()
    clock.advance(60.0)  # HALF_OPEN: one probe slot
    with pytest.raises(Interrupted):
        session.get("/api/health")
    # The slot was given back: the next call is let through as a probe, not refused.
    responses.replace(responses.GET, f"{BASE}/api/health", json={"status": "ok"})
    assert session.get("/api/health").status_code == 200


@responses.activate
def test_a_409_without_a_json_body_is_a_plain_conflict(sleep, clock) -> None:
    responses.add(responses.POST, MESSAGES, status=409, body="<html>conflict</html>")
    chat = ChatClient(session=ChatSession(BASE, KEY, sleep=sleep, clock=clock))
    with pytest.raises(ConflictError) as info:
        chat.send_message("c", "t")
    assert info.value.code is None and info.value.attempts == 1
    assert classify(info.value).permanent


def test_excerpt_is_short_and_single_line() -> None:
    assert excerpt("a\n b  c") == "a b c"
    long = excerpt("x" * 10_000_000)
    assert long == "x" * 200 + "..."
    assert excerpt("") == "(empty body)"


def test_mapping_an_error_twice_keeps_the_first_mapping() -> None:
    mapped = ConnectError("refused")
    assert map_transport_error(mapped) is mapped


def test_a_forked_child_gets_fresh_pools_and_host_state() -> None:
    # What the at-fork hook runs in the child (a real fork is in tests/integration/test_fork.py).
    session = ChatSession(BASE, KEY)
    adapter = session.adapter
    pools, registry = adapter.poolmanager, adapter.hosts._hosts
    session_module._reset_after_fork(session)  # what chatsdk._fork runs for it in the child
    assert adapter.poolmanager is not pools and adapter.hosts._hosts is not registry
    assert adapter.proxy_manager == {}


@responses.activate
def test_an_explicit_verify_is_not_replaced_by_the_environment(monkeypatch, sleep, clock) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/from/the/environment.pem")
    seen: list[object] = []
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock)
    original = session.adapter.send

    def spy(request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        seen.append(kwargs["verify"])
        return original(request, **kwargs)  # type: ignore[arg-type]

    session.adapter.send = spy  # type: ignore[method-assign]
    responses.add(responses.GET, f"{BASE}/api/health", json={"status": "ok"})
    session.get("/api/health", verify=False)
    session.get("/api/health")
    assert seen == [False, "/from/the/environment.pem"]


def test_an_open_circuit_names_the_key_of_any_header_mapping(sleep, clock) -> None:
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock)
    breaker = session.breaker_for()
    assert breaker is not None
    breaker.force_open()
    headers = requests.structures.CaseInsensitiveDict({"Idempotency-Key": "k1"})
    with pytest.raises(CircuitBreakerOpenError) as info:
        session.post("/api/messages", headers=headers)
    assert info.value.idempotency_key == "k1"  # type: ignore[attr-defined]
    with pytest.raises(CircuitBreakerOpenError) as bare:
        session.get("/api/health")
    assert bare.value.idempotency_key is None


@responses.activate
def test_a_base_exception_without_a_breaker_propagates_untouched(sleep, clock) -> None:
    def interrupt(_request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        raise Interrupted

    responses.add_callback(responses.GET, f"{BASE}/api/health", callback=interrupt)
    session = ChatSession(BASE, KEY, sleep=sleep, clock=clock, breaker=False)
    with pytest.raises(Interrupted):
        session.get("/api/health")
    assert sleep.calls == []  # not retried: it is not an outcome of the host


def test_merging_settings_without_proxies_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    session = ChatSession("https://chat.test", KEY)
    merged = session.merge_environment_settings("https://chat.test/api", None, None, None, None)
    assert merged["proxies"] == {}  # requests passes a dict to fill; None asks for nothing
