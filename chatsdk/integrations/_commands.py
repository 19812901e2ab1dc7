"""The outbox commands behind ``manage.py chatsdk_drain``/``chatsdk_outbox`` and ``flask chatsdk``.

Exit codes are the ``chatsdk`` command line's (:mod:`chatsdk.cli._exits`): 0 done, 65 dead
letters (entries failed for good), 69 the service (or the outbox's database) is
unavailable, 75 entries still pending, 77 the API key was refused, 78 no outbox
configured. Output goes to the writers the framework gives (Django's ``self.stdout``,
click's ``echo``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from chatsdk._client import ChatClient
from chatsdk._errors import OutboxError, OutboxUnavailableError
from chatsdk._outbox.outbox import STATUSES, Outbox, OutboxStats
from chatsdk._validation import check_seconds
from chatsdk.cli._exits import CONFIG, DATAERR, NOPERM, OK, TEMPFAIL, UNAVAILABLE, USAGE
from chatsdk.cli._worker import drain_until_stopped

__all__ = ["drain", "entries", "purge", "retry", "status"]

log = logging.getLogger(__name__)

Write = Callable[[str], None]
#: Opens the settings' outbox (no drainer), or None when no outbox is configured.
OpenOutbox = Callable[[], "Outbox | None"]
_SLICE = 0.1  # seconds between two looks at the outbox while draining --once


def _outbox_of(client: ChatClient, err: Write) -> Outbox | None:
    outbox = client.outbox
    if outbox is None:
        err("no outbox is configured: set the OUTBOX setting (a file, a URL or 'database')")
    return outbox


def _busy(client: ChatClient, outbox: Outbox, now: float) -> bool:
    """Whether a channel head is due now, or this process has a delivery in flight.

    While an open circuit pauses the drainer, due heads wait as in a backoff.
    """
    drainer = client._drainer
    paused = drainer is not None and drainer.paused_for > 0
    heads: dict[str, Any] = {}
    for entry in outbox.entries("sending") + outbox.entries("queued"):
        if entry.status == "sending" and entry.lease_owner == outbox.owner:
            return True
        head = heads.get(entry.operation.channel)
        if head is None or entry.id < head.id:
            heads[entry.operation.channel] = entry
    return not paused and any(
        h.status == "queued" and h.next_attempt_at <= now for h in heads.values()
    )


def drain(
    get_client: Callable[[], ChatClient],
    open_outbox: OpenOutbox,
    *,
    once: bool,
    timeout: float | None = None,
    out: Write,
    err: Write,
    stop: threading.Event | None = None,
) -> int:
    """Deliver the outbox; returns the exit status.

    With ``once``: deliver what is due now, wait for this process's deliveries in flight,
    then return 0 when nothing is pending, 75 when entries wait in backoff (or ``timeout``
    passed), 65 when entries failed for good during the run, 77 when the key was refused.
    Without: run as a worker until SIGTERM/SIGINT (or ``stop`` is set); then the deliveries
    in flight finish (for at most the client's ``close_timeout``), the claimed entries not
    started are given back for any drainer, and it returns as ``once`` does: the report and
    the status are made after the deliveries in flight are recorded. A database outage
    while the worker runs is waited out (the drainer reconnects); 69 when the outbox's
    database cannot be reached at the start, during ``once``, or for the report.
    A ``timeout`` that is NaN or negative is a usage error (2), before anything is opened.
    """
    try:
        timeout = check_seconds("--timeout", timeout, none=True)
    except (TypeError, ValueError) as exc:
        err(str(exc))
        return USAGE
    try:
        return _drain(
            get_client, open_outbox, once=once, timeout=timeout, out=out, err=err, stop=stop
        )
    except OutboxUnavailableError as exc:  # at the start, or at the report: nothing is lost
        err(f"the outbox's database cannot be reached ({exc}); its entries stay queued")
        return UNAVAILABLE


def _drain(
    get_client: Callable[[], ChatClient],
    open_outbox: OpenOutbox,
    *,
    once: bool,
    timeout: float | None,
    out: Write,
    err: Write,
    stop: threading.Event | None,
) -> int:
    with _opened(open_outbox, err) as snapshot:  # before the client's drainer starts sending
        if snapshot is None:
            return CONFIG
        before = snapshot.stats()
    client = get_client()
    outbox = _outbox_of(client, err)
    if outbox is None:
        return CONFIG
    if once:
        deadline = None if timeout is None else time.monotonic() + timeout
        while client.outbox_auth_error is None:
            client.flush(_SLICE)  # waits a slice (test mode: delivers inline)
            if not _busy(client, outbox, time.time()):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        return _report(before, outbox.stats(), client, out, err)
    try:
        log.info("chatsdk drain: delivering %s until SIGTERM", outbox.path)
        if not drain_until_stopped(client, client.close_timeout, stop=stop):
            err(f"deliveries still in flight after {client.close_timeout:g}s; their leases run out")
        return _report(before, outbox.stats(), client, out, err)
    finally:
        client.close()


def _report(
    before: OutboxStats, after: OutboxStats, client: ChatClient, out: Write, err: Write
) -> int:
    sent = max(0, after.sent - before.sent)
    dead = max(0, after.failed + after.expired - before.failed - before.expired)
    out(f"sent {sent}, failed {dead}, pending {after.pending}")
    refused = client.outbox_auth_error
    if refused is not None:
        err(f"the API key was refused ({refused}); {after.pending} entries stay queued")
        return NOPERM
    if dead:
        err(f"{dead} entries failed for good (dead letters): list them with --status failed")
        return DATAERR
    if after.pending:
        err(f"{after.pending} entries still pending (in backoff or in flight elsewhere)")
        return TEMPFAIL
    return OK


@contextmanager
def _opened(open_outbox: OpenOutbox, err: Write) -> Iterator[Outbox | None]:
    """The settings' outbox, opened without a drainer (inspecting it sends nothing)."""
    outbox = open_outbox()
    if outbox is None:
        err("no outbox is configured: set the OUTBOX setting (a file, a URL or 'database')")
        yield None
        return
    with outbox:
        yield outbox


def _counts(stats: OutboxStats) -> dict[str, Any]:
    counts: dict[str, Any] = {s: getattr(stats, s) for s in STATUSES}
    counts["oldest_pending_age"] = stats.oldest_pending_age
    return counts


def status(
    open_outbox: OpenOutbox,
    *,
    max_age: float | None = None,
    as_json: bool = False,
    out: Write,
    err: Write,
) -> int:
    """Counts per status; 65 on dead letters, 75 when the oldest pending is past ``max_age``."""
    try:
        check_seconds("--max-age", max_age, none=True)
    except (TypeError, ValueError) as exc:
        err(str(exc))
        return USAGE
    with _opened(open_outbox, err) as outbox:
        if outbox is None:
            return CONFIG
        stats = outbox.stats()
    if as_json:
        out(json.dumps(_counts(stats)))
    else:
        for name in STATUSES:
            out(f"{name:8} {getattr(stats, name)}")
        age = stats.oldest_pending_age
        out(f"oldest pending: {'-' if age is None else f'{age:.1f}s'}")
    dead = stats.failed + stats.expired
    if dead:
        err(f"{dead} dead-lettered entries ({stats.failed} failed, {stats.expired} expired)")
        return DATAERR
    age = stats.oldest_pending_age
    if max_age is not None and age is not None and age > max_age:
        err(f"the oldest pending entry is {age:.0f}s old, more than {max_age:g}s")
        return TEMPFAIL
    return OK


def entries(
    open_outbox: OpenOutbox,
    *,
    status_: str | None,
    limit: int | None,
    out: Write,
    err: Write,
) -> int:
    """List entries, oldest first (never their bodies)."""
    with _opened(open_outbox, err) as outbox:
        if outbox is None:
            return CONFIG
        listed = outbox.entries(status_, limit=limit)
    out(f"{'ID':>6}  {'STATUS':8} {'TRIES':>5}  {'KIND':8} {'CHANNEL':20} KEY / LAST ERROR")
    for entry in listed:
        flag = " (possibly delivered)" if entry.possibly_delivered else ""
        error = f"  {entry.last_error}{flag}" if entry.last_error else ""
        out(
            f"{entry.id:>6}  {entry.status:8} {entry.attempts:>5}  {entry.operation.kind:8} "
            f"{entry.operation.channel[:20]:20} {entry.idempotency_key}{error}"
        )
    return OK


def retry(open_outbox: OpenOutbox, entry_id: int, *, out: Write, err: Write) -> int:
    """Re-queue a failed or expired entry; 65 when it does not exist or cannot be."""
    with _opened(open_outbox, err) as outbox:
        if outbox is None:
            return CONFIG
        try:
            entry = outbox.retry(entry_id)
        except OutboxError as exc:
            err(str(exc))
            return DATAERR
    out(f"entry {entry.id} queued again (key {entry.idempotency_key})")
    return OK


def purge(open_outbox: OpenOutbox, statuses: tuple[str, ...], *, out: Write, err: Write) -> int:
    """Delete finished entries of the given statuses."""
    with _opened(open_outbox, err) as outbox:
        if outbox is None:
            return CONFIG
        out(f"purged {outbox.purge(statuses)} entries")
    return OK
