"""WSGI entry point; calls get_client() at import, as a --preload master would."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault(
    "DJANGO_SETTINGS_MODULE", "tests.integrations.django_project.project.settings"
)
application = get_wsgi_application()

if os.environ.get("CHATSDK_CLIENT_IN_MASTER") == "1":
    from chatsdk.integrations.django import get_client

    get_client()  # in the gunicorn master: each worker still builds its own
