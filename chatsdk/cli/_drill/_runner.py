"""Runs the drill: every arm at once, each against its own ReferenceServer.

Each arm gets a :class:`~chatsdk.testing.ReferenceServer` of its own with the same fault
plan and the same seed, so the server's counters (requests, creates) are that arm's alone
and every arm meets the same sequence of fault decisions; the arms run side by side, so the
whole drill takes as long as its slowest arm.

Workload: message ``i`` (0-based) goes to channel ``drill.<i % threads>`` with the text
``drill <run> #<i>``; worker thread ``t`` sends the messages of channel ``t`` in order. The
text is unique, so the server's store tells, per message, delivered once, twice or never.

Scenarios:

- ``send``: each message is sent once (one operation per message).
- ``multi-tap``: each message is submitted 2 or 3 times: a double tap (a second submission
  0.05-0.25 s after the first, while it may still be in flight), then, for half of the
  messages, an outer retry after both returned (a job framework running the same code
  again). chatsdk arms pass the same ``idempotency_key`` on every submission of a message;
  the naive arms send what they always send. Every submission is a caller operation.

With ``outage``, each arm's server refuses connections for that many seconds once it has
stored half of the arm's messages. With ``rate``, operation ``i`` of an arm starts no
earlier than ``i / rate`` seconds into its run: callers that keep their pace whether calls
succeed, fail slowly or fail fast (the command line uses 20 per second with ``--outage``,
so an arm that fails fast does not burn through the rest of the workload during the
outage).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import attrs

from chatsdk.cli._drill._arms import (
    Arm,
    ChatsdkArm,
    ChatsdkNoBreakerArm,
    DrainOutcome,
    OutboxArm,
    RequestsArm,
    Timeout,
    Urllib3Arm,
)
from chatsdk.cli._drill._grades import grade
from chatsdk.cli._drill._measure import ArmRecorder, OpRecord, mean, percentile
from chatsdk.cli._drill._progress import ProgressBar
from chatsdk.cli._drill._realtime_arm import RealtimeArm
from chatsdk.cli._drill._report import ArmResult, DrillReport, OutageFigures

if TYPE_CHECKING:
    from chatsdk.testing import FaultPlan, ReferenceServer

__all__ = ["API_KEY", "SCENARIOS", "ArmSpec", "DrillConfig", "arm_specs", "run_drill"]

log = logging.getLogger(__name__)

API_KEY = "drill-key"
SCENARIOS = ("send", "multi-tap")
#: ``(connect, read)`` seconds for every attempt of every arm. The ``stall`` fault holds a
#: request for 35 s, far beyond the read timeout; injected delays (<= 0.5 s) stay within it.
DEFAULT_TIMEOUT: Timeout = (1.0, 2.0)
_POLL = 0.01

ArmFactory = Callable[[str, str, Timeout, ArmRecorder], Arm]


def _positive_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class DrillConfig:
    """What to run.

    Attributes:
        messages: messages (intents) per arm.
        threads: worker threads per arm (and channels: one per thread).
        profile: the server's fault profile.
        outage: seconds of server outage in the middle of each arm's run, or None.
        seed: seed of the fault plans and the multi-tap workload (None: random, reported).
        scenario: ``send`` or ``multi-tap``.
        timeout: ``(connect, read)`` seconds per attempt, the same for every arm.
        rate: operations started per second per arm (an open-loop caller that does not
            speed up when calls fail fast), or None for as fast as the threads go.
        drain_timeout: how long the outbox arm's ``flush`` may take.
        realtime: add the realtime arm (see :mod:`chatsdk.cli._drill._realtime_arm`) to the
            ``send`` scenario when the SDK has ``ChatClient.realtime()``.
    """

    messages: int = attrs.field(default=1000, validator=_positive_int)
    threads: int = attrs.field(default=8, validator=_positive_int)
    profile: str = "terrible"
    outage: float | None = None
    seed: int | None = None
    scenario: str = attrs.field(default="send", validator=attrs.validators.in_(SCENARIOS))
    timeout: Timeout = DEFAULT_TIMEOUT
    rate: float | None = None
    drain_timeout: float = 300.0
    realtime: bool = True


@attrs.frozen
class ArmSpec:
    """An arm to run: its label in the progress bar and how to build it."""

    label: str
    factory: ArmFactory


def arm_specs(config: DrillConfig) -> list[ArmSpec]:
    """The REST arms the configuration runs, in table order."""
    specs = [
        ArmSpec("requests", RequestsArm),
        ArmSpec("urllib3", Urllib3Arm),
        ArmSpec("chatsdk", ChatsdkArm),
    ]
    if config.outage:
        specs.append(ArmSpec("no-breaker", ChatsdkNoBreakerArm))
    specs.append(ArmSpec("outbox", OutboxArm))
    return specs


def _text(run_id: str, index: int) -> str:
    return f"drill {run_id} #{index}"


def _channel(index: int, threads: int) -> str:
    return f"drill.{index % threads}"


@attrs.frozen
class _TapPlan:
    """The multi-tap plan of one message: the second tap's delay, and the outer retry."""

    gap: float
    outer_retry: bool


def _tap_plan(seed: int, messages: int) -> list[_TapPlan]:
    rng = random.Random(f"multi-tap-{seed}")
    return [_TapPlan(rng.uniform(0.05, 0.25), rng.random() < 0.5) for _ in range(messages)]


class _OutageWatch:
    """Starts the server's outage once half the messages are stored; times the recovery."""

    def __init__(self, server: ReferenceServer, seconds: float, trigger_at: int) -> None:
        self._server = server
        self._seconds = seconds
        self._trigger_at = trigger_at
        self.down_at: float | None = None
        self.back_at: float | None = None
        self.first_success_at: float | None = None
        self.stored_at_down = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatsdk-drill-outage", daemon=True)
        self._thread.start()

    def _creates(self) -> int:
        return self._server.counters()["creates"]

    def _run(self) -> None:
        while not self._stop.wait(_POLL):
            stored = self._creates()
            if stored >= self._trigger_at:
                break
        else:
            return
        self.stored_at_down = stored
        back = self._server.outage(self._seconds)
        self.down_at = time.monotonic()
        while not back.wait(_POLL):
            if self._stop.is_set():
                return
        self.back_at = time.monotonic()
        stored = self._creates()
        while not self._stop.wait(_POLL / 2):
            if self._creates() > stored:
                self.first_success_at = time.monotonic()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@attrs.frozen
class _Counted:
    exactly_once: int
    duplicates: int
    lost: int


def _count(stored: Sequence[dict[str, object]], texts: Sequence[str]) -> _Counted:
    counts = Counter(str(m.get("text")) for m in stored)
    copies = [counts.get(text, 0) for text in texts]
    return _Counted(
        exactly_once=sum(1 for c in copies if c == 1),
        duplicates=sum(c - 1 for c in copies if c > 1),
        lost=sum(1 for c in copies if c == 0),
    )


class _ArmRun:
    """One arm's run against its own server."""

    def __init__(
        self, spec: ArmSpec, config: DrillConfig, seed: int, run_id: str, plan: FaultPlan
    ) -> None:
        self.spec = spec
        self.config = config
        self.seed = seed
        self.run_id = run_id
        self.plan = plan
        self.recorder = ArmRecorder()
        self.taps = _tap_plan(seed, config.messages) if config.scenario == "multi-tap" else None
        self.total_ops = config.messages + (
            sum(2 if tap.outer_retry else 1 for tap in self.taps) if self.taps else 0
        )
        self.server: ReferenceServer | None = None
        self.result: ArmResult | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._next = 0
        self._started = time.monotonic()

    @property
    def label(self) -> str:
        """The arm's label in the progress bar."""
        return self.spec.label

    def fraction(self) -> float:
        """Progress in [0, 1] (the outbox counts enqueues and deliveries)."""
        if self.result is not None:
            return 1.0
        done = self.recorder.done
        if self.spec.label == "outbox":
            server = self.server
            delivered = server.counters()["creates"] if server is not None else 0
            return (done + delivered) / (self.total_ops + self.config.messages)
        return done / self.total_ops

    def run(self) -> None:
        try:
            self.result = self._run()
        except BaseException as exc:  # reported by the caller, with the arm's name
            log.exception("drill arm %s crashed", self.spec.label)
            self.error = exc

    def _run(self) -> ArmResult:
        from chatsdk.testing import ReferenceServer  # noqa: PLC0415 - needs the server extra

        config = self.config
        server = ReferenceServer(api_keys=(API_KEY,), faults=self.plan)
        server.start()
        self.server = server
        arm: Arm | None = None
        watch: _OutageWatch | None = None
        try:
            arm = self.spec.factory(server.url, API_KEY, config.timeout, self.recorder)
            if config.outage:
                watch = _OutageWatch(server, config.outage, max(1, config.messages // 2))
            started = self._started = time.monotonic()
            self._work(arm)
            drain = arm.drain(config.drain_timeout)
            seconds = time.monotonic() - started
            if watch is not None:
                watch.stop()
            stored = server.all_messages()
            counters = server.counters()
        finally:
            if watch is not None:
                watch.stop()
            if arm is not None:
                arm.close()
            server.stop()
        return self._result(arm, drain, stored, counters, seconds, watch)

    def _work(self, arm: Arm) -> None:
        config = self.config
        with ThreadPoolExecutor(config.threads, thread_name_prefix="chatsdk-drill") as pool:
            helpers = (
                ThreadPoolExecutor(config.threads, thread_name_prefix="chatsdk-drill-tap")
                if self.taps
                else None
            )
            try:
                futures = [pool.submit(self._worker, arm, helpers) for _ in range(config.threads)]
                for future in futures:
                    future.result()
            finally:
                if helpers is not None:
                    helpers.shutdown()

    def _pace(self, index: int) -> None:
        """With a rate, operation ``index`` starts no earlier than ``index / rate`` seconds in."""
        rate = self.config.rate
        if rate is None:
            return
        wait = self._started + index / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _next_index(self) -> int | None:
        with self._lock:
            index = self._next
            if index >= self.config.messages:
                return None
            self._next += 1
            return index

    def _worker(self, arm: Arm, helpers: ThreadPoolExecutor | None) -> None:
        config = self.config
        while (index := self._next_index()) is not None:
            self._pace(index)
            channel = _channel(index, config.threads)
            text = _text(self.run_id, index)
            if self.taps is None or helpers is None:
                self._op(arm, channel, text, None)
                continue
            tap = self.taps[index]
            key = f"drill-{self.run_id}-{index}" if arm.uses_key else None

            def second(
                gap: float = tap.gap,
                channel: str = channel,
                text: str = text,
                key: str | None = key,
            ) -> None:
                time.sleep(gap)
                self._op(arm, channel, text, key)

            pending = helpers.submit(second)
            self._op(arm, channel, text, key)
            pending.result()
            if tap.outer_retry:
                self._op(arm, channel, text, key)

    def _op(self, arm: Arm, channel: str, text: str, key: str | None) -> None:
        start = self.recorder.now()
        ok = arm.send(channel, text, key)
        self.recorder.op(start, ok)

    def _result(
        self,
        arm: Arm | None,
        drain: DrainOutcome,
        stored: Sequence[dict[str, object]],
        counters: dict[str, int],
        seconds: float,
        watch: _OutageWatch | None,
    ) -> ArmResult:
        config = self.config
        n = config.messages
        texts = [_text(self.run_id, i) for i in range(n)]
        counted = _count(stored, texts)
        ops, waits, attempts = self.recorder.snapshot()
        failed_ops = sum(1 for op in ops if not op.ok)
        if isinstance(arm, OutboxArm):
            # queue_message failures, dead letters, and what flush() could not deliver in time
            errors = failed_ops + drain.failed + drain.pending
            errors_pct = 100.0 * errors / n
        else:
            errors_pct = 100.0 * failed_ops / max(len(ops), 1)
        exactly_once_pct = 100.0 * counted.exactly_once / n
        latencies = [op.latency * 1000.0 for op in ops]
        extra: dict[str, object] = {}
        if drain.pending:
            extra["pending_after_flush"] = drain.pending
        return ArmResult(
            name=arm.name if arm is not None else self.spec.label,
            delivered_exactly_once_pct=exactly_once_pct,
            duplicates=counted.duplicates,
            lost=counted.lost,
            caller_errors_pct=errors_pct,
            requests_per_message=counters.get("requests", 0) / n,
            latency_mean_ms=mean(latencies),
            latency_p99_ms=percentile(latencies, 99),
            mean_retry_delay_ms=mean(waits) * 1000.0,
            grade=grade(
                delivered_exactly_once_pct=exactly_once_pct,
                duplicates=counted.duplicates,
                messages=n,
                caller_errors_pct=errors_pct,
            ),
            operations=len(ops),
            attempts_per_message=len(attempts) / n,
            retries=len(waits),
            seconds=seconds,
            extra=extra,
            outage=_outage_figures(watch, ops, attempts, n, isinstance(arm, OutboxArm)),
        )


def _outage_figures(
    watch: _OutageWatch | None,
    ops: Sequence[OpRecord],
    attempts: Sequence[float],
    messages: int,
    asynchronous: bool,
) -> OutageFigures | None:
    if watch is None or watch.down_at is None:
        return None
    down = watch.down_at
    back = watch.back_at if watch.back_at is not None else float("inf")
    sent = sum(1 for t in attempts if down <= t < back)
    if asynchronous:
        operations = messages - watch.stored_at_down
    else:
        operations = sum(1 for op in ops if op.start < back and op.end > down)
    failures = [op.latency * 1000.0 for op in ops if not op.ok and down <= op.start < back]
    first = (
        None
        if watch.first_success_at is None or watch.back_at is None
        else watch.first_success_at - watch.back_at
    )
    return OutageFigures(
        requests_while_down=sent,
        requests_per_op=sent / max(operations, 1),
        fail_ms_mean=mean(failures) if failures else None,
        first_success_after_s=first,
    )


class _Task(Protocol):
    """An arm the runner can run in a thread: REST arms and the realtime arm."""

    result: ArmResult | None
    error: BaseException | None

    @property
    def label(self) -> str: ...

    def fraction(self) -> float: ...

    def run(self) -> None: ...


def _tasks(config: DrillConfig, seed: int, run_id: str, plan: FaultPlan) -> list[_Task]:
    tasks: list[_Task] = [_ArmRun(spec, config, seed, run_id, plan) for spec in arm_specs(config)]
    if config.realtime and config.scenario == "send":
        tasks.append(
            RealtimeArm(
                messages=config.messages,
                profile=config.profile,
                plan=plan,
                seed=seed,
                api_key=API_KEY,
                timeout=config.timeout,
            )
        )
    return tasks


def run_drill(config: DrillConfig, *, progress: ProgressBar | None = None) -> DrillReport:
    """Run every arm of ``config`` side by side and return the report.

    An arm that crashes (a bug, not a failed send) is logged with its traceback and listed
    in the report's ``crashed``; the other arms' results stand.

    Raises:
        ValueError: the profile is unknown.
    """
    from chatsdk.testing import FaultPlan  # noqa: PLC0415 - needs the server extra

    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    plan = attrs.evolve(FaultPlan.profile(config.profile), seed=seed)
    tasks = _tasks(config, seed, f"{seed:x}", plan)
    if progress is not None:
        for task in tasks:
            progress.add(task.label, task.fraction)
        progress.start()
    started = time.monotonic()
    threads = [
        threading.Thread(target=task.run, name=f"chatsdk-drill-{task.label}", daemon=True)
        for task in tasks
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        if progress is not None:
            progress.stop()
    crashed = {task.label: repr(task.error) for task in tasks if task.error is not None}
    return DrillReport(
        profile=config.profile,
        messages=config.messages,
        scenario=config.scenario,
        threads=config.threads,
        seed=seed,
        timeout=config.timeout,
        outage=config.outage,
        rate=config.rate,
        arms=[task.result for task in tasks if task.result is not None],
        seconds=time.monotonic() - started,
        crashed=crashed,
    )
