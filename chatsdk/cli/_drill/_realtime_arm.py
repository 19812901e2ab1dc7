"""The drill's realtime arm: a subscriber that must see every publication exactly once.

Runs against its own :class:`~chatsdk.testing.ReferenceServer` (REST faults of the
profile, so the token fetch goes through them too). A :meth:`chatsdk.ChatClient.realtime`
client subscribes to ``chat:drill.rt``; the server publishes the workload's messages
(``{"drill": i}``) at :data:`PUBLISH_RATE` per second (for 2 to 25 s), while the
profile's realtime faults play:

- ``terrible``: 5 % of pushes sent twice, 5 % not sent (a gap the client must recover from
  history), the connections closed 3 times with reconnect codes, and one server restart
  that keeps the streams (``keep_state=True``);
- ``flaky``: 1 % duplicated, 1 % skipped, 2 closes;
- ``none``: nothing.

Closes and restarts come :data:`EVENT_SPACING` (6 s) apart, as many as fit in the run (none
in a run shorter than 6 s): closer together, every connection would die within the 5 s
that the SDK's ``ws:`` circuit breaker counts as a failed connection, the breaker would
open, and the client would wait out its 60 s ``recovery_timeout``, which is the breaker
doing its job on a flapping server, not the recovery this arm measures.

After the workload, the server keeps publishing uncounted ``{"tail": k}`` every 0.25 s
until the subscriber has every message (at most 20 s): a skipped push is only noticed as
a gap when a later publication arrives, as on any live channel.

Figures: delivered exactly once / duplicates / lost are counted at the subscriber's
callback; latency is publish-to-callback; the retry delay is the mean reconnect delay;
requests per message are the REST token requests; caller-visible errors are the failed
``realtime()`` calls (the token endpoint answered an error; the arm calls it again, as an
application would) plus recovery failures (``on_recovery_failed``: the application would
have to reload from REST), per message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import attrs

from chatsdk._client import ChatClient
from chatsdk._errors import ChatSDKError
from chatsdk._http.session import ChatSession
from chatsdk._realtime.client import RealtimeClient
from chatsdk.cli._drill._grades import grade
from chatsdk.cli._drill._measure import mean, percentile
from chatsdk.cli._drill._report import ArmResult

if TYPE_CHECKING:
    from chatsdk._realtime.subscription import Publication
    from chatsdk.testing import FaultPlan, ReferenceServer

__all__ = ["REALTIME_FAULTS", "RealtimeArm"]

log = logging.getLogger(__name__)

NAME = "chatsdk realtime (subscribe)"
CHANNEL = "drill.rt"
PUBLISH_RATE = 40.0  # publications per second
MIN_PUBLISH_SECONDS = 2.0
MAX_PUBLISH_SECONDS = 25.0
EVENT_SPACING = 6.0  # seconds between forced closes / restarts
CATCH_UP_SECONDS = 20.0
SETUP_ATTEMPTS = 10
TAIL_INTERVAL = 0.25
_CLOSE_CODES = (3001, 1001, 1012, 3005, 3012)


@attrs.frozen
class RealtimeFaults:
    """The realtime side of a drill profile."""

    duplicate_rate: float = 0.0
    skip_rate: float = 0.0
    disconnects: int = 0
    restarts: int = 0


REALTIME_FAULTS = {
    "none": RealtimeFaults(),
    "flaky": RealtimeFaults(duplicate_rate=0.01, skip_rate=0.01, disconnects=2),
    "terrible": RealtimeFaults(duplicate_rate=0.05, skip_rate=0.05, disconnects=3, restarts=1),
}


class RealtimeArm:
    """One realtime run; :meth:`run` fills :attr:`result` (or :attr:`error`)."""

    label = "realtime"

    def __init__(
        self,
        *,
        messages: int,
        profile: str,
        plan: FaultPlan,
        seed: int,
        api_key: str,
        timeout: tuple[float, float],
    ) -> None:
        self.messages = messages
        self.faults = REALTIME_FAULTS.get(profile, RealtimeFaults())
        self.plan = plan
        self.seed = seed
        self.api_key = api_key
        self.timeout = timeout
        self.result: ArmResult | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._published: dict[int, float] = {}
        self._received: list[tuple[int, float]] = []
        self._all_seen = threading.Event()
        self._recovery_failures = 0
        self._setup_errors = 0
        self._done = False

    def fraction(self) -> float:
        """Progress in [0, 1]: publications published and received."""
        if self._done:
            return 1.0
        with self._lock:
            return (len(self._published) + len(self._received)) / (2 * self.messages)

    def run(self) -> None:
        """Run the arm (in its own thread)."""
        try:
            self.result = self._run()
        except BaseException as exc:  # reported by the runner
            log.exception("drill arm realtime crashed")
            self.error = exc
        finally:
            self._done = True

    def _on_publication(self, pub: Publication) -> None:
        data: Any = pub.data
        if not isinstance(data, dict) or "drill" not in data:
            return
        now = time.monotonic()
        with self._lock:
            self._received.append((int(data["drill"]), now))
            seen = len({i for i, _ in self._received})
        if seen >= self.messages:
            self._all_seen.set()

    def _on_recovery_failed(self, _channel: str) -> None:
        with self._lock:
            self._recovery_failures += 1

    def _run(self) -> ArmResult:
        from chatsdk.testing import ReferenceServer  # noqa: PLC0415 - needs the server extra

        faults = self.faults
        server = ReferenceServer(api_keys=(self.api_key,), faults=self.plan)
        server.start()
        server.set_realtime_faults(
            duplicate_rate=faults.duplicate_rate, skip_rate=faults.skip_rate, seed=self.seed
        )
        session = ChatSession(server.url, self.api_key, timeout=self.timeout)
        session.trust_env = False
        client = ChatClient(session=session)
        realtime = None
        started = time.monotonic()
        try:
            realtime = self._realtime(client)
            realtime.connect()
            sub = realtime.subscribe(
                f"chat:{CHANNEL}",
                self._on_publication,
                on_recovery_failed=self._on_recovery_failed,
            )
            if not sub.wait_subscribed(30.0):
                raise RuntimeError("the realtime client did not subscribe within 30 s")
            self._publish(server)
            self._catch_up(server)
            seconds = time.monotonic() - started
            stats = realtime.stats()
            requests = server.counters()["requests"]
        finally:
            if realtime is not None:
                realtime.close()
            client.close()
            server.stop()
        return self._result(stats, requests, seconds)

    def _realtime(self, client: ChatClient) -> RealtimeClient:
        """``client.realtime()``, called again after an error as an application would.

        Each failed call is a caller-visible error (the token endpoint answered an error).
        """
        for _ in range(SETUP_ATTEMPTS - 1):
            try:
                return client.realtime()
            except ChatSDKError as exc:
                log.info("realtime(): %s; calling it again", exc)
                with self._lock:
                    self._setup_errors += 1
        return client.realtime()

    def _publish(self, server: ReferenceServer) -> None:
        faults = self.faults
        n = self.messages
        duration = min(MAX_PUBLISH_SECONDS, max(MIN_PUBLISH_SECONDS, n / PUBLISH_RATE))
        interval = duration / n
        # Forced closes and restarts, EVENT_SPACING apart: each connection outlives the
        # client's stable_after and the ws breaker's "dropped within 5 s" rule.
        planned = ["restart"] * faults.restarts + ["close"] * faults.disconnects
        fits = int(duration // EVENT_SPACING)
        events = sorted(planned[:fits], key=lambda kind: kind == "restart")  # restart midway
        if len(events) > 1 and events[-1] == "restart":
            events.insert(len(events) // 2, events.pop())
        closes = 0
        start = time.monotonic()
        next_event = start + EVENT_SPACING
        for i in range(n):
            wait = start + i * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if events and time.monotonic() >= next_event:
                next_event += EVENT_SPACING
                if events.pop(0) == "restart":
                    server.stop()
                    server.start(keep_state=True)
                else:
                    server.disconnect_websockets(_CLOSE_CODES[closes % len(_CLOSE_CODES)])
                    closes += 1
            with self._lock:
                self._published[i] = time.monotonic()
            server.publish(f"chat:{CHANNEL}", {"drill": i})

    def _catch_up(self, server: ReferenceServer) -> None:
        """Keep the channel alive until the subscriber has everything (or time is up).

        A push the server skipped is noticed as a gap when the next publication arrives;
        after the workload's last one, these uncounted ``{"tail": k}`` publications play
        the part of the channel's later traffic.
        """
        deadline = time.monotonic() + CATCH_UP_SECONDS
        tail = 0
        while not self._all_seen.wait(TAIL_INTERVAL) and time.monotonic() < deadline:
            server.publish(f"chat:{CHANNEL}", {"tail": tail})
            tail += 1

    def _result(self, stats: Any, requests: int, seconds: float) -> ArmResult:
        n = self.messages
        with self._lock:
            received = list(self._received)
            published = dict(self._published)
            recovery_failures = self._recovery_failures
            setup_errors = self._setup_errors
        counts = Counter(i for i, _ in received)
        first: dict[int, float] = {}
        for i, when in received:
            first.setdefault(i, when)
        latencies = [(first[i] - published[i]) * 1000.0 for i in first if i in published]
        exactly_once = sum(1 for i in range(n) if counts.get(i, 0) == 1)
        duplicates = sum(c - 1 for c in counts.values() if c > 1)
        lost = sum(1 for i in range(n) if i not in counts)
        exactly_once_pct = 100.0 * exactly_once / n
        errors_pct = 100.0 * (recovery_failures + setup_errors) / n
        delays: tuple[float, ...] = tuple(stats.reconnect_delays)
        return ArmResult(
            name=NAME,
            delivered_exactly_once_pct=exactly_once_pct,
            duplicates=duplicates,
            lost=lost,
            caller_errors_pct=errors_pct,
            requests_per_message=requests / n,
            latency_mean_ms=mean(latencies),
            latency_p99_ms=percentile(latencies, 99),
            mean_retry_delay_ms=mean(delays) * 1000.0,
            grade=grade(
                delivered_exactly_once_pct=exactly_once_pct,
                duplicates=duplicates,
                messages=n,
                caller_errors_pct=errors_pct,
            ),
            operations=len(received),
            attempts_per_message=0.0,
            retries=len(delays),
            seconds=seconds,
            extra={
                "reconnects": max(0, stats.connects - 1),
                "recoveries": stats.recoveries,
                "recovery_failures": recovery_failures,
                "realtime_call_errors": setup_errors,
                "gaps": stats.gaps,
                "duplicates_dropped": stats.duplicates_dropped,
            },
        )
