"""Realtime channel streams: epoch, offsets and bounded history, as in Centrifugo.

Each channel stream has a random ``epoch`` and an ``offset`` that grows by one per
publication; its history keeps the last ``history_size`` publications for at most
``history_ttl`` seconds. Losing a stream (a restart without ``keep_state``) means a new
epoch, so clients learn that recovery is impossible. Thread-safe.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Publication", "Streams"]


@dataclass(frozen=True)
class Publication:
    """One publication in a channel stream."""

    offset: int
    data: Any
    time: float

    def wire(self) -> dict[str, Any]:
        """The protocol form: ``{"data": ..., "offset": N}``."""
        return {"data": self.data, "offset": self.offset}


@dataclass
class _Stream:
    epoch: str
    offset: int = 0
    history: deque[Publication] = field(default_factory=deque)


class Streams:
    """Every channel's stream.

    Args:
        history_size: publications kept per channel.
        history_ttl: seconds a publication is kept.
        clock: monotonic clock in seconds.
    """

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if history_size < 0:
            raise ValueError("history_size must be >= 0")
        if history_ttl < 0:
            raise ValueError("history_ttl must be >= 0")
        self._history_size = history_size
        self._history_ttl = history_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}

    def _stream(self, channel: str) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = _Stream(epoch=secrets.token_hex(4))
            self._streams[channel] = stream
        self._prune(stream)
        return stream

    def _prune(self, stream: _Stream) -> None:
        cutoff = self._clock() - self._history_ttl
        history = stream.history
        while history and (len(history) > self._history_size or history[0].time < cutoff):
            history.popleft()

    def append(self, channel: str, data: Any) -> Publication:
        """Add a publication; returns it (with its offset)."""
        with self._lock:
            stream = self._stream(channel)
            stream.offset += 1
            publication = Publication(stream.offset, data, self._clock())
            stream.history.append(publication)
            self._prune(stream)
            return publication

    def position(self, channel: str) -> tuple[str, int]:
        """``(epoch, offset)`` of a channel's stream (created on first use)."""
        with self._lock:
            stream = self._stream(channel)
            return stream.epoch, stream.offset

    def since(
        self, channel: str, epoch: str, offset: int
    ) -> tuple[bool, list[Publication], str, int]:
        """Publications after ``offset`` of ``epoch``.

        Returns:
            ``(complete, publications, current_epoch, current_offset)``; ``complete`` is
            false when the gap cannot be filled (another epoch, an offset ahead of the
            stream, or history that no longer reaches back to ``offset + 1``).
        """
        with self._lock:
            stream = self._stream(channel)
            if epoch != stream.epoch or offset < 0 or offset > stream.offset:
                return False, [], stream.epoch, stream.offset
            if offset == stream.offset:
                return True, [], stream.epoch, stream.offset
            history = stream.history
            if not history or history[0].offset > offset + 1:
                return False, [], stream.epoch, stream.offset
            missed = [p for p in history if p.offset > offset]
            return True, missed, stream.epoch, stream.offset

    def latest(self, channel: str, limit: int) -> tuple[list[Publication], str, int]:
        """The newest ``limit`` publications (oldest first; all when ``limit`` < 0)."""
        with self._lock:
            stream = self._stream(channel)
            items = list(stream.history)
            if limit >= 0:
                items = items[len(items) - limit :] if limit else []
            return items, stream.epoch, stream.offset
