"""The drill's progress bar: one tqdm bar for every arm, with each arm's share beside it.

The arms report progress as fractions (see :data:`Task`); a thread polls them and moves the
bar (tqdm draws it: width, rate, elapsed time and redraws are its business).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TextIO

from chatsdk.cli._progress import Bar, progress_bar

__all__ = ["ProgressBar", "Task"]

Task = tuple[str, Callable[[], float]]
"""A label and a function returning that arm's progress in [0, 1]."""

_FORMAT = "{l_bar}{bar}| {elapsed} {postfix}"


class ProgressBar:
    """Shows ``drill  42%|####      | 00:12 arm 80% | arm 10%`` on ``stream`` until stopped.

    Args:
        stream: where to draw (a terminal; ``force`` draws on anything else too).
        interval: seconds between polls of the arms' fractions.
        force: draw even when ``stream`` is not a terminal.
    """

    def __init__(self, stream: TextIO, *, interval: float = 0.25, force: bool = False) -> None:
        self._stream = stream
        self._interval = interval
        self._force = force
        self._tasks: list[Task] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Bar | None = None

    def add(self, label: str, fraction: Callable[[], float]) -> None:
        """Show one more task."""
        with self._lock:
            self._tasks.append((label, fraction))

    def snapshot(self) -> tuple[float, str]:
        """The overall fraction (0..1) and the per-arm summary shown beside the bar."""
        with self._lock:
            tasks = list(self._tasks)
        fractions = [min(1.0, max(0.0, f())) for _, f in tasks]
        total = sum(fractions) / len(fractions) if fractions else 0.0
        parts = [
            f"{label} {'done' if f >= 1.0 else f'{f * 100:.0f}%'}"
            for (label, _), f in zip(tasks, fractions, strict=True)
        ]
        return total, " | ".join(parts)

    def start(self) -> None:
        """Start drawing."""
        self._bar = progress_bar(
            100, "drill", stream=self._stream, force=self._force, bar_format=_FORMAT
        )
        self._thread = threading.Thread(
            target=self._run, name="chatsdk-drill-progress", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._draw()

    def _draw(self) -> None:
        if self._bar is None:
            return
        total, parts = self.snapshot()
        self._bar.n = round(total * 100, 1)
        self._bar.set_postfix_str(parts, refresh=False)
        self._bar.refresh()

    def stop(self) -> None:
        """Draw the last state, end the line and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._draw()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
