"""OpenTelemetry traces for chatsdk (extra ``chatsdk[otel]``; needs only opentelemetry-api).

::

    import chatsdk.integrations.otel
    chatsdk.integrations.otel.instrument()   # spans go to the global tracer provider

What you get, once a tracer provider is configured (without one the API's no-op tracer
makes every span free):

- one span per operation, ``chatsdk send_message`` (``queue_message``, ``list_messages``...),
  with ``error.type`` when it raised;
- one HTTP client span per attempt under it, named after the method, following the HTTP
  client semantic conventions: ``http.request.method``, ``server.address``,
  ``server.port``, ``url.full``, ``http.response.status_code``,
  ``http.request.resend_count`` (1, 2, ... on the attempts after the first) and
  ``error.type`` (the status code of a 4xx/5xx, else the error class); each attempt sends
  its own ``traceparent``;
- one span per outbox delivery, ``chatsdk deliver_message``, with the attempt spans under
  it and a link to the span that queued the entry (its trace context is stored with the
  entry, so the link survives a restart of the process).

Beside ``opentelemetry-instrumentation-requests`` (or ``-urllib3``): chatsdk marks its own
HTTP calls with OpenTelemetry's "suppress HTTP instrumentation" context key, as other
instrumented clients do, so those instrumentors skip them and each attempt is counted once,
by chatsdk's span (theirs would be one span for all the retries of an operation). All your
other ``requests`` traffic is traced by them as before.

Spans are not made while OpenTelemetry's ``suppress_instrumentation`` key is set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import Token
from typing import Any

import requests
from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from chatsdk import _instrument
from chatsdk._resilience.hosts import host_of
from chatsdk._version import __version__

try:  # the keys instrumentations share, in opentelemetry-api's context module
    from opentelemetry.context import (
        _SUPPRESS_HTTP_INSTRUMENTATION_KEY,
        _SUPPRESS_INSTRUMENTATION_KEY,
    )
except ImportError:  # pragma: no cover - an opentelemetry-api older than 1.21
    _SUPPRESS_HTTP_INSTRUMENTATION_KEY = context.create_key("suppress_http_instrumentation")
    _SUPPRESS_INSTRUMENTATION_KEY = context.create_key("suppress_instrumentation")

__all__ = ["instrument", "is_instrumented", "uninstrument"]

_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)


def instrument(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace chatsdk's operations, attempts and outbox deliveries in this process.

    Args:
        tracer_provider: where spans go (default: the global provider, looked up lazily,
            so a provider configured after this call is used).
    """
    tracer = trace.get_tracer("chatsdk", __version__, tracer_provider=tracer_provider)
    _instrument.set_tracer(_Tracer(tracer))


def uninstrument() -> None:
    """Stop tracing chatsdk (spans already started end normally)."""
    _instrument.set_tracer(None)


def is_instrumented() -> bool:
    """True after :func:`instrument` (and before :func:`uninstrument`)."""
    return isinstance(_instrument.tracer, _Tracer)


def _suppressed() -> bool:
    return bool(context.get_value(_SUPPRESS_INSTRUMENTATION_KEY))


class _Attempt:
    """The span of one attempt, current until :meth:`end`."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span, token: Token[Context]) -> None:
        self._span = span
        self._token = token

    def end(self, outcome: requests.Response | BaseException) -> None:
        span = self._span
        try:
            if span.is_recording():
                if isinstance(outcome, requests.Response):
                    status = outcome.status_code
                    span.set_attribute("http.response.status_code", status)
                    if status >= 400:
                        span.set_attribute("error.type", str(status))
                        span.set_status(Status(StatusCode.ERROR))
                else:
                    span.set_attribute("error.type", type(outcome).__name__)
                    span.record_exception(outcome)
                    span.set_status(Status(StatusCode.ERROR, type(outcome).__name__))
        finally:
            span.end()
            context.detach(self._token)


class _Idle:
    """An attempt while instrumentation is suppressed: no span."""

    __slots__ = ()

    def end(self, outcome: requests.Response | BaseException) -> None:
        pass


_IDLE = _Idle()


class _HTTPScope:
    """Marks chatsdk's own HTTP calls so other HTTP instrumentation skips them.

    A class rather than a generator: it runs around every request.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = context.attach(context.set_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY, True))

    def __exit__(self, *_exc: object) -> None:
        context.detach(self._token)


class _Tracer:
    """chatsdk's :class:`~chatsdk._instrument.Tracer` on an OpenTelemetry tracer."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextlib.contextmanager
    def operation(self, name: str) -> Iterator[object]:
        if _suppressed():
            yield None
            return
        with self._span(f"chatsdk {name}", {"chatsdk.operation": name}) as span:
            yield span

    @contextlib.contextmanager
    def _span(
        self, name: str, attributes: dict[str, Any], links: list[Link] | None = None
    ) -> Iterator[trace.Span]:
        with self._tracer.start_as_current_span(
            name,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                raise

    def http_scope(self) -> _HTTPScope:
        return _HTTPScope()

    def attempt(self, request: requests.PreparedRequest, attempt: int) -> _instrument.AttemptSpan:
        if _suppressed():
            return _IDLE
        method = (request.method or "GET").upper()
        span = self._tracer.start_span(method, kind=SpanKind.CLIENT)
        if span.is_recording():
            url = request.url or ""
            scheme_host_port = host_of(url)
            host, _, port = scheme_host_port.partition("://")[2].rpartition(":")
            span.set_attribute(
                "http.request.method", method if method in _KNOWN_METHODS else "_OTHER"
            )
            if method not in _KNOWN_METHODS:
                span.set_attribute("http.request.method_original", method)
            span.set_attribute("server.address", host.strip("[]"))
            span.set_attribute("server.port", int(port))
            span.set_attribute("url.full", url)
            if attempt > 1:
                span.set_attribute("http.request.resend_count", attempt - 1)
        if not span.get_span_context().is_valid:
            return _IDLE  # the API's no-op tracer: nothing to make current or to send
        token = context.attach(trace.set_span_in_context(span))
        propagate.inject(request.headers)  # this attempt's traceparent
        return _Attempt(span, token)

    def carrier(self) -> dict[str, str] | None:
        if not trace.get_current_span().get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    def delivery(
        self, entry_id: int, kind: str, carrier: Mapping[str, str] | None
    ) -> contextlib.AbstractContextManager[object]:
        if _suppressed():
            return contextlib.nullcontext()
        links: list[Link] = []
        if carrier:
            queued = trace.get_current_span(propagate.extract(carrier)).get_span_context()
            if queued.is_valid:
                links.append(Link(queued))
        attributes = {"chatsdk.operation": f"deliver_{kind}", "chatsdk.outbox.entry_id": entry_id}
        return self._span(f"chatsdk deliver_{kind}", attributes, links)
