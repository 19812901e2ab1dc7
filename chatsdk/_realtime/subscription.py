"""One channel subscription: its stream position, recovery merge, dedupe and gap detection.

A :class:`Subscription` holds no socket: the realtime client feeds it replies and pushes
(under the client's lock) and it answers with a :class:`Step` saying what to hand to the
application and whether the channel must be subscribed again. The rules (REALTIME.md):

- pushes that arrive while a subscribe is in flight are held, then merged with the reply's
  recovered publications;
- within one epoch, a publication whose offset is not above the last one handed over is a
  duplicate and is dropped; a jump (``offset > last + 1``) is a gap, recovered by
  subscribing again with ``recover: true``;
- ``recovered: false`` after asking to recover means the gap cannot be filled: the
  application is told (``on_recovery_failed``) and the stream continues from the new
  epoch and offset.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from chatsdk._errors import RealtimeError
from chatsdk._realtime.protocol import RawPublication, ReplyError, SubscribeResult
from chatsdk._validation import check_seconds

log = logging.getLogger(__name__)

#: Pushes held while a subscribe is in flight; past this the rest is fetched by recovery.
MAX_HELD = 10_000


@attrs.frozen
class StreamPosition:
    """A place in a channel's stream.

    Attributes:
        offset: offset of the last publication handed over (0: none yet).
        epoch: the stream's epoch; a different epoch is a different stream.
    """

    offset: int
    epoch: str


@attrs.frozen
class Publication:
    """One publication handed to ``on_publication``.

    Attributes:
        channel: the realtime channel (``chat:42``).
        data: the publication's JSON data, decoded.
        offset: its offset in the channel stream (0 for channels without history).
        epoch: the stream epoch the offset belongs to.
        info: the publisher's client info, when the server sent one.
    """

    channel: str
    data: Any
    offset: int
    epoch: str
    info: Mapping[str, Any] | None = None


class SubscriptionState(enum.Enum):
    """Where a subscription stands."""

    UNSUBSCRIBED = "unsubscribed"
    SUBSCRIBING = "subscribing"
    SUBSCRIBED = "subscribed"


@attrs.define
class Step:
    """What the client must do after feeding a subscription one reply or push.

    Attributes:
        deliver: publications to hand to ``on_publication``, in order.
        recovery_failed: call ``on_recovery_failed`` first.
        resubscribe: subscribe again, recovering (a gap was seen).
        duplicates: publications dropped as already handed over.
        recovered: the reply filled the gap.
        rebase: the stream now starts here (a fresh subscribe or a failed recovery); the
            public position moves there before ``deliver`` is handed over.
    """

    deliver: list[Publication] = attrs.field(factory=list)
    recovery_failed: bool = False
    rebase: StreamPosition | None = None
    resubscribe: bool = False
    duplicates: int = 0
    recovered: bool = False


PublicationCallback = Callable[[Publication], object]
RecoveryFailedCallback = Callable[[str], object]


class Subscription:
    """A channel subscription of a :class:`~chatsdk.RealtimeClient`.

    Created by :meth:`RealtimeClient.subscribe`; it stays subscribed across reconnects
    until :meth:`unsubscribe`, a final subscribe error or a server unsubscribe below 2500.

    Attributes:
        channel: the realtime channel name.
    """

    def __init__(
        self,
        channel: str,
        on_publication: PublicationCallback,
        *,
        on_recovery_failed: RecoveryFailedCallback | None = None,
        since: StreamPosition | None = None,
        unsubscribe_hook: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.channel = channel
        self._on_publication = on_publication
        self._on_recovery_failed = on_recovery_failed
        self._unsubscribe_hook = unsubscribe_hook
        self._state = SubscriptionState.UNSUBSCRIBED
        self._subscribed = threading.Event()
        # Wanted by the application: resubscribed after every reconnect while True.
        self.active = True
        self.error: RealtimeError | None = None
        # _stream is the position of the last publication queued for the callback (it
        # drives dedupe and recovery); _position is the last one the callback received.
        self._stream: StreamPosition | None = since
        self._position: StreamPosition | None = since
        self._recoverable = since is not None
        self._held: list[RawPublication] = []
        self._held_overflow = False
        self._asked_recover = False
        # Resubscribes the server provoked (gaps, retried errors, 105, 2500+ unsubscribes)
        # back off like reconnects: the step grows until a gap-free subscribe stayed so.
        self.retry_scheduled = False
        self._retry_step = 0
        self._clean_since: float | None = None

    # -- public -------------------------------------------------------------------------

    @property
    def state(self) -> SubscriptionState:
        """The subscription's state."""
        return self._state

    @property
    def position(self) -> StreamPosition | None:
        """The last publication handed to the callback (``None`` before any, unless ``since``).

        Pass it as ``since=`` to continue where this one stopped, e.g. after a restart.
        """
        return self._position

    def unsubscribe(self) -> None:
        """Stop the subscription; queued publications not yet handed over are dropped."""
        if self._unsubscribe_hook is not None:
            self._unsubscribe_hook(self)
        else:
            self.mark_unsubscribed()

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Block until the subscription is subscribed; False when ``timeout`` ran out.

        ``timeout``: None or infinity for no limit; NaN or negative raise ``ValueError``.
        """
        return self._subscribed.wait(check_seconds("timeout", timeout, none=True))

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} {self._state.value} position={self._position}>"

    # -- driven by the client (under its lock) ------------------------------------------

    def subscribe_params(self) -> dict[str, Any]:
        """The ``subscribe`` command body; the subscription is now in flight."""
        self._state = SubscriptionState.SUBSCRIBING
        self._subscribed.clear()
        params: dict[str, Any] = {"channel": self.channel}
        stream = self._stream
        self._asked_recover = stream is not None and self._recoverable
        if stream is not None and self._asked_recover:
            params.update(recover=True, offset=stream.offset, epoch=stream.epoch)
        return params

    def next_retry_step(self, now: float, stable_after: float) -> int:
        """The backoff step of a resubscribe the server provoked now (0: the first for a while).

        The step starts over once a subscribe without a gap stayed so ``stable_after``
        seconds; a server that answers every subscribe with a gap never lets it.
        """
        if self._clean_since is not None and now - self._clean_since >= stable_after:
            self._retry_step = 0
        self._clean_since = None
        step = self._retry_step
        self._retry_step += 1
        return step

    def subscribed_cleanly(self, now: float) -> None:
        """A subscribe reply left no gap (the stream is in one piece since ``now``)."""
        if self._clean_since is None:
            self._clean_since = now

    def connection_lost(self) -> None:
        """The connection dropped: pushes held for it are obsolete (recovery refetches)."""
        self._held.clear()
        self._held_overflow = False
        self.retry_scheduled = False  # its timer went with the connection
        if self.active:
            self._state = SubscriptionState.SUBSCRIBING
            self._subscribed.clear()

    def mark_unsubscribed(self, error: RealtimeError | None = None) -> None:
        """End the subscription for good."""
        self.active = False
        self.error = error
        self._state = SubscriptionState.UNSUBSCRIBED
        self._subscribed.clear()
        self._held.clear()

    def on_subscribe_error(self, error: ReplyError) -> bool:
        """A subscribe failed; True when it should be retried (the state stays in flight)."""
        if error.retryable:
            return True
        self.mark_unsubscribed(
            RealtimeError(f"subscribe to {self.channel} failed: {error.message}", code=error.code)
        )
        return False

    def on_subscribe_result(self, result: SubscribeResult) -> Step:
        """Merge a subscribe reply with the pushes held while it was in flight."""
        step = Step()
        held, self._held = self._held, []
        overflow, self._held_overflow = self._held_overflow, False
        self._recoverable = result.recoverable
        if not result.recoverable:
            # No history, no offsets: hand over what came, in order.
            for raw in (*result.publications, *held):
                step.deliver.append(self._publication(raw, result.epoch))
            self._stream = None
            self._set_subscribed()
            return step

        stream = self._stream
        if self._asked_recover and stream is not None:
            if result.recovered and result.epoch == stream.epoch:
                step.recovered = True
                base = stream
            else:
                step.recovery_failed = True
                base = step.rebase = StreamPosition(result.offset, result.epoch)
        else:
            base = step.rebase = StreamPosition(result.offset, result.epoch)
        gap = self._merge(base, (*result.publications, *held), step)
        self._set_subscribed()
        step.resubscribe = gap or overflow
        return step

    def _hold(self, raw: RawPublication) -> None:
        """Keep ``raw`` until the subscribe answers (at most MAX_HELD; then only a mark)."""
        if len(self._held) < MAX_HELD:
            self._held.append(raw)
        else:
            self._held_overflow = True

    def on_publication(self, raw: RawPublication) -> Step:
        """A publication push for this channel."""
        step = Step()
        if self._state is SubscriptionState.SUBSCRIBING:
            self._hold(raw)
            return step
        if self._state is SubscriptionState.UNSUBSCRIBED:
            return step
        if not self._recoverable:
            step.deliver.append(self._publication(raw, ""))
            return step
        stream = self._stream
        if stream is None or raw.offset == 0:
            log.warning("dropped a publication without an offset on recoverable %s", self.channel)
            return step
        if raw.offset <= stream.offset:
            step.duplicates = 1
            return step
        if raw.offset > stream.offset + 1:
            log.info(
                "gap on %s: offset %d after %d; recovering", self.channel, raw.offset, stream.offset
            )
            self._hold(raw)
            step.resubscribe = True
            return step
        step.deliver.append(self._publication(raw, stream.epoch))
        self._stream = StreamPosition(raw.offset, stream.epoch)
        return step

    def hand_over(self, pub: Publication) -> None:
        """Run ``on_publication`` (on the dispatch thread) unless unsubscribed meanwhile."""
        if not self.active:
            return
        try:
            self._on_publication(pub)
        finally:
            if pub.offset:
                self._position = StreamPosition(pub.offset, pub.epoch)

    def rebase(self, position: StreamPosition, recovery_failed: bool) -> None:
        """Move the public position (on the dispatch thread); tell the app of a lost gap."""
        if not self.active:
            return
        self._position = position
        if not recovery_failed:
            return
        if self._on_recovery_failed is not None:
            self._on_recovery_failed(self.channel)
        else:
            log.warning("recovery failed on %s: publications were missed", self.channel)

    @property
    def stream(self) -> StreamPosition | None:
        """Position of the last publication queued for the callback (recovery point)."""
        return self._stream

    # -- helpers ------------------------------------------------------------------------

    def _publication(self, raw: RawPublication, epoch: str) -> Publication:
        return Publication(
            channel=self.channel, data=raw.data, offset=raw.offset, epoch=epoch, info=raw.info
        )

    def _set_subscribed(self) -> None:
        self._state = SubscriptionState.SUBSCRIBED
        self._subscribed.set()

    def _merge(
        self, base: StreamPosition, candidates: Sequence[RawPublication], step: Step
    ) -> bool:
        """Hand over candidates after ``base`` in offset order; True when a gap remains."""
        last = base.offset
        gap = False
        for raw in sorted(candidates, key=lambda p: p.offset):
            if raw.offset <= last:
                step.duplicates += 1
                continue
            if raw.offset != last + 1:
                gap = True
                break
            step.deliver.append(self._publication(raw, base.epoch))
            last = raw.offset
        self._stream = StreamPosition(last, base.epoch)
        if gap:
            log.info("gap on %s after offset %d; recovering", self.channel, last)
        return gap
