"""The drain command Django's ``chatsdk_drain`` and Flask's ``chatsdk drain`` share.

As a worker, a stop (SIGTERM/SIGINT) lets the deliveries in flight finish before the report
and the exit status are made: a delivery that was on the wire when the stop came is counted
as sent, not as pending (seen before: ``sent 2, failed 0, pending 1`` and exit 75 from a
``chatsdk_drain`` worker SIGTERMed while its third delivery was on the wire, although the
server had it and the worker recorded it while closing). The worker's loop is the one
``chatsdk outbox drain --forever`` runs (:func:`chatsdk.cli._worker.drain_until_stopped`);
an outbox database that cannot be reached is told with exit 69, not a traceback.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatsdk import ChatClient, RetryPolicy
from chatsdk._outbox.outbox import Outbox
from chatsdk.cli._worker import drain_until_stopped
from chatsdk.integrations import _commands
from chatsdk.testing import FaultPlan, ReferenceServer, set_testing
from tests.helpers import wait_until

KEY = "test-key"


@pytest.fixture
def slow_server() -> Iterator[ReferenceServer]:
    # Every request takes 1 s: a delivery is on the wire for that long.
    with ReferenceServer(
        api_keys=(KEY,), faults=FaultPlan(delay=1.0, delay_range=(1.0, 1.0))
    ) as srv:
        yield srv


def _run_worker(
    path: str, client: Callable[[], ChatClient], stop: threading.Event
) -> tuple[threading.Thread, list[int], list[str], list[str]]:
    codes: list[int] = []
    out: list[str] = []
    err: list[str] = []

    def run() -> None:
        opened = lambda: Outbox(path)  # noqa: E731
        codes.append(
            _commands.drain(client, opened, once=False, out=out.append, err=err.append, stop=stop)
        )

    worker = threading.Thread(target=run)
    worker.start()
    return worker, codes, out, err


def _stop_while_on_the_wire(
    srv: ReferenceServer, path: str, entry_id: int, stop: threading.Event, worker: Any
) -> str:
    with Outbox(path) as watch:
        # The server has the request (it answers 1 s later). Claimed ("sending") was not
        # enough: a claim not yet started is given back at the stop (seen in CI).
        assert wait_until(lambda: srv.counters()["requests"] >= 1, 30)
        stop.set()  # the SIGTERM handler's part
        worker.join(60)
        assert not worker.is_alive()
        return watch.get(entry_id).status


def _stop_a_worker_mid_delivery(
    tmp_path: Path, srv: ReferenceServer, **options: Any
) -> tuple[str, list[int], list[str], list[str]]:
    """One entry queued, a worker started, stopped while that entry is on the wire.

    Returns the entry's status after the worker ended, its exit status, output and errors.
    """
    path = str(tmp_path / "outbox.db")
    with Outbox(path) as outbox:
        entry = outbox.enqueue("message", "c1", {"channelId": "c1", "text": "in flight"})
    stop = threading.Event()

    def client() -> ChatClient:
        return ChatClient(srv.url, KEY, outbox=path, retry=RetryPolicy(max_attempts=1), **options)

    worker, codes, out, err = _run_worker(path, client, stop)
    return _stop_while_on_the_wire(srv, path, entry.id, stop, worker), codes, out, err


def test_a_stopped_worker_reports_after_its_deliveries_in_flight_finish(
    tmp_path: Path, slow_server: ReferenceServer
) -> None:
    status, codes, out, err = _stop_a_worker_mid_delivery(tmp_path, slow_server)
    assert status == "sent"
    assert out == ["sent 1, failed 0, pending 0"], err  # before: pending 1
    assert codes == [0]
    assert [m["text"] for m in slow_server.all_messages()] == ["in flight"]


def test_a_delivery_longer_than_close_timeout_is_left_to_its_lease(
    tmp_path: Path, slow_server: ReferenceServer
) -> None:
    _, codes, out, err = _stop_a_worker_mid_delivery(tmp_path, slow_server, close_timeout=0.1)
    assert "deliveries still in flight after 0.1s" in err[0]
    assert out == ["sent 0, failed 0, pending 1"]
    assert codes == [75]  # pending: told, not reported as done


def test_a_worker_in_test_mode_delivers_inline_each_tick(tmp_path: Path) -> None:
    # Test mode starts no drainer thread: the worker's ticks deliver what is due.
    path = str(tmp_path / "outbox.db")
    stop = threading.Event()
    with ReferenceServer(api_keys=(KEY,)) as srv, set_testing(True):
        worker, codes, out, err = _run_worker(
            path, lambda: ChatClient(srv.url, KEY, outbox=path), stop
        )
        with Outbox(path) as outbox:
            outbox.enqueue("message", "c1", {"channelId": "c1", "text": "queued while running"})
        assert wait_until(lambda: len(srv.all_messages()) == 1, 30)
        stop.set()
        worker.join(60)
    assert codes == [0], err
    assert out == ["sent 1, failed 0, pending 0"]


@pytest.mark.parametrize("once", [True, False])
def test_an_unreachable_outbox_database_is_told_with_exit_69(once: bool) -> None:
    err: list[str] = []
    url = "postgresql://chatsdk@127.0.0.1:1/nowhere"  # nothing listens on port 1
    code = _commands.drain(
        lambda: pytest.fail("no client without an outbox to read"),
        lambda: Outbox(url),
        once=once,
        out=pytest.fail,
        err=err.append,
    )
    assert code == 69
    assert "cannot be reached" in err[0] and "stay queued" in err[0]


def test_sigterm_stops_a_worker_on_the_main_thread_and_restores_the_handler(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "outbox.db")
    previous = signal.getsignal(signal.SIGTERM)

    def terminate_once_handled() -> None:  # never before the worker's handler is in place
        assert wait_until(lambda: signal.getsignal(signal.SIGTERM) is not previous, 30)
        os.kill(os.getpid(), signal.SIGTERM)

    with ReferenceServer(api_keys=(KEY,)) as srv:
        with ChatClient(srv.url, KEY, outbox=path) as chat:
            killer = threading.Thread(target=terminate_once_handled)
            killer.start()
            assert drain_until_stopped(chat, 5.0)  # returned: the signal stopped it
            killer.join()
            assert chat._drainer is not None and chat._drainer.status == "stopped"
    assert signal.getsignal(signal.SIGTERM) is previous
