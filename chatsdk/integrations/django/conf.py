"""The ``CHATSDK`` settings: ``CHATSDK[NAME]`` > ``CHATSDK_<NAME>`` > environment > default."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

from chatsdk._errors import ConfigurationError
from chatsdk.integrations._settings import MISSING, NAMES, Settings, resolve

__all__ = ["DATABASE", "get_settings"]

#: ``CHATSDK["OUTBOX"] = "database"``: the outbox in the Django database.
DATABASE = "database"


def _dict() -> dict[str, Any]:
    value = getattr(django_settings, "CHATSDK", {})
    if not isinstance(value, dict):
        raise ConfigurationError(f"settings.CHATSDK must be a dict, got {type(value).__name__}")
    unknown = sorted(set(value) - set(NAMES))
    if unknown:
        raise ConfigurationError(
            f"settings.CHATSDK has unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(NAMES))}"
        )
    return value


def get_settings() -> Settings:
    """The resolved chatsdk settings of this Django project.

    Raises:
        ConfigurationError: ``CHATSDK`` is not a dict or has unknown keys, or an
            environment value cannot be converted.
    """
    chatsdk = _dict()
    return resolve(
        [
            (lambda n: chatsdk.get(n, MISSING), lambda n: f'settings.CHATSDK["{n}"]'),
            (
                lambda n: getattr(django_settings, f"CHATSDK_{n}", MISSING),
                lambda n: f"settings.CHATSDK_{n}",
            ),
        ],
        hint=lambda n: f'settings.CHATSDK["{n}"] (or settings.CHATSDK_{n}, or ${"CHATSDK_" + n})',
    )
