"""The Django app: registers the system checks, rebuilds the client when settings change."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.signals import setting_changed


class ChatSDKConfig(AppConfig):
    """``chatsdk.integrations.django`` in ``INSTALLED_APPS``."""

    name = "chatsdk.integrations.django"
    label = "chatsdk"
    verbose_name = "chatsdk"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chatsdk.integrations.django import checks as chatsdk_checks  # noqa: PLC0415

        checks.register(chatsdk_checks.check_settings, "chatsdk")
        setting_changed.connect(_settings_changed, dispatch_uid="chatsdk-settings-changed")


def _settings_changed(setting: str, **_kwargs: Any) -> None:
    if setting == "CHATSDK" or setting.startswith("CHATSDK_"):
        from chatsdk.integrations.django import _holder  # noqa: PLC0415

        _holder.close()
