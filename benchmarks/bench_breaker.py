"""What the circuit breaker and the retry budget save during an outage (simulated clock).

Run: ``python benchmarks/bench_breaker.py [--seed N]``

Scenario: 20 operations per second against one host; it is healthy for 10 s (so the
breaker's window is full of successes, the hard case), then dead for 60 s, then healthy again.
Each operation is one retry loop of up to 5 attempts. Time is simulated by a discrete-event
loop driving an injected clock, so a 3-minute scenario runs in well under a second; the one
real measurement is how long ``CircuitBreaker.acquire()`` takes to reject a call.

Strategies, side by side:

* ``breaker+budget``: chatsdk's defaults: ``CircuitBreaker`` (BreakerPolicy()) in front of
  every attempt, ``RetryBudget`` (RetryPolicy's budget_capacity/budget_refund) for retries,
  RetryPolicy's backoff (full jitter from 0.1 s); the loop stops at once when the circuit is
  open or opens with attempts left.
* ``budget only``: the same loop without a breaker.
* ``urllib3 Retry(5)``: a real ``urllib3.util.Retry(5)`` driving the loop (6 attempts, no
  backoff by default) with no breaker, as ``HTTPAdapter(max_retries=Retry(5))`` would.

Two kinds of dead host: ``refused`` (each attempt fails after 1 ms, a RST on a LAN) and
``blackholed`` (each attempt waits out a 3 s connect timeout). Figures only; no assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import random
import statistics
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

from urllib3.connection import HTTPConnection
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.util import Retry

from chatsdk._errors import CircuitBreakerOpenError
from chatsdk._http.retry import RetryPolicy, calculate_backoff
from chatsdk._resilience.breaker import BreakerPolicy, CircuitBreaker, CircuitState
from chatsdk._resilience.budget import RetryBudget

RATE = 20.0  # operations per second
WARMUP = 10.0  # healthy seconds before the outage
OUTAGE = 60.0  # seconds the host is dead
AFTER = 180.0  # healthy seconds simulated after the host returns
HEALTHY_COST = 0.05  # seconds one attempt takes against a healthy host
DEAD_COSTS = {"refused": 0.001, "blackholed": 3.0}

# urllib3's errors carry the connection; building one does no I/O.
_DEAD_CONN = HTTPConnection("dead.invalid", 80)

# An operation is a generator: it yields the simulated time at which it wants to resume.
Operation = Generator[float, None, None]


class SimClock:
    """The injected clock: the event loop sets ``now``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stats:
    """What one strategy did during one scenario."""

    outage_start: float
    outage_end: float
    ops_in_outage: int = 0
    sent_to_dead_host: int = 0
    fail_times: list[float] = field(default_factory=list)  # per failed op started in outage
    failed_fast: int = 0
    first_success_after: float | None = None
    opened_at: float | None = None

    def host_up(self, t: float) -> bool:
        return not self.outage_start <= t < self.outage_end

    def note_success(self, t: float) -> None:
        if t >= self.outage_end and self.first_success_after is None:
            self.first_success_after = t - self.outage_end


@dataclass
class Scenario:
    """One simulated run: a clock, the host's health and the strategy's shared state."""

    dead_cost: float
    outage: float
    seed: int
    clock: SimClock = field(default_factory=SimClock)

    def __post_init__(self) -> None:
        self.stats = Stats(outage_start=WARMUP, outage_end=WARMUP + self.outage)
        self.rng = random.Random(self.seed)

    def cost(self, t: float) -> float:
        return HEALTHY_COST if self.stats.host_up(t) else self.dead_cost

    def send(self, t: float) -> bool:
        """Count one attempt started at ``t``; return whether the host answers it."""
        up = self.stats.host_up(t)
        if not up:
            self.stats.sent_to_dead_host += 1
        return up

    def finish(self, start: float, ok: bool, *, fast: bool = False) -> None:
        now = self.clock.now
        if ok:
            self.stats.note_success(now)
        elif not self.stats.host_up(start):
            self.stats.fail_times.append(now - start)
            self.stats.failed_fast += fast


def chatsdk_loop(
    sc: Scenario, breaker: CircuitBreaker | None, budget: RetryBudget, policy: RetryPolicy
) -> Operation:
    """One operation through the loop the transport runs (breaker gate, budget, backoff)."""
    start = sc.clock.now
    for attempt in range(policy.max_attempts):
        if attempt:
            if not budget.try_spend():
                sc.finish(start, ok=False)  # the real error; no retry without budget
                return
            yield sc.clock.now + calculate_backoff(attempt - 1, policy, rand=sc.rng.random)
        permit = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except CircuitBreakerOpenError:
                sc.finish(start, ok=False, fast=attempt == 0)
                return
        sent_at = sc.clock.now
        up = sc.send(sent_at)
        yield sent_at + sc.cost(sent_at)
        if up:
            if permit is not None:
                permit.success()
            budget.on_success()
            sc.finish(start, ok=True)
            return
        if permit is not None:
            permit.failure()
            last = attempt == policy.max_attempts - 1
            if not last and breaker is not None and breaker.state is CircuitState.OPEN:
                sc.finish(start, ok=False)  # CircuitBreakerOpenError instead of more sleeping
                return
    sc.finish(start, ok=False)


def urllib3_loop(sc: Scenario) -> Operation:
    """One operation driven by a real ``urllib3.util.Retry(5)`` and no breaker."""
    start = sc.clock.now
    retry = Retry(5)
    while True:
        sent_at = sc.clock.now
        up = sc.send(sent_at)
        yield sent_at + sc.cost(sent_at)
        if up:
            sc.finish(start, ok=True)
            return
        try:
            retry = retry.increment(
                "POST", "/v1/channels/c/messages", error=NewConnectionError(_DEAD_CONN, "refused")
            )
        except MaxRetryError:
            sc.finish(start, ok=False)
            return
        backoff = retry.get_backoff_time()
        if backoff:
            yield sc.clock.now + backoff


def run(sc: Scenario, make_op: Callable[[], Operation]) -> Stats:
    """Start RATE operations per second and drive them all on the simulated clock."""
    queue: list[tuple[float, int, Operation]] = []
    order: Iterator[int] = itertools.count()
    end = sc.stats.outage_end + AFTER
    for i in itertools.count():
        t = i / RATE
        if t >= end:
            break
        heapq.heappush(queue, (t, next(order), _started(sc, make_op)))
    while queue:
        t, _, op = heapq.heappop(queue)
        sc.clock.now = t
        try:
            wake = next(op)
        except StopIteration:
            continue
        heapq.heappush(queue, (wake, next(order), op))
    return sc.stats


def _started(sc: Scenario, make_op: Callable[[], Operation]) -> Operation:
    # Defer building the operation until its start time, so it reads the clock then.
    yield sc.clock.now
    if not sc.stats.host_up(sc.clock.now):
        sc.stats.ops_in_outage += 1
    yield from make_op()


def strategies(sc: Scenario) -> dict[str, Callable[[], Operation]]:
    policy = RetryPolicy()
    assert policy.budget_capacity is not None
    breaker = CircuitBreaker.from_policy("rest:http://dead:80", BreakerPolicy(), clock=sc.clock)

    def note_open(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        if new is CircuitState.OPEN and sc.stats.opened_at is None:
            sc.stats.opened_at = sc.clock.now - sc.stats.outage_start

    breaker.add_listener(note_open)
    budget_a = RetryBudget(policy.budget_capacity, policy.budget_refund)
    budget_b = RetryBudget(policy.budget_capacity, policy.budget_refund)
    return {
        "breaker+budget": lambda: chatsdk_loop(sc, breaker, budget_a, policy),
        "budget only": lambda: chatsdk_loop(sc, None, budget_b, policy),
        "urllib3 Retry(5)": lambda: urllib3_loop(sc),
    }


def simulate(name: str, dead: str, outage: float, seed: int) -> Stats:
    sc = Scenario(dead_cost=DEAD_COSTS[dead], outage=outage, seed=seed)
    return run(sc, strategies(sc)[name])


def measure_rejection_us(samples: int = 20_000) -> float:
    """Real median time of ``acquire()`` on an OPEN breaker, in microseconds."""
    breaker = CircuitBreaker("rest:http://dead:80")
    breaker.force_open()
    timings = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        with contextlib.suppress(CircuitBreakerOpenError):
            breaker.acquire()
        timings.append(time.perf_counter_ns() - t0)
    return statistics.median(timings) / 1000


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "never"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seed for the backoff jitter")
    args = parser.parse_args()

    names = ["breaker+budget", "budget only", "urllib3 Retry(5)"]
    policy = RetryPolicy()
    print(
        f"{OUTAGE:.0f} s outage at {RATE:.0f} operations/s after {WARMUP:.0f} s healthy "
        f"(simulated clock, seed {args.seed})"
    )
    print(
        f"chatsdk: BreakerPolicy() defaults, RetryPolicy(max_attempts={policy.max_attempts}, "
        f"budget_capacity={policy.budget_capacity}, budget_refund={policy.budget_refund}); "
        f"urllib3: Retry(5) = 6 attempts, no backoff"
    )
    rejection_us = measure_rejection_us()
    width = 20
    for dead, cost in DEAD_COSTS.items():
        results = {name: simulate(name, dead, OUTAGE, args.seed) for name in names}
        print()
        print(f"dead host {dead} ({cost * 1000:g} ms per attempt)")
        print(f"{'':44}" + "".join(f"{n:>{width}}" for n in names))
        rows: list[tuple[str, Callable[[Stats], str]]] = [
            (
                "HTTP requests to the dead host per operation",  # ops started in the outage
                lambda s: f"{s.sent_to_dead_host / s.ops_in_outage:.3f}",
            ),
            ("operations in the outage", lambda s: f"{s.ops_in_outage}"),
            ("  of which failed fast (nothing sent)", lambda s: f"{s.failed_fast}"),
            (
                "time to fail per call in outage, median (sim)",
                lambda s: fmt_seconds(statistics.median(s.fail_times)),
            ),
            (
                "time to fail per call in outage, worst (sim)",
                lambda s: fmt_seconds(max(s.fail_times)),
            ),
            (
                "breaker opened after",
                lambda s: "-" if s.opened_at is None else fmt_seconds(s.opened_at),
            ),
            (
                "time to first success after host returns",
                lambda s: fmt_seconds(s.first_success_after),
            ),
        ]
        for label, cell in rows:
            print(f"{label:44}" + "".join(f"{cell(results[n]):>{width}}" for n in names))
        print(
            f"{'acquire() rejection while open (real)':44}"
            + f"{f'{rejection_us:.2f} us median':>{width}}"
            + f"{'-':>{width}}" * 2
        )

    print()
    print("time to first success after the host returns vs outage length (breaker+budget):")
    print("the first probe goes out recovery_timeout after the circuit opened; if it fails,")
    print("the next one is another recovery_timeout later")
    lengths = [30.0, 59.0, 60.0, 61.0, 90.0, 150.0]
    print(f"{'outage':>10}" + "".join(f"{f'{length:.0f} s':>10}" for length in lengths))
    for dead in DEAD_COSTS:
        cells = [
            fmt_seconds(simulate("breaker+budget", dead, length, args.seed).first_success_after)
            for length in lengths
        ]
        print(f"{dead:>10}" + "".join(f"{c:>10}" for c in cells))


if __name__ == "__main__":
    main()
