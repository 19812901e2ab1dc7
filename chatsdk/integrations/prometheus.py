"""Prometheus metrics for chatsdk (extra ``chatsdk[prometheus]``).

::

    import chatsdk.integrations.prometheus
    chatsdk.integrations.prometheus.register()          # prometheus_client's REGISTRY

Exported (built on chatsdk's events; see :mod:`chatsdk._instrument`):

- ``chatsdk_requests_total{host,method,outcome}``: HTTP attempts sent; ``outcome`` is the
  status code (``"201"``) or the error class (``"ConnectError"``);
- ``chatsdk_retries_total{host,reason}``: retries scheduled, ``reason`` as ``outcome``;
- ``chatsdk_breaker_state{name}``: 0 closed, 1 half-open, 2 open (a breaker appears once it
  has changed state);
- ``chatsdk_outbox_entries{status}``: entries per status, read on scrape from the outboxes
  of this process's clients (summed over their files), and
  ``chatsdk_outbox_oldest_pending_age_seconds`` beside it;
- ``chatsdk_outbox_delivery_seconds``: histogram, enqueue to delivered;
- ``chatsdk_realtime_reconnects_total``: realtime reconnects scheduled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chatsdk._errors import ChatSDKError
from chatsdk._instrument import (
    AttemptFinished,
    BreakerStateChanged,
    OutboxDelivered,
    RealtimeReconnecting,
    RetryScheduled,
    SDKEvent,
    add_event_hook,
    live_outboxes,
    remove_event_hook,
)
from chatsdk._outbox.outbox import STATUSES
from chatsdk._resilience.breaker import CircuitState

__all__ = ["ChatSDKMetrics", "register", "unregister"]

log = logging.getLogger(__name__)

#: ``chatsdk_breaker_state`` values.
BREAKER_STATE_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
#: Delivery times span milliseconds (online) to hours (offline for a while).
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)

_REGISTERED: dict[int, ChatSDKMetrics] = {}
_LOCK = threading.Lock()


class _OutboxCollector(Collector):
    """Reads the outboxes' statistics at scrape time (one query per outbox file)."""

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(STATUSES, 0)
        oldest: float | None = None
        for outbox in live_outboxes():
            try:
                stats = outbox.stats()
            except ChatSDKError as exc:  # closed meanwhile, or the file is unreadable
                log.warning("outbox %s: no statistics for the scrape: %s", outbox.path, exc)
                continue
            for status in STATUSES:
                counts[status] += getattr(stats, status)
            age = stats.oldest_pending_age
            if age is not None and (oldest is None or age > oldest):
                oldest = age
        entries = GaugeMetricFamily(
            "chatsdk_outbox_entries", "Outbox entries per status.", labels=["status"]
        )
        for status, count in counts.items():
            entries.add_metric([status], count)
        yield entries
        yield GaugeMetricFamily(
            "chatsdk_outbox_oldest_pending_age_seconds",
            "Age of the oldest queued or sending outbox entry (0 when none).",
            value=oldest or 0.0,
        )


class ChatSDKMetrics:
    """chatsdk's metrics on one registry; an event hook (call it with an event).

    Build it with :func:`register`, which also hooks it to every client of the process.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        done: list[Collector] = []
        try:
            self._build(registry, done)
        except ValueError:  # a name is taken: leave the registry as it was
            for collector in done:
                registry.unregister(collector)
            raise

    def _build(self, registry: CollectorRegistry, done: list[Collector]) -> None:
        self.requests = Counter(
            "chatsdk_requests",
            "HTTP attempts sent, by host, method and outcome (status code or error class).",
            ["host", "method", "outcome"],
            registry=registry,
        )
        done.append(self.requests)
        self.retries = Counter(
            "chatsdk_retries",
            "Retries scheduled, by host and reason (status code or error class).",
            ["host", "reason"],
            registry=registry,
        )
        done.append(self.retries)
        self.breaker_state = Gauge(
            "chatsdk_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["name"],
            registry=registry,
        )
        done.append(self.breaker_state)
        self.delivery_seconds = Histogram(
            "chatsdk_outbox_delivery_seconds",
            "Seconds from enqueue to delivery of outbox entries.",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        done.append(self.delivery_seconds)
        self.reconnects = Counter(
            "chatsdk_realtime_reconnects",
            "Realtime reconnects scheduled.",
            registry=registry,
        )
        done.append(self.reconnects)
        self._outboxes = _OutboxCollector()
        registry.register(self._outboxes)

    def __call__(self, event: SDKEvent) -> None:
        """Update the metrics from one event."""
        if isinstance(event, AttemptFinished):
            self.requests.labels(event.host, event.method, event.outcome).inc()
        elif isinstance(event, RetryScheduled):
            self.retries.labels(event.host, event.reason).inc()
        elif isinstance(event, BreakerStateChanged):
            self.breaker_state.labels(event.breaker).set(BREAKER_STATE_VALUES[event.new])
        elif isinstance(event, OutboxDelivered):
            self.delivery_seconds.observe(event.age)
        elif isinstance(event, RealtimeReconnecting):
            self.reconnects.inc()

    def _unregister(self) -> None:
        for collector in (
            self.requests,
            self.retries,
            self.breaker_state,
            self.delivery_seconds,
            self.reconnects,
            self._outboxes,
        ):
            self.registry.unregister(collector)


def register(registry: CollectorRegistry | None = None) -> ChatSDKMetrics:
    """Export chatsdk's metrics on ``registry`` (default: prometheus_client's ``REGISTRY``).

    Idempotent per registry: a second call returns the same :class:`ChatSDKMetrics`.

    Raises:
        ValueError: the registry already has metrics of these names (not from chatsdk).
    """
    target = REGISTRY if registry is None else registry
    with _LOCK:
        metrics = _REGISTERED.get(id(target))
        if metrics is None:
            metrics = ChatSDKMetrics(target)
            _REGISTERED[id(target)] = metrics
            add_event_hook(metrics)
    return metrics


def unregister(registry: CollectorRegistry | None = None) -> None:
    """Stop exporting on ``registry`` and remove the metrics from it (no-op if absent)."""
    target = REGISTRY if registry is None else registry
    with _LOCK:
        metrics = _REGISTERED.pop(id(target), None)
    if metrics is not None:
        remove_event_hook(metrics)
        metrics._unregister()
