"""Django: ``INSTALLED_APPS += ["chatsdk.integrations.django"]``, then ``get_client()``.

Settings live in a ``CHATSDK`` dict (``URL``, ``API_KEY``, ``OUTBOX``, ``RETRY``,
``BREAKER``, ``TIMEOUT``, ``CLOSE_TIMEOUT``, ``DEDUP_WINDOW``, ``TRANSPORT``,
``KEY_NAMESPACE``); each falls back to a ``CHATSDK_<NAME>`` setting, then the environment
variable of that name, then the default (django-anymail's precedence).

:func:`get_client` is the process's one :class:`~chatsdk.ChatClient`, built on first use
in the process that uses it: calling it in a gunicorn ``--preload`` master (from
``wsgi.py``) is supported, each worker builds its own after the fork. It is closed at exit
with a flush bounded by ``CLOSE_TIMEOUT``. Changing the settings (``override_settings`` in
tests) rebuilds it. Management commands: ``chatsdk_drain`` and ``chatsdk_outbox``; system
checks ``chatsdk.E001``..``E003``, ``chatsdk.W001``.

``OUTBOX = "database"`` keeps the outbox in the Django database (the ``chatsdk`` app's
model, created by ``manage.py migrate``): ``queue_message`` inside ``transaction.atomic()``
is part of the transaction. The admin lists the entries, with a retry action.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatsdk._client import ChatClient
from chatsdk.integrations._holder import ClientHolder

if TYPE_CHECKING:
    from chatsdk.testing import SentLog

__all__ = ["get_client", "sent"]


def _build() -> ChatClient:
    from chatsdk.integrations._settings import build_client  # noqa: PLC0415
    from chatsdk.integrations.django._outbox import client_outbox  # noqa: PLC0415
    from chatsdk.integrations.django.conf import get_settings  # noqa: PLC0415 - needs Django

    settings = get_settings()
    return build_client(settings, outbox=client_outbox(settings))


_holder = ClientHolder(_build)


def get_client() -> ChatClient:
    """The process's ChatClient, built from the ``CHATSDK`` settings on first use.

    Raises:
        ConfigurationError: a setting is missing or invalid (the message names it).
    """
    return _holder.get()


def sent() -> SentLog:
    """What the code under test created, with ``CHATSDK = {"TRANSPORT": "memory"}``.

    The messages and reactions the server created, in order, each with its
    ``Idempotency-Key``: :class:`chatsdk.testing.SentLog`.

    Raises:
        ConfigurationError: the client does not use the in-memory transport.
    """
    from chatsdk.integrations._settings import sent_of  # noqa: PLC0415
    from chatsdk.integrations.django.conf import get_settings  # noqa: PLC0415

    return sent_of(get_client(), get_settings())
