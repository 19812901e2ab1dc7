"""RetryBudget: the token bucket, its thread safety, and what its defaults do (simulated)."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from chatsdk._http.retry import RetryPolicy
from chatsdk._resilience.budget import RetryBudget

WAIT = 10.0

DEFAULTS = RetryPolicy()
# What the simulations below show working (see test_proposed_defaults_*): the refund must
# pay for the retries a 30% failure rate needs (about 0.43 per operation) with a margin, and
# the capacity must absorb the random walk. 10/0.5 sits right at the edge and loses retries.
PROPOSED_CAPACITY = 20.0
PROPOSED_REFUND = 1.0


def test_starts_full_and_spends_whole_tokens() -> None:
    budget = RetryBudget(2.5, 0.5)
    assert budget.tokens == 2.5
    assert (budget.capacity, budget.refund) == (2.5, 0.5)
    assert budget.try_spend()
    assert budget.try_spend()
    assert budget.tokens == 0.5
    assert not budget.try_spend()  # fewer than one token: nothing taken
    assert budget.tokens == 0.5
    budget.on_success()
    assert budget.tokens == 1.0
    assert budget.try_spend()
    assert not budget.try_spend()


def test_refund_is_capped_at_capacity() -> None:
    budget = RetryBudget(3, 2)
    budget.on_success()
    assert budget.tokens == 3.0
    budget.try_spend()
    budget.on_success()
    assert budget.tokens == 3.0
    assert isinstance(budget.tokens, float)


def test_zero_refund_never_refills() -> None:
    budget = RetryBudget(1.0, 0.0)
    assert budget.try_spend()
    for _ in range(100):
        budget.on_success()
    assert not budget.try_spend()


@pytest.mark.parametrize(
    ("capacity", "refund"),
    [
        (0, 0.5),
        (-1.0, 0.5),
        (float("nan"), 0.5),
        (float("inf"), 0.5),
        (True, 0.5),
        ("10", 0.5),
        (None, 0.5),
        (10.0, -0.1),
        (10.0, float("nan")),
        (10.0, float("inf")),
        (10.0, True),
        (10.0, "1"),
    ],
)
def test_invalid_arguments(capacity: Any, refund: Any) -> None:
    with pytest.raises(ValueError):
        RetryBudget(capacity, refund)


def test_repr() -> None:
    assert repr(RetryBudget(10.0, 0.5)) == "<RetryBudget 10.00/10 refund=0.5>"


def test_concurrent_spends_never_overdraw() -> None:
    budget = RetryBudget(1000.0, 0.0)
    start = threading.Barrier(16)
    granted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait(WAIT)
        mine = sum(budget.try_spend() for _ in range(100))
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sum(granted) == 1000
    assert budget.tokens == 0.0


def test_concurrent_spends_and_refunds_balance() -> None:
    budget = RetryBudget(100_000.0, 1.0)
    for _ in range(50_000):
        budget.try_spend()
    start = threading.Barrier(8)

    def spender() -> None:
        start.wait(WAIT)
        for _ in range(2000):
            budget.try_spend()

    def refunder() -> None:
        start.wait(WAIT)
        for _ in range(2000):
            budget.on_success()

    threads = [threading.Thread(target=spender) for _ in range(4)]
    threads += [threading.Thread(target=refunder) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    # Between 42,000 and 58,000 tokens all along: never empty, never capped, so every one of
    # the 8,000 spends and 8,000 refunds must have landed.
    assert budget.tokens == 50_000.0


# -- simulations of the defaults (fake: no network, no clock) -------------------------------


def simulate(
    capacity: float, refund: float, *, failure_rate: float, operations: int, seed: int
) -> tuple[int, int, int, int]:
    """Run ``operations`` retry loops of up to 5 attempts sharing one budget.

    Each operation draws its five attempt outcomes up front, so the same seed gives the same
    luck with and without a budget.

    Returns:
        (attempts sent, operations failed, operations that would fail with no budget at all,
        retries the budget denied)
    """
    rng = random.Random(seed)
    budget = RetryBudget(capacity, refund)
    sent = failed = failed_anyway = denied = 0
    for _ in range(operations):
        outcomes = [rng.random() >= failure_rate for _ in range(DEFAULTS.max_attempts)]
        failed_anyway += not any(outcomes)
        for attempt, succeeded in enumerate(outcomes):
            if attempt > 0 and not budget.try_spend():
                denied += 1
                failed += 1
                break
            sent += 1
            if succeeded:
                budget.on_success()
                break
        else:
            failed += 1
    return sent, failed, failed_anyway, denied


def test_default_budget_outage_sends_at_most_1_2_requests_per_operation() -> None:
    assert DEFAULTS.max_attempts == 5
    assert DEFAULTS.budget_capacity is not None
    sent, failed, _, _ = simulate(
        DEFAULTS.budget_capacity, DEFAULTS.budget_refund, failure_rate=1.0, operations=1000, seed=1
    )
    assert failed == 1000
    # One first attempt per operation plus the bucket's initial contents.
    assert sent == 1000 + int(DEFAULTS.budget_capacity)
    assert sent / 1000 <= 1.2


@pytest.mark.xfail(
    (DEFAULTS.budget_capacity, DEFAULTS.budget_refund) == (10.0, 0.5),
    reason="RetryPolicy's budget_capacity=10, budget_refund=0.5 deny 43-122 retries per "
    "10,000 operations at 30% failures (20 seeds): 65-143 operations fail instead of the "
    "13-38 that fail all 5 attempts anyway; 20/1.0 deny none (test_proposed_defaults_*)",
    strict=True,
)
def test_default_budget_lets_every_retry_through_at_30_percent_failures() -> None:
    assert DEFAULTS.budget_capacity is not None
    _, failed, failed_anyway, denied = simulate(
        DEFAULTS.budget_capacity,
        DEFAULTS.budget_refund,
        failure_rate=0.3,
        operations=10_000,
        seed=7,
    )
    # 0.3**5 of the operations fail all five attempts whatever the budget does (~24 of
    # 10,000); the budget must not add to them.
    assert denied == 0
    assert failed == failed_anyway


@pytest.mark.parametrize("seed", range(20))
def test_proposed_defaults_let_every_retry_through_at_30_percent_failures(seed: int) -> None:
    sent, failed, failed_anyway, denied = simulate(
        PROPOSED_CAPACITY, PROPOSED_REFUND, failure_rate=0.3, operations=10_000, seed=seed
    )
    assert denied == 0
    assert failed == failed_anyway
    assert failed_anyway < 60  # about 24 expected: 10,000 * 0.3**5
    assert sent / 10_000 < 1.5


def test_proposed_defaults_outage_sends_at_most_1_2_requests_per_operation() -> None:
    sent, failed, _, _ = simulate(
        PROPOSED_CAPACITY, PROPOSED_REFUND, failure_rate=1.0, operations=1000, seed=1
    )
    assert failed == 1000
    assert sent == 1000 + PROPOSED_CAPACITY
    # In general 1 + capacity / operations: at most 1.2 from 100 operations on.
    sent_100, _, _, _ = simulate(
        PROPOSED_CAPACITY, PROPOSED_REFUND, failure_rate=1.0, operations=100, seed=1
    )
    assert sent_100 / 100 <= 1.2
