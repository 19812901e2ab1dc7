"""A one-line progress bar for the drill, redrawn on a stream (stderr) from its own thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["ProgressBar", "Task"]

Task = tuple[str, Callable[[], float]]
"""A label and a function returning that arm's progress in [0, 1]."""

_WIDTH = 24


class ProgressBar:
    """Redraws ``[#####-----] 42% 12s  arm 80% | arm 10%`` on ``stream`` until stopped.

    Args:
        stream: where to draw (a TTY: the line is redrawn with ``\\r``).
        interval: seconds between redraws.
        clock: monotonic clock.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._tasks: list[Task] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = clock()
        self._last_width = 0

    def add(self, label: str, fraction: Callable[[], float]) -> None:
        """Show one more task."""
        with self._lock:
            self._tasks.append((label, fraction))

    def line(self) -> str:
        """The current progress line."""
        with self._lock:
            tasks = list(self._tasks)
        fractions = [min(1.0, max(0.0, f())) for _, f in tasks]
        total = sum(fractions) / len(fractions) if fractions else 0.0
        filled = round(total * _WIDTH)
        parts = [
            f"{label} {'done' if f >= 1.0 else f'{f * 100:.0f}%'}"
            for (label, _), f in zip(tasks, fractions, strict=True)
        ]
        elapsed = self._clock() - self._started
        bar = "#" * filled + "-" * (_WIDTH - filled)
        return f"[{bar}] {total * 100:3.0f}% {elapsed:5.1f}s  " + " | ".join(parts)

    def start(self) -> None:
        """Start redrawing."""
        self._started = self._clock()
        self._thread = threading.Thread(
            target=self._run, name="chatsdk-drill-progress", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._draw()

    def _draw(self) -> None:
        text = self.line()
        pad = max(0, self._last_width - len(text))
        self._last_width = len(text)
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()

    def stop(self) -> None:
        """Draw the last state, end the line and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
