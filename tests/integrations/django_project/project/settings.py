"""Settings of the Django test project: SQLite in $DJANGO_TEST_DB (or beside the project)."""

from __future__ import annotations

import json
import os
from pathlib import Path

BASE_DIR = Path(os.environ.get("DJANGO_TEST_DIR", Path(__file__).resolve().parent.parent))
SECRET_KEY = "not-secret-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.integrations.django_project.project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "chatsdk.integrations.django",
    "tests.integrations.django_project.shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_TEST_DB", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {"timeout": 30},
    }
}
# PostgreSQL instead, for subprocess runs: $DJANGO_TEST_POSTGRES_URL, in the schema
# $DJANGO_TEST_POSTGRES_SCHEMA (which must exist).
if os.environ.get("DJANGO_TEST_POSTGRES_URL"):
    from tests.django_db import database_settings

    DATABASES = {
        "default": database_settings(
            "postgresql",
            os.environ["DJANGO_TEST_POSTGRES_URL"],
            os.environ.get("DJANGO_TEST_POSTGRES_SCHEMA"),
        )
    }
# The chatsdk settings under test: $DJANGO_CHATSDK (JSON) for subprocess runs, else the
# in-memory transport, as a project's test settings would have it.
CHATSDK = json.loads(
    os.environ.get(
        "DJANGO_CHATSDK",
        '{"URL": "http://chatsdk.invalid", "API_KEY": "test-key", "TRANSPORT": "memory",'
        ' "KEY_NAMESPACE": "django-test"}',
    )
)
