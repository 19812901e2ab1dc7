"""Django: settings precedence, get_client, system checks, management commands (pytest-django)."""

from __future__ import annotations

import json
import os
import subprocess
from io import StringIO
from pathlib import Path

import pytest

from chatsdk import ConfigurationError, Outbox
from chatsdk.testing import set_testing
from tests.processes import child_env, manage_py, require, require_module

require_module("django")
require_module("pytest_django")

from django.core.management import call_command  # noqa: E402

from chatsdk.integrations.django import get_client, sent  # noqa: E402
from chatsdk.integrations.django.checks import filesystem_type  # noqa: E402
from chatsdk.integrations.django.conf import get_settings  # noqa: E402

MEMORY = {"URL": "http://chatsdk.invalid", "API_KEY": "k", "TRANSPORT": "memory"}


@pytest.fixture(autouse=True)
def _testing():
    with set_testing(True):
        yield


def test_the_chatsdk_dict_wins_then_chatsdk_name_settings_then_the_environment(
    settings, monkeypatch
) -> None:
    monkeypatch.setenv("CHATSDK_URL", "http://env.invalid")
    monkeypatch.setenv("CHATSDK_TIMEOUT", "3")
    settings.CHATSDK = {"API_KEY": "k"}
    settings.CHATSDK_URL = "http://setting.invalid"
    resolved = get_settings()
    assert resolved["URL"] == "http://setting.invalid"
    assert resolved.source("URL") == "settings.CHATSDK_URL"
    assert resolved["TIMEOUT"] == 3.0 and resolved.source("TIMEOUT") == "$CHATSDK_TIMEOUT"
    settings.CHATSDK = {"API_KEY": "k", "URL": "http://dict.invalid"}
    assert get_settings().source("URL") == 'settings.CHATSDK["URL"]'
    assert get_client().session.base_url.startswith("http://dict.invalid")


def test_unknown_keys_are_refused_with_the_known_ones(settings) -> None:
    settings.CHATSDK = {"URL": "http://x.invalid", "APIKEY": "k"}
    with pytest.raises(ConfigurationError, match=r"APIKEY.*known: API_KEY"):
        get_client()


def test_get_client_is_one_client_rebuilt_when_settings_change(settings) -> None:
    settings.CHATSDK = MEMORY
    client = get_client()
    assert get_client() is client
    settings.CHATSDK = {**MEMORY, "URL": "http://other.invalid"}
    assert get_client() is not client


def test_transport_memory_gives_the_sent_view(settings) -> None:
    settings.CHATSDK = MEMORY
    get_client().send_message("orders", "hello")
    assert [(s.kind, s.data["text"]) for s in sent()] == [("message", "hello")]
    settings.CHATSDK = {**MEMORY, "TRANSPORT": "http"}
    with pytest.raises(ConfigurationError, match=r'CHATSDK\["TRANSPORT"\]'):
        sent()


def test_the_key_namespace_setting_applies_to_idempotency_key_for(settings) -> None:
    import chatsdk
    from chatsdk._http.idempotency import set_default_namespace

    settings.CHATSDK = {**MEMORY, "KEY_NAMESPACE": "staging"}
    try:
        get_client()
        assert chatsdk.idempotency_key_for("o", 1) == chatsdk.idempotency_key_for(
            "o", 1, namespace="staging"
        )
    finally:
        set_default_namespace(None)


def manage(
    tmp_path: Path, chatsdk: dict[str, object], *args: str
) -> subprocess.CompletedProcess[str]:
    env = child_env(DJANGO_TEST_DB=str(tmp_path / "db.sqlite3"))
    for name in ("CHATSDK_URL", "CHATSDK_API_KEY", "CHATSDK_OUTBOX"):
        env.pop(name, None)
    return manage_py(env, chatsdk, *args)


@pytest.mark.parametrize(
    ("chatsdk", "code", "names"),
    [
        ({"API_KEY": "k"}, "chatsdk.E001", 'CHATSDK["URL"]'),
        ({"URL": "http://x.invalid"}, "chatsdk.E002", 'CHATSDK["API_KEY"]'),
        (
            {"URL": "http://x.invalid", "API_KEY": "k", "OUTBOX": "/proc/chatsdk/outbox.db"},
            "chatsdk.E003",
            'CHATSDK["OUTBOX"]',
        ),
        (
            {"URL": "http://x.invalid", "API_KEY": "k", "OUTBOX": "{db}"},
            "chatsdk.E003",
            "the app's own database file",
        ),
        ({"URL": "http://x.invalid", "API_KEY": "k", "COLOUR": 1}, "chatsdk.E004", "COLOUR"),
    ],
)
def test_manage_py_check_finds_each_misconfiguration(tmp_path, chatsdk, code, names) -> None:
    chatsdk = {k: (str(tmp_path / "db.sqlite3") if v == "{db}" else v) for k, v in chatsdk.items()}
    result = manage(tmp_path, chatsdk, "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert code in result.stderr and names in result.stderr


def test_manage_py_check_passes_a_good_configuration(tmp_path) -> None:
    good = {"URL": "http://x.invalid", "API_KEY": "k", "OUTBOX": str(tmp_path / "outbox.db")}
    result = manage(tmp_path, good, "check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_manage_py_check_warns_of_an_outbox_on_tmpfs(tmp_path) -> None:
    shm = "/dev/shm"
    require(filesystem_type(shm) == "tmpfs", "/dev/shm is not a tmpfs on this machine")
    config = {
        "URL": "http://x.invalid",
        "API_KEY": "k",
        "OUTBOX": f"{shm}/chatsdk-{os.getpid()}.db",
    }
    result = manage(tmp_path, config, "check")
    assert result.returncode == 0
    assert "chatsdk.W001" in result.stderr and "temporary filesystem" in result.stderr


def test_chatsdk_drain_once_delivers_as_a_management_command(tmp_path, chatsdk_server) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as outbox:
        for n in range(3):
            outbox.enqueue("message", "orders", {"channelId": "orders", "text": f"m{n}"})
    config = {"URL": chatsdk_server.url, "API_KEY": "test-key", "OUTBOX": str(path)}
    result = manage(tmp_path, config, "chatsdk_drain", "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 3, failed 0, pending 0" in result.stdout
    assert sorted(m["text"] for m in chatsdk_server.all_messages()) == ["m0", "m1", "m2"]
    status = manage(tmp_path, config, "chatsdk_outbox", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["sent"] == 3


def test_chatsdk_outbox_list_retry_and_purge(tmp_path, settings) -> None:
    path = tmp_path / "outbox.db"
    settings.CHATSDK = {**MEMORY, "OUTBOX": str(path)}
    with Outbox(path) as outbox:
        entry = outbox.enqueue("message", "orders", {"channelId": "orders", "text": "x" * 5000})
    out, err = StringIO(), StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("chatsdk_drain", "--once", stdout=out, stderr=err)
    assert exited.value.code == 65  # the 400: failed for good
    call_command("chatsdk_outbox", "list", "--status", "failed", stdout=out)
    assert f"{entry.id:>6}  failed" in out.getvalue()
    with pytest.raises(SystemExit) as exited:
        call_command("chatsdk_outbox", "retry", "999", stdout=out, stderr=err)
    assert exited.value.code == 65
    call_command("chatsdk_outbox", "retry", str(entry.id), stdout=out)
    assert f"entry {entry.id} queued again" in out.getvalue()
    with pytest.raises(SystemExit):
        call_command("chatsdk_drain", "--once", stdout=out, stderr=err)
    call_command("chatsdk_outbox", "purge", "--status", "failed", stdout=out)
    assert "purged 1 entries" in out.getvalue()


@pytest.mark.django_db
def test_the_database_outbox_setting_gives_the_django_store(settings) -> None:
    settings.CHATSDK = {**MEMORY, "OUTBOX": "database"}
    outbox = get_client().outbox
    assert outbox is not None and (outbox.backend, outbox.path) == ("django", "django:default")


@pytest.mark.django_db
def test_the_database_outbox_in_a_test_delivers_on_flush(settings) -> None:
    """How an app's own tests use it: pytest-django's transaction, test mode, flush."""
    from django.db import transaction

    from tests.integrations.django_project.shop.models import Order

    settings.CHATSDK = {**MEMORY, "OUTBOX": "database"}
    chat = get_client()
    with transaction.atomic():
        order = Order.objects.create(item="book")
        chat.queue_message("orders", f"order {order.pk}")
    assert chat.flush(5).pending == 0  # test mode: delivered in this thread
    assert [s.data["text"] for s in sent()] == [f"order {order.pk}"]
