"""The drill's grade rules, on synthetic figures, and its pure helpers."""

from __future__ import annotations

import io

import pytest

from chatsdk.cli._drill import GRADES, ArmResult, DrillReport, OutageFigures, grade, render_table
from chatsdk.cli._drill._measure import ArmRecorder, mean, percentile
from chatsdk.cli._drill._progress import ProgressBar


def g(once: float, dups: int = 0, errors: float = 0.0, messages: int = 1000) -> str:
    return grade(
        delivered_exactly_once_pct=once,
        duplicates=dups,
        messages=messages,
        caller_errors_pct=errors,
    )


def test_a_plus_is_the_spec_target() -> None:
    assert g(100.0) == "A+"
    assert g(99.9, 0, 0.99) == "A+"


def test_a_plus_needs_all_three() -> None:
    assert g(99.89) == "A"  # just under 99.9 % exactly once
    assert g(100.0, dups=1) == "B"  # any duplicate caps at B
    assert g(100.0, errors=1.0) == "B"  # 1 % errors is not < 1 %


def test_synchronous_sdk_on_terrible_network_earns_a() -> None:
    # 0.3 ** 5 = 0.24 % of sends fail after 5 attempts: A, not A+.
    assert g(99.76, 0, 0.24) == "A"


@pytest.mark.parametrize(
    ("once", "expected"),
    [
        (99.0, "A"),
        (98.99, "B"),
        (97.0, "B"),
        (96.99, "C"),
        (90.0, "C"),
        (89.99, "D"),
        (80.0, "D"),
        (79.99, "F"),
        (0.0, "F"),
    ],
)
def test_exactly_once_thresholds(once: float, expected: str) -> None:
    assert g(once) == expected


@pytest.mark.parametrize(
    ("dups", "expected"),
    [(0, "A+"), (1, "B"), (10, "C"), (11, "D"), (50, "D"), (51, "F")],
)
def test_duplicate_thresholds_per_thousand(dups: int, expected: str) -> None:
    assert g(100.0, dups=dups) == expected


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (0.99, "A+"),
        (1.0, "B"),
        (2.99, "B"),
        (3.0, "C"),
        (9.99, "C"),
        (10.0, "D"),
        (24.99, "D"),
        (25.0, "F"),
        (100.0, "F"),
    ],
)
def test_caller_error_thresholds(errors: float, expected: str) -> None:
    assert g(100.0, errors=errors) == expected


def test_worst_letter_wins() -> None:
    # urllib3-like: nothing lost, no errors, but 7 % duplicated.
    assert g(93.0, dups=70, errors=0.0) == "F"
    # plain-requests-like: nothing duplicated, 30 % errors.
    assert g(80.0, dups=0, errors=30.0) == "F"
    assert g(99.95, dups=0, errors=5.0) == "C"


def test_duplicates_are_relative_to_messages() -> None:
    assert g(100.0, dups=1, messages=60) == "D"  # 1.7 %
    assert g(100.0, dups=1, messages=0) == "F"  # no messages: no division by zero


def test_grades_are_ordered() -> None:
    assert GRADES == ("A+", "A", "B", "C", "D", "F")


def test_mean_and_percentile() -> None:
    assert mean([]) == 0.0
    assert percentile([], 99) == 0.0
    values = [float(i) for i in range(1, 101)]
    assert mean(values) == 50.5
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([5.0], 99) == 5.0


def test_recorder_with_injected_clock_and_sleep() -> None:
    now = [10.0]
    slept: list[float] = []
    rec = ArmRecorder(clock=lambda: now[0], sleep=slept.append)
    start = rec.now()
    now[0] = 10.5
    rec.op(start, ok=False)
    rec.sleep(0.25)
    rec.attempt()
    rec.progress(2)
    ops, waits, attempts = rec.snapshot()
    assert [op.latency for op in ops] == [0.5]
    assert not ops[0].ok
    assert waits == [0.25] and slept == [0.25]
    assert attempts == [10.5]
    assert rec.done == 3


def _arm(name: str, **overrides: object) -> ArmResult:
    figures: dict[str, object] = dict(
        name=name,
        delivered_exactly_once_pct=99.5,
        duplicates=0,
        lost=5,
        caller_errors_pct=0.5,
        requests_per_message=1.43,
        latency_mean_ms=250.0,
        latency_p99_ms=2500.0,
        mean_retry_delay_ms=300.0,
        grade="A",
    )
    figures.update(overrides)
    return ArmResult(**figures)  # type: ignore[arg-type]


def test_report_json_has_the_documented_shape() -> None:
    outage = OutageFigures(
        requests_while_down=3, requests_per_op=0.1, fail_ms_mean=1.5, first_success_after_s=None
    )
    report = DrillReport(
        profile="terrible",
        messages=1000,
        scenario="send",
        threads=8,
        seed=7,
        timeout=(1.0, 2.0),
        outage=10.0,
        rate=20.0,
        seconds=61.0,
        arms=[_arm("chatsdk send_message", outage=outage, extra={"pending_after_flush": 2})],
    )
    data = report.to_json()
    assert data["profile"] == "terrible" and data["messages"] == 1000
    (arm,) = data["arms"]
    assert set(arm) >= {
        "name",
        "delivered_exactly_once_pct",
        "duplicates",
        "lost",
        "caller_errors_pct",
        "requests_per_message",
        "latency_ms",
        "mean_retry_delay_ms",
        "grade",
    }
    assert arm["latency_ms"] == {"mean": 250.0, "p99": 2500.0}
    assert arm["outage"]["first_success_after_s"] is None
    assert arm["pending_after_flush"] == 2
    table = render_table(report)
    assert "chatsdk send_message" in table and "99.50%" in table
    assert "During the 10s outage" in table and "never (run ended first)" in table


def test_progress_bar_draws_through_tqdm_and_ends_the_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, interval=0.01, force=True)
    bar.add("requests", lambda: 1.0)
    bar.add("chatsdk", lambda: 0.5)
    assert bar.snapshot() == (0.75, "requests done | chatsdk 50%")
    bar.start()
    bar.stop()
    out = stream.getvalue()
    assert out.endswith("\n") and "\r" in out
    assert "drill:  75%|" in out and "requests done | chatsdk 50%" in out


def test_progress_bar_is_silent_off_a_terminal() -> None:
    stream = io.StringIO()  # not a TTY: a cron log gets no carriage returns
    bar = ProgressBar(stream, interval=0.01)
    bar.add("requests", lambda: 1.0)
    bar.start()
    bar.stop()
    assert stream.getvalue() == ""
