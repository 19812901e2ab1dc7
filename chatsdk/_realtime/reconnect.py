"""The realtime reconnect policy: how long to wait after a connection ends, and when to stop.

The n-th consecutive reconnect waits ``min(max, min + U(0, min(max, min * 2**min(n, 30))))``;
the first reconnect after a working connection was closed by a restart or dropped (3001,
1001, 1006, 1012) waits ``U(0, restart_spread)`` instead, so that many clients do not return
in the same instant (and while the restarted server is not back yet, the jitter range of the
next attempts stays at least ``restart_spread`` wide); ``n`` resets once a connection stayed
up ``stable_after`` seconds. Final close codes (3500-3999, 4500-4999) and final connect
errors stop the client, as does ``max_attempts`` attempts in a row that never connected.
"""

from __future__ import annotations

import random

import attrs

__all__ = [
    "RESTART_CODES",
    "Decision",
    "Outcome",
    "ReconnectPolicy",
    "is_final_close_code",
    "reconnect_delay",
]

#: Close codes of a working connection after which the first reconnect is spread over
#: ``U(0, restart_spread)``: server shutdown/restart or a dropped transport.
RESTART_CODES = frozenset({3001, 1001, 1006, 1012})
_MAX_STEP = 30


def is_final_close_code(code: int) -> bool:
    """True for close codes that forbid reconnecting (3500-3999 and 4500-4999)."""
    return 3500 <= code <= 3999 or 4500 <= code <= 4999


def reconnect_delay(
    step: int, min_delay: float, max_delay: float, rng: random.Random, *, min_spread: float = 0.0
) -> float:
    """The delay before the ``step``-th consecutive reconnect (``step`` from 0).

    ``min(max, min + U(0, min(max, min * 2**min(step, 30))))``: the centrifuge clients'
    full-jitter formula with the exponent capped. ``min_spread`` widens the jitter range to
    at least that many seconds (used while a restarted server comes back, so clients that
    tried too early do not all return in the same instant).
    """
    ceiling = max(min_spread, min(max_delay, min_delay * 2 ** min(step, _MAX_STEP)))
    return min(max_delay, min_delay + rng.uniform(0.0, ceiling))


@attrs.define
class Outcome:
    """How a connection ended.

    Attributes:
        code: close code, protocol error code or client-side code (``CODE_*``).
        reason: human-readable reason.
        final: reconnecting is forbidden (final close code or final connect error).
        handshake_failed: no WebSocket was established (or no token could be had).
        connected_for: seconds it was ``connected`` (``None``: it never was).
        opened_for: seconds the socket was open.
    """

    code: int | None = None
    reason: str = ""
    final: bool = False
    handshake_failed: bool = False
    connected_for: float | None = None
    opened_for: float = 0.0


@attrs.frozen
class Decision:
    """What follows an ended connection.

    Attributes:
        delay: seconds to wait before the next attempt; None to stop.
        suspended: the attempts in a row that never connected reached ``suspend_after``.
        stop_reason: why the client stops (when ``delay`` is None).
    """

    delay: float | None
    suspended: bool = False
    stop_reason: str = ""


class ReconnectPolicy:
    """The reconnect schedule of one client, and its state (guarded by the client's lock).

    Args:
        min_delay: the backoff's smallest delay, seconds.
        max_delay: the backoff's largest delay, seconds.
        restart_spread: the spread of the first reconnect after a restart or a drop.
        stable_after: a connection up this long resets the backoff.
        suspend_after: attempts in a row that never connected before ``suspended``.
        max_attempts: attempts in a row that never connected before giving up (None: never).
        rng: the jitter's source of randomness.
    """

    def __init__(
        self,
        *,
        min_delay: float,
        max_delay: float,
        restart_spread: float,
        stable_after: float,
        suspend_after: int,
        max_attempts: int | None,
        rng: random.Random,
    ) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.restart_spread = restart_spread
        self.stable_after = stable_after
        self.suspend_after = suspend_after
        self.max_attempts = max_attempts
        self.rng = rng
        self.step = 0  # consecutive reconnects (the backoff exponent)
        self.unconnected = 0  # consecutive attempts that never reached connected
        self.restarting = False  # the last working connection ended with a restart code

    def reset(self) -> None:
        """Start over (``connect()`` after the client stopped)."""
        self.step = 0
        self.unconnected = 0

    def connected(self) -> None:
        """An attempt reached ``connected``."""
        self.unconnected = 0
        self.restarting = False

    def up_for(self, seconds: float) -> None:
        """The live connection has been connected this long: stable ones reset the backoff."""
        if self.step and seconds >= self.stable_after:
            self.step = 0

    def after(self, outcome: Outcome) -> Decision:
        """Decide what follows a connection that ended with ``outcome``."""
        if outcome.final:
            return Decision(
                None,
                stop_reason=f"realtime connection closed for good: {outcome.code} {outcome.reason}",
            )
        if outcome.connected_for is not None:
            if outcome.connected_for >= self.stable_after:
                self.step = 0
            self.restarting = outcome.code in RESTART_CODES
            if self.restarting:
                return Decision(self.rng.uniform(0.0, self.restart_spread))
            delay = reconnect_delay(self.step, self.min_delay, self.max_delay, self.rng)
            self.step += 1
            return Decision(delay)
        self.unconnected += 1
        if self.max_attempts is not None and self.unconnected >= self.max_attempts:
            return Decision(
                None,
                stop_reason=f"gave up after {self.unconnected} attempts "
                f"(last: {outcome.code} {outcome.reason})",
            )
        # Still down after a restart: keep the jitter at least as wide as restart_spread, or
        # the clients that came too early would all return together when it is back.
        delay = reconnect_delay(
            self.step,
            self.min_delay,
            self.max_delay,
            self.rng,
            min_spread=self.restart_spread if self.restarting else 0.0,
        )
        self.step += 1
        return Decision(delay, suspended=self.unconnected >= self.suspend_after)
