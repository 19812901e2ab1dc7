"""The outbox's time: the wall clock, watched for steps by a monotonic clock.

Stored times (an entry's creation, its next attempt, a lease's expiry) are wall-clock
seconds, since other processes and hosts read them. Within a process, time that passes is
measured by a monotonic clock: :class:`StepWatch` reads both and reports when the wall clock
moved away from the monotonic one (NTP stepping it, a VM restored, an operator's
``date -s``), so the outbox can move the stored times it holds by as much.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["MONOTONIC", "STEP_TOLERANCE", "StepWatch"]

#: Seconds the wall clock may move against the monotonic one between two readings before
#: it counts as a step (NTP's slewing moves it by half a millisecond a second at most).
STEP_TOLERANCE = 1.0


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


#: The default monotonic clock: ``CLOCK_BOOTTIME`` where there is one (Linux), which keeps
#: counting while the machine is suspended (a suspended day is a day of an entry's age, not
#: a step); ``time.monotonic`` elsewhere.
MONOTONIC: Callable[[], float] = _boottime if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic


class StepWatch:
    """Reads the wall clock and tells a step of it from time passing.

    Not thread-safe: the caller serialises :meth:`read` (the outbox does, under a lock, so
    the one reading that sees a step is handled before any other reading is used).

    Args:
        wall: the wall clock (seconds since the epoch).
        monotonic: a clock that only moves forward with real time.
        tolerance: the largest move against ``monotonic`` that is not a step.
    """

    def __init__(
        self,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        *,
        tolerance: float = STEP_TOLERANCE,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._tolerance = tolerance
        self._offset = wall() - monotonic()  # the first reading: what a step moves away from

    def read(self) -> tuple[float, float]:
        """The wall-clock time now, and how far the wall clock stepped since the last
        reading (0.0 when it did not: it moved with the monotonic clock)."""
        wall = self._wall()
        offset = wall - self._monotonic()
        previous, self._offset = self._offset, offset
        if abs(offset - previous) <= self._tolerance:
            return wall, 0.0
        return wall, offset - previous

    def rewind(self, step: float) -> None:
        """Report ``step`` again at the next reading (handling it failed)."""
        self._offset -= step
