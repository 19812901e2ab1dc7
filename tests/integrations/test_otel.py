"""chatsdk.integrations.otel with OpenTelemetry's SDK and its in-memory span exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses
from opentelemetry import context, trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import chatsdk.integrations.otel as otel
from chatsdk import ChatClient, ChatSession, NotFoundError, Outbox, RetryPolicy, _instrument
from chatsdk._outbox.drainer import Drainer
from tests.unit.test_transport import BASE, KEY, MESSAGES, message_json

NO_JITTER = RetryPolicy(base_delay=0.5, max_delay=8.0, jitter="none")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(tracer_provider=provider)
    yield exporter
    otel.uninstrument()
    provider.shutdown()


@pytest.fixture
def provider_tracer(exporter: InMemorySpanExporter) -> trace.Tracer:
    """A tracer of the same provider, for the application's own spans."""
    tracer = _instrument.tracer
    assert isinstance(tracer, otel._Tracer)
    return tracer._tracer


@pytest.fixture
def chat(sleep, clock) -> Iterator[ChatClient]:
    session = ChatSession(BASE, KEY, retry=NO_JITTER, sleep=sleep, clock=clock)
    with ChatClient(session=session) as client:
        yield client


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def script_503_503_201() -> None:
    for status in (503, 503):
        responses.post(MESSAGES, status=status, json={"error": {"code": "unavailable"}})
    responses.post(MESSAGES, status=201, json=message_json())


@responses.activate
def test_503_503_201_gives_one_operation_span_and_three_attempt_spans(
    exporter: InMemorySpanExporter, chat: ChatClient
) -> None:
    script_503_503_201()
    chat.send_message("general", "hi")
    spans = exporter.get_finished_spans()
    (operation,) = by_name(spans, "chatsdk send_message")
    attempts = by_name(spans, "POST")
    assert len(spans) == 4 and len(attempts) == 3
    assert operation.kind is SpanKind.INTERNAL and operation.status.status_code is StatusCode.UNSET
    for span in attempts:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == operation.context.span_id
        assert span.attributes["http.request.method"] == "POST"
        assert span.attributes["server.address"] == "chat.test"
        assert span.attributes["server.port"] == 80
        assert span.attributes["url.full"] == MESSAGES
    resend = [s.attributes.get("http.request.resend_count") for s in attempts]
    assert resend == [None, 1, 2]
    assert [s.attributes["http.response.status_code"] for s in attempts] == [503, 503, 201]
    assert [s.attributes.get("error.type") for s in attempts] == ["503", "503", None]
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR] * 2 + [StatusCode.UNSET]


def test_each_attempt_sends_its_own_traceparent(
    exporter: InMemorySpanExporter, sleep, clock
) -> None:
    sent: list[str] = []
    answers = [503, 503, 201]

    class Recording:
        def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
            sent.append(request.headers["traceparent"])
            response = requests.Response()
            response.status_code = answers.pop(0)
            response._content = b'{"error": {}}' if response.status_code == 503 else b"{}"
            response.request = request
            return response

    session = ChatSession(
        BASE, KEY, retry=NO_JITTER, sleep=sleep, clock=clock, transport=Recording()
    )
    session.post("api/health")
    attempts = by_name(exporter.get_finished_spans(), "POST")
    assert [p.split("-")[2] for p in sent] == [f"{s.context.span_id:016x}" for s in attempts]
    assert len(set(sent)) == 3


@responses.activate
def test_a_transport_error_and_a_failed_operation_carry_error_type(
    exporter: InMemorySpanExporter, chat: ChatClient
) -> None:
    responses.delete(f"{BASE}/api/messages/m1", body=requests.ConnectionError("refused"))
    responses.delete(f"{BASE}/api/messages/m1", status=404, json={"error": {"code": "not_found"}})
    with pytest.raises(NotFoundError):
        chat.delete_message("m1")
    spans = exporter.get_finished_spans()
    (operation,) = by_name(spans, "chatsdk delete_message")
    assert operation.attributes["error.type"] == "NotFoundError"
    assert operation.status.status_code is StatusCode.ERROR
    first, second = by_name(spans, "DELETE")
    assert first.attributes["error.type"] == "ConnectError"
    assert "http.response.status_code" not in first.attributes
    assert [e.name for e in first.events] == ["exception"]
    assert second.attributes["error.type"] == "404"


@responses.activate
def test_beside_opentelemetry_instrumentation_requests_nothing_is_counted_twice(
    exporter: InMemorySpanExporter, chat: ChatClient
) -> None:
    instrumentor = RequestsInstrumentor()
    instrumentor.instrument(tracer_provider=exporter_provider(exporter))  # same exporter
    try:
        script_503_503_201()
        chat.send_message("general", "hi")
        spans = exporter.get_finished_spans()
        assert sorted(s.name for s in spans) == ["POST", "POST", "POST", "chatsdk send_message"]
        # The same instrumentor does trace other requests traffic (it is really active).
        exporter.clear()
        responses.get("http://elsewhere.test/", body="ok")
        requests.get("http://elsewhere.test/", timeout=1)
        assert [s.name for s in exporter.get_finished_spans()] == ["GET"]
    finally:
        instrumentor.uninstrument()


def exporter_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@responses.activate
def test_without_chatsdk_instrumentation_the_requests_instrumentor_sees_one_span(
    chat: ChatClient,
) -> None:
    """The control: the test above can fail (the instrumentor spans one send per operation)."""
    exporter = InMemorySpanExporter()
    instrumentor = RequestsInstrumentor()
    instrumentor.instrument(tracer_provider=exporter_provider(exporter))
    try:
        script_503_503_201()
        chat.send_message("general", "hi")
    finally:
        instrumentor.uninstrument()
    assert [s.name for s in exporter.get_finished_spans()] == ["POST"]


@responses.activate
def test_queued_entries_carry_the_trace_context_and_deliveries_link_to_it(
    exporter: InMemorySpanExporter, provider_tracer: trace.Tracer, tmp_path: Path, sleep, clock
) -> None:
    responses.post(MESSAGES, status=503, json={})
    responses.post(MESSAGES, status=201, json=message_json())
    session = ChatSession(BASE, KEY, retry=NO_JITTER, sleep=sleep, clock=clock)
    outbox = Outbox(tmp_path / "o.db")
    with ChatClient(session=session, outbox=outbox, close_timeout=0) as chat:
        chat._drainer.stop()  # type: ignore[union-attr]  # this test delivers by hand
        with provider_tracer.start_as_current_span("checkout"):
            entry = chat.queue_message("general", "hi")
        (queued,) = by_name(exporter.get_finished_spans(), "chatsdk queue_message")
        assert entry.trace_context is not None and "traceparent" in entry.trace_context
        stored = outbox.get(entry.id)
        assert stored is not None and stored.trace_context == entry.trace_context
        drainer = Drainer(outbox, chat._deliver)
        (claimed,), _ = outbox.claim(1)
        drainer.process(claimed)
    spans = exporter.get_finished_spans()
    (delivery,) = by_name(spans, "chatsdk deliver_message")
    assert delivery.parent is None  # its own trace, linked to the one that queued it
    assert [link.context.span_id for link in delivery.links] == [queued.context.span_id]
    assert delivery.links[0].context.trace_id == queued.context.trace_id
    assert delivery.attributes["chatsdk.outbox.entry_id"] == entry.id
    attempts = by_name(spans, "POST")
    assert len(attempts) == 2
    assert {s.parent.span_id for s in attempts if s.parent} == {delivery.context.span_id}
    outbox.close()


def test_a_delivery_without_a_stored_context_has_no_link(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    entry = outbox.enqueue("message", "c1", {"channelId": "c1", "text": "hi"})
    assert entry.trace_context is None  # no span was current
    (claimed,), _ = outbox.claim(1)
    drainer = Drainer(outbox, lambda op: message_json())
    drainer.process(claimed)
    (delivery,) = by_name(exporter.get_finished_spans(), "chatsdk deliver_message")
    assert list(delivery.links) == []
    outbox.close()


@responses.activate
def test_suppress_instrumentation_makes_no_spans(
    exporter: InMemorySpanExporter, chat: ChatClient, tmp_path: Path
) -> None:
    script_503_503_201()
    token = context.attach(context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        chat.send_message("general", "hi")
        outbox = Outbox(tmp_path / "o.db")
        outbox.enqueue("message", "c1", {"channelId": "c1", "text": "hi"})
        (claimed,), _ = outbox.claim(1)
        Drainer(outbox, lambda op: message_json()).process(claimed)
        outbox.close()
    finally:
        context.detach(token)
    assert exporter.get_finished_spans() == ()


def test_a_keyboard_interrupt_mid_attempt_ends_the_span(exporter: InMemorySpanExporter) -> None:
    class Interrupted:
        def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
            raise KeyboardInterrupt

    with ChatClient(BASE, KEY, transport=Interrupted()) as chat, pytest.raises(KeyboardInterrupt):
        chat.send_message("general", "hi")
    (attempt,) = by_name(exporter.get_finished_spans(), "POST")
    assert attempt.attributes["error.type"] == "KeyboardInterrupt"
    assert trace.get_current_span() is trace.INVALID_SPAN  # the attempt's context is gone


def test_unknown_methods_are_other_and_nonrecording_spans_are_skipped() -> None:
    exporter = InMemorySpanExporter()
    tracer = otel._Tracer(exporter_provider(exporter).get_tracer("t"))
    request = requests.Request("PURGE", "https://[::1]:8443/x").prepare()
    response = requests.Response()
    response.status_code = 204
    tracer.attempt(request, 1).end(response)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("::1", 8443)
    # The API's default (no SDK provider): nothing recorded, no traceparent, nothing to keep.
    idle = otel._Tracer(trace.NoOpTracerProvider().get_tracer("t"))
    request = requests.Request("GET", "http://h/").prepare()
    idle.attempt(request, 2).end(response)
    assert "traceparent" not in request.headers
    assert idle.carrier() is None


def test_instrument_and_uninstrument() -> None:
    assert not otel.is_instrumented()
    otel.instrument()
    try:
        assert otel.is_instrumented()
    finally:
        otel.uninstrument()
    assert _instrument.tracer is None
