"""What a realtime client shows of itself: its state, its counters and their snapshot."""

from __future__ import annotations

import enum
from collections import deque

import attrs

from chatsdk._realtime.subscription import Subscription, SubscriptionState

__all__ = ["Counters", "RealtimeState", "RealtimeStats"]

_KEPT_DELAYS = 1000


class RealtimeState(enum.Enum):
    """The client's connection state."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    SUSPENDED = "suspended"
    CLOSED = "closed"


@attrs.frozen
class RealtimeStats:
    """A snapshot of a client's counters.

    Attributes:
        attempts: connection attempts started.
        connects: attempts that reached ``connected``.
        last_close_code: why the last connection ended (a close code, a protocol error
            code, or a client-side code below 1000: 2 no ping, 3 reply timeout, 4 token).
        last_close_reason: the matching reason text.
        last_error: why the last attempt that opened no connection failed (handshake,
            token endpoint), or "".
        reconnect_delays: the delays waited before reconnects (the latest 1000).
        reconnect_times: seconds from the end of a working connection to every subscription
            being subscribed again on a new one (the latest 1000).
        recoveries: subscribe replies that filled a gap (``recovered: true``).
        recovery_failures: subscribe replies that could not (``on_recovery_failed``).
        duplicates_dropped: publications dropped as already handed over.
        gaps: jumps in offsets seen (each one recovered by subscribing again).
        dropped_lines: protocol lines dropped as malformed.
        pings: server pings received.
        pongs: pongs sent.
    """

    attempts: int
    connects: int
    last_close_code: int | None
    last_close_reason: str
    last_error: str
    reconnect_delays: tuple[float, ...]
    reconnect_times: tuple[float, ...]
    recoveries: int
    recovery_failures: int
    duplicates_dropped: int
    gaps: int
    dropped_lines: int
    pings: int
    pongs: int


@attrs.define
class Counters:
    """The client's mutable counters (under the client's lock)."""

    attempts: int = 0
    connects: int = 0
    last_code: int | None = None
    last_reason: str = ""
    last_error: str = ""
    delays: deque[float] = attrs.field(factory=lambda: deque(maxlen=_KEPT_DELAYS))
    reconnect_times: deque[float] = attrs.field(factory=lambda: deque(maxlen=_KEPT_DELAYS))
    down_since: float | None = None
    recoveries: int = 0
    recovery_failures: int = 0
    duplicates: int = 0
    gaps: int = 0
    dropped: int = 0
    pings: int = 0
    pongs: int = 0

    def snapshot(self) -> RealtimeStats:
        """A frozen copy."""
        return RealtimeStats(
            attempts=self.attempts,
            connects=self.connects,
            last_close_code=self.last_code,
            last_close_reason=self.last_reason,
            last_error=self.last_error,
            reconnect_delays=tuple(self.delays),
            reconnect_times=tuple(self.reconnect_times),
            recoveries=self.recoveries,
            recovery_failures=self.recovery_failures,
            duplicates_dropped=self.duplicates,
            gaps=self.gaps,
            dropped_lines=self.dropped,
            pings=self.pings,
            pongs=self.pongs,
        )

    def connection_lost(self, now: float) -> None:
        """A working connection ended: the reconnect clock starts (unless it runs)."""
        if self.down_since is None:
            self.down_since = now

    def maybe_restored(self, now: float, subs: dict[str, Subscription]) -> None:
        """Stop the reconnect clock once every wanted subscription is subscribed."""
        if self.down_since is None:
            return
        if all(sub.state is SubscriptionState.SUBSCRIBED for sub in subs.values() if sub.active):
            self.reconnect_times.append(now - self.down_since)
            self.down_since = None

    def count_drop(self, _reason: str) -> None:
        """One protocol line dropped."""
        self.dropped += 1
