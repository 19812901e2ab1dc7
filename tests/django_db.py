"""A Django database alias of a test's own, migrated: SQLite in tmp_path, or a PostgreSQL schema.

For tests of the Django outbox store outside pytest-django's test database: the alias is
added to Django's connection settings for the test, the chatsdk migrations run on it, and every
connection to it is closed and the alias removed afterwards. Database access is unblocked
(pytest-django blocks it by default) while the alias exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["database_settings", "migrated_alias"]


def database_settings(vendor: str, where: str, schema: str | None = None) -> dict[str, Any]:
    """``DATABASES`` entry: SQLite file ``where``, or PostgreSQL URL ``where`` in ``schema``."""
    if vendor == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": where, "OPTIONS": {"timeout": 30}}
    url = urlsplit(where)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.path.lstrip("/"),
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.hostname or "",
        "PORT": str(url.port or ""),
        "OPTIONS": {"options": f"-c search_path={schema}"} if schema else {},
    }


@contextmanager
def migrated_alias(
    vendor: str, tmp_path: Path, blocker: Any, postgres_url: str | None = None,
    schema: str | None = None, **overrides: Any,
) -> Iterator[str]:  # fmt: skip
    """A new alias on SQLite (a file in ``tmp_path``) or PostgreSQL (``schema``, created).

    ``overrides`` update its settings (``CONN_MAX_AGE=None``, ``OPTIONS={...}`` merged).
    """
    from django.db import connections
    from django.db.migrations.executor import MigrationExecutor

    alias = f"outbox_{uuid.uuid4().hex[:8]}"
    if vendor == "sqlite":
        config = database_settings("sqlite", str(tmp_path / f"{alias}.sqlite3"))
    else:
        import psycopg

        assert postgres_url is not None and schema is not None
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        config = database_settings("postgresql", postgres_url, schema)
    options = {**config["OPTIONS"], **overrides.pop("OPTIONS", {})}
    config = {**config, **overrides, "OPTIONS": options}
    filled = connections.configure_settings({"default": config, alias: config})
    connections.settings[alias] = filled[alias]
    with blocker.unblock():
        try:
            # The chatsdk app's migrations only (migrate would also run the other apps'
            # post_migrate handlers, which need their own tables).
            executor = MigrationExecutor(connections[alias])
            executor.migrate(executor.loader.graph.leaf_nodes("chatsdk"))
            connections[alias].close()
            yield alias
        finally:
            connections[alias].close()
            del connections[alias]
            del connections.settings[alias]
