"""Celery: one client per worker process, and creates that a redelivered task makes once.

::

    from celery import Celery
    from chatsdk.integrations import celery as chatsdk_celery

    app = Celery("shop")
    chatsdk_celery.setup(app)

    @app.task(acks_late=True)
    def notify(order_id):
        chatsdk_celery.get_client().send_message("orders", f"order {order_id} shipped")

- :func:`setup` connects the signals. The client of a worker process is built after the
  worker forks (``worker_process_init``) and flushed on ``worker_process_shutdown`` (Celery's
  pool processes leave with ``os._exit``: ``atexit`` never runs there).
- Inside a task, a create without an explicit ``idempotency_key`` (``send_message``,
  ``add_reaction``, ``queue_message``, ``queue_reaction``) gets a key derived from the task
  id and the create's position in the run (first create, second, ...). A task redelivered
  after its worker died (``acks_late`` with ``task_reject_on_worker_lost``) or retried with
  ``self.retry()`` keeps its id, so each of its creates is posted once, by any
  :class:`~chatsdk.ChatClient` used inside the task. The rule: the same task must make its
  creates in the same order on every run. Creates made in threads the task starts are not
  covered (a thread does not inherit the task's context): give those explicit keys.

Settings come from ``app.conf`` (``chatsdk_url``, ``chatsdk_api_key``, ``chatsdk_outbox``,
``chatsdk_key_namespace``, ...), then ``$CHATSDK_<NAME>``, then keyword arguments of
:func:`setup` override both.
"""

from __future__ import annotations

import logging
import threading
from contextvars import Token
from typing import Any

from celery import Celery, signals

from chatsdk._client import ChatClient
from chatsdk._errors import ConfigurationError
from chatsdk._http.idempotency import KeyScope, enter_scope, exit_scope, set_default_namespace
from chatsdk.integrations._holder import ClientHolder
from chatsdk.integrations._settings import MISSING, NAMES, Settings, build_client, resolve

__all__ = ["get_client", "setup", "task_key_scope"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_holder: ClientHolder | None = None
_tokens: dict[str, list[Token[KeyScope | None]]] = {}


def settings_of(app: Celery, options: dict[str, Any] | None = None) -> Settings:
    """The chatsdk settings of a Celery app: ``options`` > ``app.conf.chatsdk_*`` > env."""
    given = {k.upper(): v for k, v in (options or {}).items()}
    unknown = sorted(set(given) - set(NAMES))
    if unknown:
        raise ConfigurationError(f"unknown chatsdk setting(s) for setup(): {', '.join(unknown)}")
    return resolve(
        [
            (lambda n: given.get(n, MISSING), lambda n: f"setup({n.lower()}=...)"),
            (
                lambda n: app.conf.get(f"chatsdk_{n.lower()}", MISSING),
                lambda n: f"app.conf.chatsdk_{n.lower()}",
            ),
        ],
        hint=lambda n: f"app.conf.chatsdk_{n.lower()} (or ${'CHATSDK_' + n})",
    )


def setup(app: Celery, **options: Any) -> None:
    """Connect chatsdk to a Celery app: per-process client, redelivery-safe keys.

    Args:
        app: the Celery app.
        **options: settings that override ``app.conf`` (``url=``, ``api_key=``,
            ``outbox=``, ``key_namespace=``, ``retry=``, ...).

    Raises:
        ConfigurationError: an unknown or invalid setting (a missing URL or key is reported
            when the client is first needed).
    """
    global _holder  # noqa: PLW0603 - the worker process's one client
    settings = settings_of(app, options)
    namespace = settings["KEY_NAMESPACE"]
    if namespace is not None:
        set_default_namespace(namespace)
    with _lock:
        _holder = ClientHolder(lambda: build_client(settings_of(app, options)))
    signals.worker_process_init.connect(_on_process_init, weak=False)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)
    signals.task_prerun.connect(_on_task_prerun, weak=False)
    signals.task_postrun.connect(_on_task_postrun, weak=False)


def get_client() -> ChatClient:
    """The worker process's ChatClient (built on first use, in this process).

    Raises:
        ConfigurationError: :func:`setup` was not called, or a setting is missing.
    """
    holder = _holder
    if holder is None:
        raise ConfigurationError(
            "chatsdk.integrations.celery.setup(app) was not called (call it where the app "
            "is created)"
        )
    return holder.get()


def task_key_scope(task_id: str) -> KeyScope:
    """The key scope of one run of the task with this id (the keys its creates get)."""
    return KeyScope("celery-task", task_id)


def _on_process_init(**_kwargs: Any) -> None:
    holder = _holder
    if holder is None:  # pragma: no cover - connected by setup(), which sets it
        return
    try:
        holder.get()
    except ConfigurationError:
        # Tasks that use the client will raise it; tasks that do not keep working.
        log.exception("chatsdk: the worker process's client could not be built")


def _on_process_shutdown(**_kwargs: Any) -> None:
    holder = _holder
    if holder is not None and holder.built:
        holder.close()


def _on_task_prerun(task_id: str | None = None, **_kwargs: Any) -> None:
    if not task_id:
        return
    _tokens.setdefault(task_id, []).append(enter_scope(task_key_scope(task_id)))


def _on_task_postrun(task_id: str | None = None, **_kwargs: Any) -> None:
    stack = _tokens.get(task_id or "")
    if not stack:
        return
    exit_scope(stack.pop())
    if not stack:
        del _tokens[task_id or ""]
