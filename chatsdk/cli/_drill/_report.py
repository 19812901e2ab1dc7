"""The drill's results: one :class:`ArmResult` per arm, as JSON and as a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = ["ArmResult", "DrillReport", "OutageFigures", "render_table"]


@attrs.frozen(kw_only=True)
class OutageFigures:
    """How an arm behaved while its server was down (``--outage``).

    Attributes:
        requests_while_down: HTTP sends the arm attempted while the host refused connections.
        requests_per_op: those sends per operation that was running or started during the
            outage (for the outbox: per message not yet delivered when it began).
        fail_ms_mean: mean time to fail of the calls that started during the outage and
            failed, in ms (None when none failed).
        first_success_after_s: seconds from the host's return to the first message the
            server stored (None when nothing was stored after it returned).
    """

    requests_while_down: int
    requests_per_op: float
    fail_ms_mean: float | None
    first_success_after_s: float | None

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class ArmResult:
    """One arm's figures, counted at the server (what it stored) and at the caller.

    The first fields are the documented ``--json`` contract; later ones are additions.
    """

    name: str
    delivered_exactly_once_pct: float
    duplicates: int
    lost: int
    caller_errors_pct: float
    requests_per_message: float
    latency_mean_ms: float
    latency_p99_ms: float
    mean_retry_delay_ms: float
    grade: str
    operations: int = 0
    attempts_per_message: float = 0.0
    retries: int = 0
    seconds: float = 0.0
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    outage: OutageFigures | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object for this arm."""
        data: dict[str, Any] = {
            "name": self.name,
            "delivered_exactly_once_pct": round(self.delivered_exactly_once_pct, 3),
            "duplicates": self.duplicates,
            "lost": self.lost,
            "caller_errors_pct": round(self.caller_errors_pct, 3),
            "requests_per_message": round(self.requests_per_message, 3),
            "latency_ms": {
                "mean": round(self.latency_mean_ms, 2),
                "p99": round(self.latency_p99_ms, 2),
            },
            "mean_retry_delay_ms": round(self.mean_retry_delay_ms, 2),
            "grade": self.grade,
            "operations": self.operations,
            "attempts_per_message": round(self.attempts_per_message, 3),
            "retries": self.retries,
            "seconds": round(self.seconds, 2),
        }
        data.update(self.extra)
        if self.outage is not None:
            data["outage"] = self.outage.to_json()
        return data


@attrs.frozen(kw_only=True)
class DrillReport:
    """A whole run."""

    profile: str
    messages: int
    scenario: str
    threads: int
    seed: int
    timeout: tuple[float, float]
    outage: float | None
    rate: float | None
    arms: Sequence[ArmResult]
    seconds: float
    crashed: Mapping[str, str] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: ``profile``, ``messages``, ``arms`` and run details."""
        return {
            "profile": self.profile,
            "messages": self.messages,
            "arms": [arm.to_json() for arm in self.arms],
            "scenario": self.scenario,
            "threads": self.threads,
            "seed": self.seed,
            "timeout_s": {"connect": self.timeout[0], "read": self.timeout[1]},
            "outage_s": self.outage,
            "rate": self.rate,
            "seconds": round(self.seconds, 2),
            "crashed": dict(self.crashed),
        }


_COLUMNS = (
    ("arm", "<"),
    ("exactly once", ">"),
    ("dups", ">"),
    ("lost", ">"),
    ("errors", ">"),
    ("req/msg", ">"),
    ("mean ms", ">"),
    ("p99 ms", ">"),
    ("retry wait ms", ">"),
    ("grade", "^"),
)


def _row(arm: ArmResult) -> list[str]:
    return [
        arm.name,
        f"{arm.delivered_exactly_once_pct:.2f}%",
        str(arm.duplicates),
        str(arm.lost),
        f"{arm.caller_errors_pct:.2f}%",
        f"{arm.requests_per_message:.2f}",
        f"{arm.latency_mean_ms:.0f}",
        f"{arm.latency_p99_ms:.0f}",
        f"{arm.mean_retry_delay_ms:.0f}",
        arm.grade,
    ]


def _outage_lines(report: DrillReport) -> list[str]:
    rows = [arm for arm in report.arms if arm.outage is not None]
    if not rows:
        return []
    lines = ["", f"During the {report.outage:g}s outage:"]
    width = max(len(arm.name) for arm in rows)
    for arm in rows:
        figures = arm.outage
        assert figures is not None
        fail = "-" if figures.fail_ms_mean is None else f"{figures.fail_ms_mean:.1f} ms"
        back = (
            "never (run ended first)"
            if figures.first_success_after_s is None
            else f"{figures.first_success_after_s:.2f} s"
        )
        lines.append(
            f"  {arm.name:<{width}}  {figures.requests_per_op:5.2f} requests to the dead host"
            f" per operation; time to fail {fail}; first success {back} after it returned"
        )
    return lines


def render_table(report: DrillReport) -> str:
    """The report as a plain-text table for people."""
    rows = [[name for name, _ in _COLUMNS]] + [_row(arm) for arm in report.arms]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]

    def fmt(row: list[str]) -> str:
        cells = [
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(row, _COLUMNS, widths, strict=True)
        ]
        return "  ".join(cells).rstrip()

    outage = f", outage {report.outage:g}s" if report.outage else ""
    outage += f", {report.rate:g} operations/s per arm" if report.rate else ""
    title = (
        f"chatsdk drill: {report.messages} messages, {report.threads} threads, profile "
        f"{report.profile!r}, scenario {report.scenario!r}{outage}, seed {report.seed}, "
        f"timeout {report.timeout[0]:g}s connect / {report.timeout[1]:g}s read"
    )
    rule = "-" * len(fmt(rows[0]))
    lines = [title, "", fmt(rows[0]), rule, *(fmt(row) for row in rows[1:]), rule]
    lines += _outage_lines(report)
    lines += [f"\narm {label!r} crashed: {error}" for label, error in report.crashed.items()]
    lines.append(f"\nfinished in {report.seconds:.1f}s")
    return "\n".join(lines)
