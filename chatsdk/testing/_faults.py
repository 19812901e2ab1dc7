"""Fault plans for the reference server: what goes wrong, how often, decided per request.

A :class:`FaultPlan` is a frozen value (probabilities, latencies, a seed). The server keeps
one :class:`FaultInjector` per plan, which draws one :class:`FaultDecision` per ``/api/*``
request (health excluded) from a seeded RNG under a lock, so a seeded plan gives the same
sequence of decisions for the same sequence of requests.

At most one *failing* fault applies to a request (``drop_before``, ``stall``,
``server_error``, ``rate_limit``, ``drop_after``, drawn from one number against their
cumulative probabilities); ``delay`` is drawn independently and may come on top of any of
them (it applies when the request is processed).

:class:`RealtimeFaults` holds the realtime knobs (duplicated, skipped pushes; a silent
server), decided per publication push per client.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

import attrs

__all__ = [
    "FAULT_KINDS",
    "PROFILES",
    "FaultDecision",
    "FaultInjector",
    "FaultPlan",
    "RealtimeFaults",
    "RetryAfterForm",
    "resolve_plan",
]

RetryAfterForm = Literal["seconds", "http-date", "mixed"]

#: Every fault kind, as counted by the server (``"fault." + kind``).
FAULT_KINDS = (
    "server_error",
    "rate_limit",
    "drop_before",
    "drop_after",
    "delay",
    "stall",
    "outage",
)

_SERVER_ERROR_STATUSES = (500, 502, 503, 504)


def _probability(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be a number > 0, got {value!r}")


def _delay_range(
    _inst: object, attribute: attrs.Attribute[tuple[float, float]], value: object
) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] <= value[1]
    ):
        raise ValueError(f"{attribute.name} must be a (low, high) tuple with 0 <= low <= high")


def _retry_after_form(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("seconds", "http-date", "mixed"):
        raise ValueError(f"{attribute.name} must be 'seconds', 'http-date' or 'mixed'")


def _seed(_inst: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{attribute.name} must be an int or None, got {value!r}")


@attrs.frozen(kw_only=True)
class FaultPlan:
    """What the reference server does wrong, per ``/api/*`` request (health excluded).

    Attributes:
        server_error: probability of a 500/502/503/504 (chosen uniformly) instead of an answer.
        server_error_retry_after: share of those 503s that carry ``Retry-After``.
        html_error_rate: share of 502/504 answers whose body is an HTML page, as a proxy or
            load balancer would send, instead of the JSON error body.
        rate_limit: probability of ``429 rate_limited`` with ``Retry-After``.
        drop_before: probability that the connection is closed before the request is
            processed (nothing is committed; the client sees a disconnect or reset).
        drop_after: probability that the request is processed and committed, then the
            connection is reset (``SO_LINGER`` 0) instead of answered: the lost-response case
            that makes duplicates in clients that retry without an idempotency key.
        stall: probability that the request gets no answer for ``stall_seconds`` (it is not
            processed), after which the connection is reset.
        stall_seconds: how long a stall lasts; longer than the client's read timeout.
        delay: probability of extra processing latency (independent of the faults above).
        delay_range: ``(low, high)`` seconds, the latency drawn uniformly.
        retry_after: the ``Retry-After`` delay in whole seconds.
        retry_after_form: ``"seconds"`` (``Retry-After: 1``), ``"http-date"`` (an IMF-fixdate
            at least ``retry_after`` seconds ahead), or ``"mixed"`` (each form half the time).
        seed: seed of the decision RNG; ``None`` for a random one.
    """

    server_error: float = attrs.field(default=0.0, validator=_probability)
    server_error_retry_after: float = attrs.field(default=0.5, validator=_probability)
    html_error_rate: float = attrs.field(default=0.0, validator=_probability)
    rate_limit: float = attrs.field(default=0.0, validator=_probability)
    drop_before: float = attrs.field(default=0.0, validator=_probability)
    drop_after: float = attrs.field(default=0.0, validator=_probability)
    stall: float = attrs.field(default=0.0, validator=_probability)
    stall_seconds: float = attrs.field(default=35.0, validator=_positive)
    delay: float = attrs.field(default=0.0, validator=_probability)
    delay_range: tuple[float, float] = attrs.field(default=(0.05, 0.25), validator=_delay_range)
    retry_after: int = attrs.field(default=1)
    retry_after_form: RetryAfterForm = attrs.field(default="seconds", validator=_retry_after_form)
    seed: int | None = attrs.field(default=None, validator=_seed)

    @retry_after.validator
    def _check_retry_after(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"retry_after must be an int >= 0 (seconds), got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.failure_rate > 1:
            raise ValueError(
                "server_error + rate_limit + drop_before + drop_after + stall must be <= 1, "
                f"got {self.failure_rate:g}"
            )

    @property
    def failure_rate(self) -> float:
        """Probability that one request fails (every failing kind summed; delay excluded)."""
        return self.server_error + self.rate_limit + self.drop_before + self.drop_after + self.stall

    @classmethod
    def profile(cls, name: str) -> FaultPlan:
        """The named profile (``"none"``, ``"flaky"`` or ``"terrible"``).

        Raises:
            ValueError: for an unknown name.
        """
        try:
            return PROFILES[name]
        except KeyError:
            raise ValueError(
                f"unknown fault profile {name!r}; choose one of {', '.join(sorted(PROFILES))}"
            ) from None


#: The named profiles. ``terrible``: 30% of requests (first attempts and retries alike) fail.
PROFILES: Mapping[str, FaultPlan] = MappingProxyType(
    {
        "none": FaultPlan(),
        "flaky": FaultPlan(
            server_error=0.05,
            rate_limit=0.02,
            drop_before=0.01,
            drop_after=0.01,
            delay=0.10,
            delay_range=(0.01, 0.1),
        ),
        "terrible": FaultPlan(
            server_error=0.13,
            html_error_rate=0.2,
            rate_limit=0.05,
            drop_before=0.05,
            drop_after=0.05,
            stall=0.02,
            delay=0.20,
            delay_range=(0.05, 0.5),
            retry_after_form="mixed",
        ),
    }
)


def resolve_plan(faults: FaultPlan | str | None) -> FaultPlan:
    """A plan from a plan, a profile name, or ``None`` (no faults)."""
    if faults is None:
        return PROFILES["none"]
    if isinstance(faults, FaultPlan):
        return faults
    if isinstance(faults, str):
        return FaultPlan.profile(faults)
    raise TypeError(f"faults must be a FaultPlan, a profile name or None, not {faults!r}")


@attrs.frozen(kw_only=True)
class FaultDecision:
    """What happens to one request.

    Attributes:
        kind: the failing fault (one of ``FAULT_KINDS`` but ``delay``/``outage``), or ``None``.
        status: the HTTP status for ``server_error`` and ``rate_limit``.
        retry_after: the ``Retry-After`` header value to send, if any.
        html: answer a ``server_error`` with an HTML body, as a proxy would.
        delay: extra seconds of processing latency (0 for none).
        stall_seconds: how long a ``stall`` holds the connection.
    """

    kind: str | None = None
    status: int = 0
    retry_after: str | None = None
    html: bool = False
    delay: float = 0.0
    stall_seconds: float = 0.0


NO_FAULT = FaultDecision()


class FaultInjector:
    """Draws :class:`FaultDecision` objects for one plan; thread-safe.

    Args:
        plan: the plan to follow.
        clock: wall clock (seconds since the epoch) for ``Retry-After`` HTTP-dates.
    """

    def __init__(self, plan: FaultPlan, *, clock: Callable[[], float] = time.time) -> None:
        self.plan = plan
        self._clock = clock
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()
        self._cumulative: tuple[tuple[str, float], ...] = tuple(
            (kind, p)
            for kind, p in (
                ("drop_before", plan.drop_before),
                ("stall", plan.stall),
                ("server_error", plan.server_error),
                ("rate_limit", plan.rate_limit),
                ("drop_after", plan.drop_after),
            )
            if p > 0
        )

    def decide(self) -> FaultDecision:
        """The decision for the next request."""
        plan = self.plan
        if not self._cumulative and plan.delay == 0:
            return NO_FAULT
        with self._lock:
            rng = self._rng
            kind = self._pick(rng.random())
            status = 0
            retry_after: str | None = None
            html = False
            if kind == "server_error":
                status = rng.choice(_SERVER_ERROR_STATUSES)
                if status == 503 and rng.random() < plan.server_error_retry_after:
                    retry_after = self._retry_after(rng)
                html = status in (502, 504) and rng.random() < plan.html_error_rate
            elif kind == "rate_limit":
                status = 429
                retry_after = self._retry_after(rng)
            delay = 0.0
            if plan.delay > 0 and rng.random() < plan.delay:
                delay = rng.uniform(*plan.delay_range)
        return FaultDecision(
            kind=kind,
            status=status,
            retry_after=retry_after,
            html=html,
            delay=delay,
            stall_seconds=plan.stall_seconds if kind == "stall" else 0.0,
        )

    def _pick(self, u: float) -> str | None:
        total = 0.0
        for kind, p in self._cumulative:
            total += p
            if u < total:
                return kind
        return None

    def _retry_after(self, rng: random.Random) -> str:
        form = self.plan.retry_after_form
        if form == "mixed":
            form = "seconds" if rng.random() < 0.5 else "http-date"
        if form == "seconds":
            return str(self.plan.retry_after)
        return http_date(self._clock() + self.plan.retry_after)


def http_date(when: float) -> str:
    """An IMF-fixdate (RFC 9110) no earlier than ``when`` (rounded up to a whole second)."""
    return email.utils.formatdate(math.ceil(when), usegmt=True)


class RealtimeFaults:
    """Realtime fault knobs; thread-safe.

    Args:
        duplicate_rate: probability that a publication push is sent twice to a client.
        skip_rate: probability that a publication push is not sent to a client (it stays
            in history, so the client sees a gap at the next one).
        silent: send nothing (no pings, pushes or replies) and ignore every client frame.
        seed: seed of the RNG.
    """

    def __init__(
        self,
        *,
        duplicate_rate: float = 0.0,
        skip_rate: float = 0.0,
        silent: bool = False,
        seed: int | None = None,
    ) -> None:
        for name, rate in (("duplicate_rate", duplicate_rate), ("skip_rate", skip_rate)):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {rate!r}")
        self.duplicate_rate = duplicate_rate
        self.skip_rate = skip_rate
        self.silent = silent
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def push_copies(self) -> int:
        """How many times to send the next publication push to one client (0, 1 or 2)."""
        if self.skip_rate == 0 and self.duplicate_rate == 0:
            return 1
        with self._lock:
            if self._rng.random() < self.skip_rate:
                return 0
            return 2 if self._rng.random() < self.duplicate_rate else 1
