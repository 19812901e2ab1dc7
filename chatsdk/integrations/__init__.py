"""Framework integrations: ``chatsdk.integrations.django``, ``.flask``, ``.celery``.

Each is enabled explicitly and imports its framework only itself (install the extra of the
same name, e.g. ``pip install "chatsdk[django]"``). They share the settings resolver in
:mod:`chatsdk.integrations._settings` and the per-process client holder in
:mod:`chatsdk.integrations._holder`.

Observability (see :mod:`chatsdk._instrument` for the events they are built on):
``chatsdk.integrations.prometheus`` (extra ``chatsdk[prometheus]``) exports metrics;
``chatsdk.integrations.otel`` (extra ``chatsdk[otel]``) makes OpenTelemetry spans.
"""
