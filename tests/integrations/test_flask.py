"""Flask: ChatSDK with an app factory, two apps in one process, ``flask chatsdk`` commands."""

from __future__ import annotations

import gc
import json
import subprocess
import weakref
from pathlib import Path

import pytest

from chatsdk import ConfigurationError, Outbox
from chatsdk.testing import set_testing
from tests.processes import child_env, python, require_module

require_module("flask")

from flask import Flask  # noqa: E402

from chatsdk.integrations.flask import ChatSDK  # noqa: E402
from tests.integrations.flask_app.app import chat, create_app  # noqa: E402


@pytest.fixture(autouse=True)
def _testing():
    with set_testing(True):
        yield


def memory_app(**config) -> Flask:
    return create_app(
        {"CHATSDK_URL": "http://chatsdk.invalid", "CHATSDK_API_KEY": "k",
         "CHATSDK_TRANSPORT": "memory", **config}
    )  # fmt: skip


def test_two_apps_in_one_process_each_have_their_own_client_and_settings() -> None:
    shop, admin = memory_app(), memory_app(CHATSDK_URL="http://other.invalid")
    assert shop.test_client().post("/orders/1").status_code == 200
    assert admin.test_client().post("/orders/2").status_code == 200
    assert admin.test_client().post("/orders/3").status_code == 200
    with shop.app_context():
        shop_client = chat.client
        assert [s.data["text"] for s in chat.sent] == ["order 1"]
    with admin.app_context():
        assert chat.client is not shop_client
        assert chat.client.session.base_url.startswith("http://other.invalid")
        assert [s.data["text"] for s in chat.sent] == ["order 2", "order 3"]
    assert isinstance(shop.extensions["chatsdk"], type(admin.extensions["chatsdk"]))


def test_the_extension_keeps_no_reference_to_an_app() -> None:
    app = memory_app()
    ref = weakref.ref(app)
    assert all(not isinstance(v, Flask) for v in vars(chat).values())
    del app
    gc.collect()
    assert ref() is None


def test_chatsdk_app_form_and_a_missing_init_app() -> None:
    app = Flask("direct")
    app.config.update(CHATSDK_URL="http://x.invalid", CHATSDK_API_KEY="k")
    ext = ChatSDK(app)
    with app.app_context():
        assert ext.client is ext.client
        with pytest.raises(ConfigurationError, match="sent needs the in-memory transport"):
            _ = ext.sent
    bare = Flask("bare")
    with bare.app_context(), pytest.raises(ConfigurationError, match="init_app"):
        _ = ext.client


def test_a_missing_key_names_the_config_key(monkeypatch) -> None:
    monkeypatch.delenv("CHATSDK_API_KEY", raising=False)
    app = create_app({"CHATSDK_URL": "http://x.invalid"})
    with app.app_context(), pytest.raises(ConfigurationError, match=r'CHATSDK_API_KEY"\]'):
        _ = chat.client


def test_config_wins_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("CHATSDK_URL", "http://env.invalid")
    monkeypatch.setenv("CHATSDK_TIMEOUT", "7.5")
    app = memory_app()
    settings = app.extensions["chatsdk"].settings
    assert settings["URL"] == "http://chatsdk.invalid"
    assert settings.source("URL") == 'app.config["CHATSDK_URL"]'
    assert settings["TIMEOUT"] == 7.5 and settings.source("TIMEOUT") == "$CHATSDK_TIMEOUT"


def flask_cli(tmp_path: Path, server_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env(
        FLASK_CHATSDK_URL=server_url,
        FLASK_CHATSDK_API_KEY="test-key",
        FLASK_CHATSDK_OUTBOX=str(tmp_path / "outbox.db"),
    )
    return subprocess.run(
        python("-m", "flask", "--app", "tests.integrations.flask_app.app:create_app", *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_flask_chatsdk_drain_once_delivers_and_status_reports(tmp_path, chatsdk_server) -> None:
    with Outbox(tmp_path / "outbox.db") as outbox:
        for n in range(5):
            outbox.enqueue("message", "orders", {"channelId": "orders", "text": f"q{n}"})
    status = flask_cli(tmp_path, chatsdk_server.url, "chatsdk", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["queued"] == 5
    drained = flask_cli(tmp_path, chatsdk_server.url, "chatsdk", "drain", "--once")
    assert drained.returncode == 0, drained.stderr
    assert "sent 5, failed 0, pending 0" in drained.stdout
    assert sorted(m["text"] for m in chatsdk_server.all_messages()) == [f"q{n}" for n in range(5)]


def test_flask_chatsdk_drain_once_exits_75_while_entries_wait_in_backoff(
    tmp_path, chatsdk_server
) -> None:
    with Outbox(tmp_path / "outbox.db") as outbox:
        outbox.enqueue("message", "orders", {"channelId": "orders", "text": "later"})
    chatsdk_server.stop()  # refused connections: the entry goes into backoff
    drained = flask_cli(
        tmp_path, chatsdk_server.url, "chatsdk", "drain", "--once", "--timeout", "60"
    )
    assert drained.returncode == 75, drained.stdout + drained.stderr
    assert "pending 1" in drained.stdout


def test_flask_chatsdk_status_exits_65_on_dead_letters(tmp_path, chatsdk_server) -> None:
    with Outbox(tmp_path / "outbox.db") as outbox:
        outbox.enqueue("message", "orders", {"channelId": "orders", "text": "x" * 5000})
    drained = flask_cli(tmp_path, chatsdk_server.url, "chatsdk", "drain", "--once")
    assert drained.returncode == 65, drained.stdout + drained.stderr
    status = flask_cli(tmp_path, chatsdk_server.url, "chatsdk", "status")
    assert status.returncode == 65
    assert "dead-lettered" in status.stderr
