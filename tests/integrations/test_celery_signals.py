"""chatsdk.integrations.celery's signal handlers, driven by Celery's own signals in-process."""

from __future__ import annotations

import pytest

from chatsdk import ChatClient, ConfigurationError
from chatsdk._http.idempotency import derived_key, set_default_namespace
from tests.processes import require_module

require_module("celery")

from celery import Celery, signals  # noqa: E402

from chatsdk.integrations import celery as chatsdk_celery  # noqa: E402


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(chatsdk_celery, "_holder", None)
    app = Celery("t", broker="memory://", set_as_current=False)
    app.conf.update(
        chatsdk_url="http://chatsdk.invalid",
        chatsdk_api_key="k",
        chatsdk_transport="memory",
        chatsdk_key_namespace="unit",
    )
    yield app
    set_default_namespace(None)


def test_get_client_before_setup_says_what_to_call(monkeypatch) -> None:
    monkeypatch.setattr(chatsdk_celery, "_holder", None)
    with pytest.raises(ConfigurationError, match=r"setup\(app\)"):
        chatsdk_celery.get_client()


def test_unknown_setup_options_are_refused(app) -> None:
    with pytest.raises(ConfigurationError, match="COLOUR"):
        chatsdk_celery.setup(app, colour="red")


def test_the_client_is_built_on_process_init_and_closed_on_shutdown(app, monkeypatch) -> None:
    chatsdk_celery.setup(app)
    holder = chatsdk_celery._holder
    assert holder is not None and not holder.built
    signals.worker_process_init.send(sender=None)
    assert holder.built
    client = chatsdk_celery.get_client()
    assert chatsdk_celery.get_client() is client
    closed: list[ChatClient] = []
    real_close = client.close
    monkeypatch.setattr(client, "close", lambda: (closed.append(client), real_close())[1])
    signals.worker_process_shutdown.send(sender=None, pid=1, exitcode=0)
    assert not holder.built
    assert closed == [client]
    assert chatsdk_celery.get_client() is not client  # a new one on the next use


def test_a_missing_url_is_logged_at_process_init_and_raised_by_get_client(app, caplog) -> None:
    app.conf.chatsdk_url = None
    chatsdk_celery.setup(app)
    signals.worker_process_init.send(sender=None)
    assert "could not be built" in caplog.text
    with pytest.raises(ConfigurationError, match="chatsdk_url"):
        chatsdk_celery.get_client()


def test_a_task_run_is_a_key_scope_from_prerun_to_postrun(app) -> None:
    chatsdk_celery.setup(app)
    scope = chatsdk_celery.task_key_scope("tid-1")
    signals.task_prerun.send(sender=None, task_id="tid-1", task=None)
    first = derived_key()
    signals.task_prerun.send(sender=None, task_id="tid-2", task=None)  # a nested apply()
    inner = derived_key()
    signals.task_postrun.send(sender=None, task_id="tid-2", task=None)
    second = derived_key()
    signals.task_postrun.send(sender=None, task_id="tid-1", task=None)
    assert derived_key() is None
    assert [first, second] == [scope.next_key(), scope.next_key()]
    assert inner == chatsdk_celery.task_key_scope("tid-2").next_key()
    # The namespace setting applies to the derived keys.
    set_default_namespace(None)
    assert chatsdk_celery.task_key_scope("tid-1").next_key() != first


def test_eager_tasks_get_keys_from_their_task_id(app) -> None:
    chatsdk_celery.setup(app)
    app.conf.task_always_eager = True

    @app.task(bind=True)
    def notify(self):
        chatsdk_celery.get_client().send_message("c1", "hello")
        return self.request.id

    task_id = notify.delay().get()
    sent = chatsdk_celery.get_client().session.adapter.transport.sent  # type: ignore[attr-defined]
    assert [s.idempotency_key for s in sent] == [chatsdk_celery.task_key_scope(task_id).next_key()]
