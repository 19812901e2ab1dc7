"""The resilience drill behind ``chatsdk drill`` (workload, arms, grades, report)."""

from __future__ import annotations

from chatsdk.cli._drill._grades import GRADES, grade
from chatsdk.cli._drill._progress import ProgressBar
from chatsdk.cli._drill._report import ArmResult, DrillReport, OutageFigures, render_table
from chatsdk.cli._drill._runner import SCENARIOS, DrillConfig, run_drill

__all__ = [
    "GRADES",
    "SCENARIOS",
    "ArmResult",
    "DrillConfig",
    "DrillReport",
    "OutageFigures",
    "ProgressBar",
    "grade",
    "render_table",
    "run_drill",
]
