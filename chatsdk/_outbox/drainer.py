"""The outbox's background delivery loop: one daemon thread plus a small worker pool.

The loop claims due channel heads from the :class:`~chatsdk._outbox.outbox.Outbox` (so channels
drain in parallel and each channel in order) and hands them to worker threads, which call
``deliver(operation)`` and record the outcome:

- a response: ``sent``;
- a transient error (the retry module's classification; also a 2xx whose body could not be
  read, resent under the same key so the server replays its answer): ``queued`` again after
  a backoff, at least the server's ``Retry-After`` capped by the policy's
  ``max_retry_after``;
- :class:`~chatsdk.CircuitBreakerOpenError`: the claim is given back untouched and this
  process's drainer pauses until the breaker's ``retry_after`` (nothing is written to the
  shared file, so other processes keep draining);
- 400, 404, 413, 422 and other permanent errors: ``failed`` (dead letter); the channel moves on;
- 401, 403: the claim is given back and draining stops with an ERROR log until
  :meth:`Drainer.resume` (the key is at fault, not the message).

A worker keeps to its channel: the transaction that records an outcome (``sent`` or
``failed``) also claims the channel's next entry when it is due, so a busy channel costs one
commit per message and no hand-off between threads. After :data:`STREAK` entries in a row
the worker claims the most overdue head of any channel instead (in the same transaction),
so a channel that keeps filling up does not hold a worker while other channels wait.

The loop wakes at once on this process's events (:meth:`Drainer.notify`: a new entry, a
breaker closing, a realtime reconnect) and otherwise sleeps until the next due entry, looking
at the file at least every ``poll_interval`` seconds for work queued by other processes. It
also renews the leases of the deliveries in flight, every third of ``lease_seconds``, so a
slow delivery is never taken over by another process while it runs.

No exception ends a drainer thread: one that escapes a step is logged with its traceback and
the loop goes on; a row that cannot be decoded is a dead letter with the reason (see
:meth:`Outbox.claim`). :attr:`Drainer.status` (and ``Outbox.stats().drainer``) says when the
drainer is not delivering, and why.

In a forked child the parent's threads do not exist: the drainer remembers the pid it
started in and starts its own threads on first use (a new entry, a flush), as sentry-sdk's
worker does.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from chatsdk import _fork, _instrument, _testmode
from chatsdk._errors import (
    ChatSDKError,
    CircuitBreakerOpenError,
    ForbiddenError,
    OutboxError,
    UnauthorizedError,
)
from chatsdk._http.retry import (
    DEFAULT_RETRY_POLICY,
    RetryPolicy,
    backoff_for,
    classify,
    retry_after_of,
)
from chatsdk._instrument import Emitter, OutboxDeadLettered, OutboxDelivered, key_prefix
from chatsdk._outbox.models import FlushResult, Operation, OutboxEntry
from chatsdk._outbox.outbox import Follow, Outbox
from chatsdk._resilience.breaker import CircuitState

__all__ = ["STREAK", "Drainer", "is_permanent"]

log = logging.getLogger(__name__)

#: Entries a worker delivers from one channel in a row before it takes the most overdue head.
STREAK = 32
_SWEEP_EVERY = 60.0  # seconds between expiry sweeps (and pruning of old sent entries)
_MIN_PAUSE = 0.25  # pause when the breaker is half-open with its probe slots taken

Deliver = Callable[[Operation], dict[str, Any]]


class _Breaker(Protocol):
    def add_listener(self, callback: Callable[[Any, CircuitState, CircuitState], None]) -> None:
        """Register a state-change listener."""


def is_permanent(exc: BaseException, policy: RetryPolicy = DEFAULT_RETRY_POLICY) -> bool:
    """True when resending ``exc``'s operation cannot succeed (the entry is dead-lettered).

    The classification table decides (:func:`chatsdk._http.retry.classify`): a 400, 404,
    413 or 422 condemns the message; a 2xx with an unreadable body is transient (resent under
    the same key, the server replays); an exception that is not chatsdk's is a defect that
    resending will not cure.
    """
    return classify(exc, policy).permanent


class Drainer:
    """Delivers an outbox's entries in the background.

    Args:
        outbox: the outbox to drain.
        deliver: sends one operation and returns the response JSON; raises chatsdk errors.
            It holds the base URL and API key, the outbox never does.
        breaker_for: returns the circuit breaker guarding an operation's host (or None), so
            the drainer resumes the moment that breaker closes.
        workers: deliveries in flight at once (each on its own channel).
        clock: wall clock (default the outbox's): due times in the store are wall-clock.
        poll_interval: the longest sleep between looks at the store (other processes' work);
            default the outbox's :attr:`~chatsdk.Outbox.poll_interval` (1 s for SQLite, a
            slow safety poll for PostgreSQL, whose ``NOTIFY`` wakes the drainer).
        retry: the policy for classification and backoff between deliveries of an entry.
        rand: randomness for the backoff's jitter (inject for tests).
        events: receives ``outbox_delivered`` and ``outbox_dead_lettered`` events (a
            client's emitter; default: the process-wide hooks only).
    """

    def __init__(
        self,
        outbox: Outbox,
        deliver: Deliver,
        *,
        breaker_for: Callable[[Operation], _Breaker | None] | None = None,
        workers: int = 4,
        clock: Callable[[], float] | None = None,
        poll_interval: float | None = None,
        retry: RetryPolicy | None = None,
        rand: Callable[[], float] = random.random,
        events: Emitter | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if poll_interval is None:
            poll_interval = outbox.poll_interval
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        self.outbox = outbox
        self._deliver = deliver
        self._breaker_for = breaker_for
        self._size = workers
        self._clock = clock if clock is not None else outbox._clock
        self._poll = float(poll_interval)
        self._retry = retry or DEFAULT_RETRY_POLICY
        self._rand = rand
        self._events = events if events is not None else Emitter()
        self._auth_error: BaseException | None = None
        self._stopping = False
        self._started = False  # ever started (in this process or a parent)
        self._running_here = False  # threads started in this process
        self._died: str | None = None
        self._renew_every = outbox.lease_seconds / 3
        self._reset()
        outbox.add_listener(self.notify)
        outbox.on_remote_work(self.notify)
        outbox.attach(self)
        _fork.register(self, order=_fork.ORDER_CLIENT, after_child=Drainer._after_fork)

    def _reset(self) -> None:
        """Fresh threads and locks: at construction, and in a forked child."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._jobs: queue.SimpleQueue[OutboxEntry[Any] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._inflight = 0
        self._paused_until = 0.0
        self._expedite = False
        self._next_sweep = 0.0
        self._next_renew = 0.0
        self._watched: set[int] = set()  # breakers listened to (a child has new ones)

    def _after_fork(self) -> None:
        # The parent's threads do not exist here; a restart happens on the next notify().
        self._reset()
        self._running_here = False
        self._died = None

    # -- public API ------------------------------------------------------------------------

    @property
    def auth_error(self) -> BaseException | None:
        """The 401/403 that stopped draining, until :meth:`resume`."""
        return self._auth_error

    @property
    def status(self) -> str:
        """``"running"``, or why this process's drainer is not delivering.

        ``"stopped"`` after :meth:`stop`; ``"stopped: ..."`` after a 401/403;
        ``"paused: ..."`` while an open circuit pauses it; ``"dead: ..."`` when one of its
        threads ended (which no exception does; only the interpreter's own exit).
        A drainer not started yet in a forked child counts as running: it starts on first use.
        """
        if self._stopping:
            return "stopped"
        if self._auth_error is not None:
            return f"stopped: the server refused the API key ({self._auth_error})"
        if self._died is not None and self._pid == os.getpid():
            return f"dead: {self._died}"
        paused = self.paused_for
        if paused > 0:
            return f"paused: circuit open, {paused:.1f}s left"
        return "running"

    @property
    def paused_for(self) -> float:
        """Seconds this process's drainer stays paused by an open circuit (0.0 if not)."""
        return max(0.0, self._paused_until - time.monotonic())

    def start(self) -> None:
        """Start the loop and the workers (daemon threads); idempotent."""
        with self._lock:
            if self._running_here or self._stopping:
                return
            self._started = True
            if _testmode.inline_flush() is not None:
                # Test mode: flush() delivers in the caller's thread; the threads start on
                # the first notify() after test mode ends.
                return
            self._running_here = True
            name = f"chatsdk-outbox-{os.path.basename(self.outbox.path)}"
            threads = [
                threading.Thread(target=self._guard, args=(self._loop,), name=name, daemon=True)
            ]
            threads += [
                threading.Thread(
                    target=self._guard, args=(self._work,), name=f"{name}-worker-{i}", daemon=True
                )
                for i in range(self._size)
            ]
            self._threads = threads
        for thread in threads:
            thread.start()

    def notify(self, *, expedite: bool = False) -> None:
        """Wake the loop now (a new entry, a reconnect); ``expedite`` cuts transient backoffs.

        In a forked child this starts the child's own drainer.
        """
        if self._pid != os.getpid():  # forked without the at-fork hook (it always runs on POSIX)
            self._after_fork()
        if self._started and not self._running_here:
            self.start()
        if expedite:
            self._expedite = True
        self._wake.set()

    def resume(self) -> None:
        """Drain again after a 401/403 stopped it (e.g. the key was fixed server-side)."""
        self._auth_error = None
        self.notify()

    def flush(self, timeout: float | None = None, *, own: bool = False) -> bool:
        """Block until no entry is ``queued`` or ``sending`` in the file, by any process.

        In test mode (``chatsdk.testing.set_testing``) a drainer without running threads
        delivers in the calling thread instead, without waiting.

        Args:
            timeout: seconds to wait at most (None: for ever).
            own: wait only for the entries this process queued (or adopted).

        Returns:
            True when the outbox is drained; False when ``timeout`` passed first, when
            draining is stopped (a 401/403, or :meth:`stop`) with entries left, or when
            entries expired undelivered (see :meth:`flush_result`).
        """
        return bool(self.flush_result(timeout, own=own))

    def flush_result(self, timeout: float | None = None, *, own: bool = False) -> FlushResult:
        """:meth:`flush`, saying what is left (``pending``) and what expired undelivered
        (``expired``: any process's entries, since this process's previous flush)."""
        inline = _testmode.inline_flush()
        if inline is not None and not self._running_here:
            inline(self, timeout)
            return self.outbox.drained(0, own=own)
        self.notify()
        return self.outbox.drained(timeout, give_up=self._cannot_progress, own=own)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the deliveries in flight; True when every thread ended in time."""
        with self._lock:
            self._stopping = True
            threads = list(self._threads)
        self._wake.set()
        self.outbox.signal()  # a flush() waiting in another thread gives up now
        self._give_back()
        for _ in range(self._size):
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _give_back(self) -> None:
        """Release the claimed entries no worker has started: any drainer may take them."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            try:
                self.outbox.release(job)
            except OutboxError as exc:  # its lease runs out instead
                log.warning("outbox entry %d: not given back: %s", job.id, exc)
                self.outbox.forget(job)
            with self._lock:
                self._inflight -= 1

    # -- the loop --------------------------------------------------------------------------

    def _cannot_progress(self) -> bool:
        return self._stopping or self._auth_error is not None

    def _guard(self, target: Callable[[], None]) -> None:
        """Run a thread's body; record why it ended if it was not asked to."""
        try:
            with self.outbox.drainer_thread():
                target()
        finally:
            if not self._stopping and not self.outbox.closed:
                name = threading.current_thread().name
                self._died = f"thread {name} ended unexpectedly"
                log.error("outbox drainer: %s; entries stay queued", self._died)

    def _loop(self) -> None:
        failures = 0  # in a row: the pause before the next look grows while the store is down
        while True:
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._renew()
                timeout = self._step()
                failures = 0
            except OutboxError as exc:
                if self.outbox.closed:
                    return
                failures += 1
                timeout = min(self._poll, 0.1 * 2 ** min(failures, 6))
                log.warning("outbox drainer: %s; retrying in %.1fs", exc, timeout)
            except Exception:  # a bug must not end draining: log it, go on
                log.exception("outbox drainer: unexpected error; retrying in %.1fs", self._poll)
                timeout = self._poll
            until_renew = max(0.0, self._next_renew - time.monotonic())
            self._wake.wait(until_renew if timeout is None else min(timeout, until_renew))

    def _renew(self) -> None:
        now = time.monotonic()
        if now >= self._next_renew:
            self._next_renew = now + self._renew_every
            self.outbox.renew_leases()

    def _step(self) -> float | None:
        """Claim and dispatch what is due; return how long to sleep (None: until woken)."""
        if self._auth_error is not None:
            return None
        if self._expedite:
            self._expedite = False
            self.outbox.expedite()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            self.outbox.expire()
        if self._paused_until > now:
            return self._paused_until - now
        with self._lock:
            free = self._size - self._inflight
        if free <= 0:
            return self._poll
        claimed, next_due = self.outbox.claim(free)
        with self._lock:
            self._inflight += len(claimed)
        for entry in claimed:
            self._jobs.put(entry)
        if next_due is None:
            return self._poll
        return min(self._poll, max(0.0, next_due - self._clock()))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            entry: OutboxEntry[Any] | None = job
            streak = 0
            try:
                while entry is not None:
                    streak += 1
                    follow: Follow = "channel" if streak < STREAK else "any"
                    if self._cannot_progress() or self.paused_for > 0:
                        follow = None  # hand nothing new to a drainer that should not send
                    elif follow == "any":
                        streak = 0
                    entry = self._process_one(entry, follow)
            finally:
                with self._lock:
                    self._inflight -= 1
                self._wake.set()

    def _process_one(self, entry: OutboxEntry[Any], follow: Follow) -> OutboxEntry[Any] | None:
        try:
            return self.process(entry, follow=follow)
        except OutboxError as exc:
            # The outcome could not be written; the lease runs out and the entry is resent
            # (by this process or another) under the same key, so the server replays rather
            # than duplicates.
            log.warning(
                "outbox entry %d: outcome not recorded: %s", entry.id, exc, extra=_fields(entry)
            )
        except Exception:  # a bug must not end the worker: the lease runs out, as above
            log.exception("outbox entry %d: unexpected error while processing it", entry.id)
        self.outbox.forget(entry)
        return None

    def process(self, entry: OutboxEntry[Any], *, follow: Follow = None) -> OutboxEntry[Any] | None:
        """Deliver one claimed entry and record the outcome in the outbox.

        With ``follow``, a ``sent`` or ``failed`` outcome's transaction also claims the next
        entry (see :data:`chatsdk._outbox.outbox.Follow`), which is returned for this worker to
        deliver next; None when nothing was claimed.
        """
        op = entry.operation
        try:
            response = self._send(entry)
        except CircuitBreakerOpenError as exc:
            self.outbox.release(entry)
            self._pause(exc.retry_after, op)
        except (UnauthorizedError, ForbiddenError) as exc:
            self.outbox.release(entry)
            self._auth_error = exc
            log.error(
                "outbox draining stopped: the server refused the API key (%s); entries stay "
                "queued until resume() or a client with a working key drains them",
                exc,
                extra=_fields(entry),
            )
            self.outbox.signal()
        except Exception as exc:
            if is_permanent(exc, self._retry):
                if isinstance(exc, ChatSDKError):
                    log.warning(
                        "outbox entry %d failed for good: %s", entry.id, exc, extra=_fields(entry)
                    )
                else:
                    log.error(
                        "outbox entry %d failed for good: delivering it raised %r",
                        entry.id,
                        exc,
                        exc_info=exc,
                        extra=_fields(entry),
                    )
                claimed = self.outbox.fail(entry, exc, follow=follow)
                self._dead_lettered(entry, exc)
                return claimed
            # The server's wait is honoured up to the policy's cap, like every other wait:
            # a Retry-After of 10**8 s must not park the entry past its max_age.
            retry_after = retry_after_of(exc)
            if retry_after is not None:
                retry_after = min(retry_after, self._retry.max_retry_after)
            index = min(entry.attempts - 1, 64)
            delay = backoff_for(exc, index, self._retry, self._rand, retry_after)
            log.info(
                "outbox entry %d: %s; next attempt in %.2fs",
                entry.id,
                exc,
                delay,
                extra=_fields(entry),
            )
            if self.outbox.reschedule(entry, exc, delay, retry_after=retry_after):
                self._dead_lettered(entry, exc)
        else:
            claimed = self.outbox.ack(entry, response, follow=follow)
            if self._events.active:
                age = max(0.0, self._clock() - entry.created_at)
                self._events.emit(
                    OutboxDelivered(
                        entry_id=entry.id, attempts=entry.attempts, age=age, path=self.outbox.path
                    )
                )
            return claimed
        return None

    def _send(self, entry: OutboxEntry[Any]) -> dict[str, Any]:
        """One delivery; a span linked to the enqueuing one when tracing is on."""
        tracer = _instrument.tracer
        if tracer is None:
            return self._deliver(entry.operation)
        with tracer.delivery(entry.id, entry.operation.kind, entry.trace_context):
            return self._deliver(entry.operation)

    def _dead_lettered(self, entry: OutboxEntry[Any], exc: BaseException) -> None:
        if self._events.active:
            self._events.emit(
                OutboxDeadLettered(
                    entry_id=entry.id,
                    attempts=entry.attempts,
                    reason=type(exc).__name__,
                    path=self.outbox.path,
                )
            )

    def _pause(self, retry_after: float, op: Operation) -> None:
        wait = retry_after if retry_after > 0 else _MIN_PAUSE
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + wait)
        log.info("outbox drainer paused %.2fs: circuit open", wait, extra={"channel": op.channel})
        breaker = self._breaker_for(op) if self._breaker_for is not None else None
        if breaker is not None and id(breaker) not in self._watched:
            self._watched.add(id(breaker))
            breaker.add_listener(self._on_breaker)

    def _on_breaker(self, _breaker: object, _old: CircuitState, new: CircuitState) -> None:
        if new is CircuitState.OPEN:
            return
        # HALF_OPEN lets a probe through now; CLOSED means the host is back: entries backing
        # off after transport errors are due at once.
        with self._lock:
            self._paused_until = 0.0
        self.notify(expedite=new is CircuitState.CLOSED)


def _fields(entry: OutboxEntry[Any]) -> dict[str, object]:
    """The ``extra`` fields of an entry's log records (never the key itself, nor the body)."""
    return {
        "entry_id": entry.id,
        "attempt": entry.attempts,
        "channel": entry.operation.channel,
        "key_prefix": key_prefix(entry.idempotency_key),
    }
