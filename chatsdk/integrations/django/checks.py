"""System checks (``manage.py check``): each names the setting to fix.

- ``chatsdk.E001``: no server URL.
- ``chatsdk.E002``: no API key.
- ``chatsdk.E003``: the outbox file cannot be written, or is one of the app's own
  database files (SQLite in ``DATABASES``): the outbox needs a file of its own.
- ``chatsdk.E004``: the ``CHATSDK`` settings are invalid (not a dict, an unknown key, an
  environment value that cannot be converted).
- ``chatsdk.W001``: the outbox file is on a temporary filesystem (tmpfs, ramfs): queued
  messages would be lost at reboot.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning

from chatsdk._errors import ConfigurationError
from chatsdk.integrations.django.conf import DATABASE, get_settings

__all__ = ["check_settings", "filesystem_type"]

_TEMPORARY = ("tmpfs", "ramfs")


def filesystem_type(path: str, mounts: str = "/proc/mounts") -> str | None:
    """The type of the filesystem holding ``path`` (Linux ``/proc/mounts``), or None."""
    try:
        with open(mounts, encoding="utf-8") as f:
            table = [line.split() for line in f]
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for fields in table:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fields[2])
    return None if best is None else best[1]


def _database_files() -> set[str]:
    files = set()
    for alias in getattr(django_settings, "DATABASES", {}).values():
        if "sqlite" in str(alias.get("ENGINE", "")) and alias.get("NAME"):
            name = os.fspath(alias["NAME"])
            if name != ":memory:" and not name.startswith("file:"):
                files.add(os.path.realpath(name))
    return files


def _writable(path: str) -> bool:
    if os.path.exists(path):
        return os.path.isfile(path) and os.access(path, os.R_OK | os.W_OK)
    parent = os.path.dirname(os.path.abspath(path)) or "."
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


def check_settings(app_configs: Any = None, **_kwargs: Any) -> list[CheckMessage]:
    """The chatsdk system checks."""
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        return [Error(str(exc), hint="fix settings.CHATSDK", id="chatsdk.E004")]
    found: list[CheckMessage] = []
    if not settings["URL"]:
        found.append(
            Error(
                "chatsdk has no server URL",
                hint=f"set {settings.hint('URL')}",
                id="chatsdk.E001",
            )
        )
    if not settings["API_KEY"]:
        found.append(
            Error(
                "chatsdk has no API key",
                hint=f"set {settings.hint('API_KEY')}, e.g. from a secret store",
                id="chatsdk.E002",
            )
        )
    outbox = settings["OUTBOX"]
    if not outbox or outbox == DATABASE or not isinstance(outbox, (str, os.PathLike)):
        return found
    target = os.fspath(outbox)
    scheme = target.partition("://")[0].lower() if "://" in target else ""
    if scheme in ("postgresql", "postgres"):
        return found
    path = target.split("://", 1)[1][1:] if scheme == "sqlite" else target
    where = settings.source("OUTBOX")
    if os.path.realpath(path) in _database_files():
        found.append(
            Error(
                f"the chatsdk outbox {path!r} is the app's own database file",
                hint=f'give {where} a file of its own, or set it to "database" to keep the '
                "outbox in the app's database as a model",
                id="chatsdk.E003",
            )
        )
    elif not _writable(path):
        found.append(
            Error(
                f"the chatsdk outbox {path!r} cannot be written",
                hint=f"make its directory writable by the app's user, or change {where}",
                id="chatsdk.E003",
            )
        )
    fstype = filesystem_type(path if os.path.exists(path) else os.path.dirname(path) or ".")
    if fstype in _TEMPORARY:
        found.append(
            Warning(
                f"the chatsdk outbox {path!r} is on a temporary filesystem ({fstype}): "
                "queued messages are lost at reboot",
                hint=f"point {where} at persistent storage",
                id="chatsdk.W001",
            )
        )
    return found
