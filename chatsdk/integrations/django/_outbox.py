"""The outbox the settings name: a file, a ``postgresql://`` URL, or ``"database"``.

``CHATSDK["OUTBOX"] = "database"`` is the Django database store
(:class:`~chatsdk.integrations.django._store.DjangoStore`): the entries are rows of the
``chatsdk`` app's model, in the database Django's routers pick for it (``default``
without routers), created by ``manage.py migrate``.
"""

from __future__ import annotations

import os

from chatsdk._outbox.outbox import Outbox
from chatsdk.integrations._settings import Settings
from chatsdk.integrations.django.conf import DATABASE, get_settings

__all__ = ["client_outbox", "open_outbox"]


def _database_outbox() -> Outbox:
    from chatsdk.integrations.django._store import DjangoStore  # noqa: PLC0415 - needs apps

    return Outbox(DjangoStore())


def client_outbox(settings: Settings) -> str | Outbox | None:
    """What the client's ``outbox=`` is for these settings."""
    target = settings["OUTBOX"]
    if target == DATABASE:
        return _database_outbox()
    return None if not target else os.fspath(target)


def open_outbox() -> Outbox | None:
    """The settings' outbox without a drainer, or None when ``OUTBOX`` is not set."""
    target = get_settings()["OUTBOX"]
    if not target:
        return None
    if target == DATABASE:
        return _database_outbox()
    return Outbox(os.fspath(target))
