"""What the drill measures at the caller: operations, attempts on the wire, retry waits.

An :class:`ArmRecorder` is shared by every worker thread of one arm. Attempts are counted
where every HTTP send passes whatever retries around it: in urllib3's
``HTTPConnectionPool._make_request`` (one call per send, refused connections included), by
mounting a counting pool class on the arm's adapter (:func:`count_attempts`). Retry waits
come from the sleep each retrying arm is built with (chatsdk's injected ``sleep``, a
``Retry.sleep`` override for urllib3).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["ArmRecorder", "OpRecord", "count_attempts", "mean", "percentile"]


@attrs.frozen
class OpRecord:
    """One operation as the caller saw it (monotonic seconds)."""

    start: float
    end: float
    ok: bool

    @property
    def latency(self) -> float:
        """Seconds the caller waited."""
        return self.end - self.start


class ArmRecorder:
    """Thread-safe tallies for one arm.

    Args:
        clock: monotonic clock (inject for tests).
        sleep: the real sleep behind :meth:`sleep`.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.ops: list[OpRecord] = []
        self.retry_waits: list[float] = []
        self.attempt_times: list[float] = []
        self.done = 0

    def now(self) -> float:
        """The recorder's clock."""
        return self._clock()

    def op(self, start: float, ok: bool) -> None:
        """Record an operation that started at ``start`` and ends now."""
        record = OpRecord(start, self._clock(), ok)
        with self._lock:
            self.ops.append(record)
            self.done += 1

    def progress(self, amount: int = 1) -> None:
        """Count work done that is not a caller operation (e.g. an outbox delivery)."""
        with self._lock:
            self.done += amount

    def sleep(self, seconds: float) -> None:
        """Sleep before a retry, recording the wait (the chatsdk adapter's ``sleep``)."""
        self.wait(seconds)
        self._sleep(seconds)

    def wait(self, seconds: float) -> None:
        """Record a retry wait of ``seconds`` that the caller slept elsewhere."""
        with self._lock:
            self.retry_waits.append(seconds)

    def attempt(self) -> None:
        """Record one HTTP send (from the counting pool)."""
        now = self._clock()
        with self._lock:
            self.attempt_times.append(now)

    def snapshot(self) -> tuple[list[OpRecord], list[float], list[float]]:
        """Copies of (operations, retry waits, attempt times)."""
        with self._lock:
            return list(self.ops), list(self.retry_waits), list(self.attempt_times)


def count_attempts(adapter: HTTPAdapter, recorder: ArmRecorder) -> None:
    """Make every HTTP send through ``adapter`` call ``recorder.attempt()``.

    urllib3 calls ``_make_request`` once per send, inside its own retry loop and below
    chatsdk's, and before connecting, so a refused connection counts as a send too.
    """

    class CountingPool(HTTPConnectionPool):
        def _make_request(self, *args: Any, **kwargs: Any) -> Any:
            recorder.attempt()
            return super()._make_request(*args, **kwargs)

    class CountingHTTPSPool(HTTPSConnectionPool):
        def _make_request(self, *args: Any, **kwargs: Any) -> Any:
            recorder.attempt()
            return super()._make_request(*args, **kwargs)

    adapter.poolmanager.pool_classes_by_scheme = {"http": CountingPool, "https": CountingHTTPSPool}


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values."""
    return math.fsum(values) / len(values) if values else 0.0


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (``pct`` in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
