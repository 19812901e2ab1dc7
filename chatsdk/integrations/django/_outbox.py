"""The outbox the settings name, opened for inspection (no drainer)."""

from __future__ import annotations

import os

from chatsdk._errors import ConfigurationError
from chatsdk._outbox.outbox import Outbox
from chatsdk.integrations._settings import Settings
from chatsdk.integrations.django.conf import DATABASE, get_settings

__all__ = ["client_outbox", "open_outbox"]

_NOT_YET = (
    'CHATSDK["OUTBOX"] = "database" needs the outbox storage contract, which this build '
    "does not have yet: use a file path for now"
)


def client_outbox(settings: Settings) -> str | None:
    """What the client's ``outbox=`` is for these settings.

    Raises:
        ConfigurationError: ``OUTBOX = "database"`` before the database store is available.
    """
    target = settings["OUTBOX"]
    if target == DATABASE:
        raise ConfigurationError(_NOT_YET)
    return None if not target else os.fspath(target)


def open_outbox() -> Outbox | None:
    """The settings' outbox without a drainer, or None when ``OUTBOX`` is not set.

    Raises:
        ConfigurationError: ``OUTBOX = "database"`` before the database store is available.
    """
    target = get_settings()["OUTBOX"]
    if not target:
        return None
    if target == DATABASE:
        raise ConfigurationError(_NOT_YET)
    return Outbox(os.fspath(target))
