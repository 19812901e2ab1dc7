"""Key namespaces of idempotency_key_for, and key scopes: creates keyed by their position."""

from __future__ import annotations

import threading

import pytest

from chatsdk import ChatClient, idempotency_key_for
from chatsdk._http import idempotency
from chatsdk._http.idempotency import KeyScope, derived_key, key_scope, set_default_namespace
from chatsdk.testing import InMemoryTransport, set_testing


@pytest.fixture(autouse=True)
def _no_default_namespace(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(idempotency.NAMESPACE_ENV, raising=False)
    set_default_namespace(None)
    yield
    set_default_namespace(None)


def test_keys_without_a_namespace_are_those_of_earlier_versions() -> None:
    # The value the previous release derived: stored outboxes and server keys stay valid.
    assert idempotency_key_for("order-shipped", 42) == idempotency_key_for(
        "order-shipped", 42, namespace=None
    )
    assert idempotency_key_for("a", 1) != idempotency_key_for("a", "1")


def test_a_namespace_keeps_the_same_ids_of_two_environments_apart() -> None:
    prod = idempotency_key_for("order-shipped", 42, namespace="prod")
    staging = idempotency_key_for("order-shipped", 42, namespace="staging")
    plain = idempotency_key_for("order-shipped", 42)
    assert len({prod, staging, plain}) == 3
    assert prod == idempotency_key_for("order-shipped", 42, namespace="prod")
    # A namespace is not just another leading part.
    assert prod != idempotency_key_for("prod", "order-shipped", 42)


def test_the_default_namespace_comes_from_the_setting_then_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(idempotency.NAMESPACE_ENV, "from-env")
    assert idempotency_key_for("x") == idempotency_key_for("x", namespace="from-env")
    set_default_namespace("from-settings")
    assert idempotency_key_for("x") == idempotency_key_for("x", namespace="from-settings")
    assert idempotency_key_for("x", namespace="explicit") != idempotency_key_for("x")


@pytest.mark.parametrize("bad", ["", 3])
def test_an_empty_or_non_string_namespace_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="namespace"):
        idempotency_key_for("x", namespace=bad)
    with pytest.raises(ValueError, match="namespace"):
        set_default_namespace(bad)


def test_a_scope_gives_each_position_its_key_and_a_rerun_the_same_keys() -> None:
    with key_scope("task", "id-1"):
        first = [derived_key() for _ in range(3)]
    with key_scope("task", "id-1"):
        again = [derived_key() for _ in range(3)]
    with key_scope("task", "id-2"):
        other = derived_key()
    assert first == again
    assert len(set(first)) == 3
    assert other not in first
    assert derived_key() is None  # outside any scope
    with pytest.raises(ValueError):
        KeyScope()


def test_a_scope_is_not_seen_by_threads_it_did_not_start_in() -> None:
    seen: list[str | None] = []
    with key_scope("task", "t"):
        thread = threading.Thread(target=lambda: seen.append(derived_key()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_every_create_of_any_client_in_a_scope_gets_its_positions_key() -> None:
    transport = InMemoryTransport()
    with (
        set_testing(True),
        ChatClient(transport.url, "k", transport=transport, outbox=None) as chat,
    ):
        with key_scope("run", 7):
            chat.send_message("c1", "one")
            message = chat.send_message("c1", "one")  # a second create, not a double tap
            chat.add_reaction(message.id, "+1")
        with key_scope("run", 7):  # the run again (a redelivery)
            chat.send_message("c1", "one")
            chat.send_message("c1", "one")
            chat.add_reaction(message.id, "+1")
    keys = [s.idempotency_key for s in transport.sent]
    scope = KeyScope("run", 7)
    assert keys[:3] == [scope.next_key() for _ in range(3)]
    assert len(transport.sent) == 3  # the rerun was answered from the first run
    assert transport.counters()["replays"] == 3


def test_an_explicit_key_wins_and_takes_no_position(tmp_path) -> None:
    transport = InMemoryTransport()
    with (
        set_testing(True),
        ChatClient(transport.url, "k", transport=transport, outbox=tmp_path / "o.db") as chat,
    ):
        with key_scope("run", 8):
            chat.send_message("c1", "explicit", idempotency_key="mine-1")
            entry = chat.queue_message("c1", "queued")
        assert entry.idempotency_key == KeyScope("run", 8).next_key()
        assert chat.flush()
    assert [s.idempotency_key for s in transport.sent] == ["mine-1", entry.idempotency_key]
