"""Issue 13's fleet test: drainers on two hosts over one PostgreSQL outbox, hosts failing.

Two "hosts" are network namespaces joined to this one by veth pairs (tests/netns.py); each
runs two ``chatsdk outbox drain --forever`` processes against a PostgreSQL server and the
reference chat server that listen in this namespace. 2,000 messages on 40 channels are
queued; mid-drain host B's link is cut for longer than the lease (host A takes its claims
over), then restored (B's stale claims are fenced off), then host A's processes are killed
with SIGKILL (B takes A's claims over). Every message must be at the server exactly once,
in order per channel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from chatsdk._outbox.outbox import Outbox
from chatsdk.testing import FaultPlan, ReferenceServer
from tests import netns, postgres
from tests.helpers import require, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEY = "fleet-key"
CHANNELS = 40
PER_CHANNEL = 50
LEASE = 3.0


@pytest.fixture(scope="module")
def fleet_hosts() -> Iterator[list[netns.Host]]:
    ok, why = netns.available()
    require(ok, f"no network namespaces for the fleet test: {why}")
    with netns.hosts(2) as made:
        yield made


@pytest.fixture(scope="module")
def fleet_pg() -> Iterator[postgres.PostgresCluster]:
    # A server of its own, listening where the namespaces can reach it.
    require(
        postgres.find_binary("initdb") is not None,
        "PostgreSQL server binaries (initdb, pg_ctl) are not installed",
    )
    with postgres.cluster(listen="*") as pg:
        yield pg


def _drainer(
    host: netns.Host, server: ReferenceServer, pg: postgres.PostgresCluster
) -> subprocess.Popen[bytes]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {
        **os.environ,
        "PYTHONPATH": root,
        "CHATSDK_URL": f"http://{host.gateway}:{server.port}",
        "CHATSDK_API_KEY": KEY,
        "CHATSDK_OUTBOX": pg.url(host.gateway),
    }
    argv = [sys.executable, "-m", "chatsdk", "outbox", "drain", "--forever", "--lease", str(LEASE)]
    return subprocess.Popen(
        host.command(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_fleet_kill_9_and_partition_every_message_once_in_order(
    fleet_hosts: list[netns.Host], fleet_pg: postgres.PostgresCluster
) -> None:
    host_a, host_b = fleet_hosts
    # Latency on every request (so the hosts fail mid-drain), and responses lost after the
    # message was stored (so resends under the same key happen all along).
    faults = FaultPlan(delay=1.0, delay_range=(0.04, 0.12), drop_after=0.02)
    with ReferenceServer(host="0.0.0.0", api_keys=(KEY,), faults=faults) as server:
        with Outbox(fleet_pg.url()) as outbox:
            for i in range(PER_CHANNEL):
                for c in range(CHANNELS):
                    outbox.enqueue("message", f"ch{c}", {"channelId": f"ch{c}", "text": f"{c}-{i}"})
        procs_a = [_drainer(host_a, server, fleet_pg) for _ in range(2)]
        procs_b = [_drainer(host_b, server, fleet_pg) for _ in range(2)]
        total = CHANNELS * PER_CHANNEL
        try:
            delivered = lambda: len(server.all_messages())  # noqa: E731
            assert wait_until(lambda: delivered() >= 300, 120), delivered()
            host_b.cut()  # B's claims run out; A takes them over
            cut_at = delivered()
            time.sleep(LEASE * 2.5)
            assert delivered() > cut_at, "host A did not go on while B was cut off"
            host_b.restore()
            for proc in procs_a:  # host A dies mid-drain, holding claims
                proc.send_signal(signal.SIGKILL)
            killed_at = delivered()
            assert killed_at < total, "the drain was over before host A was killed"
            assert wait_until(lambda: delivered() >= total, 180), delivered()
            time.sleep(LEASE)  # anything resent late would show up now
            for proc in procs_b:
                proc.send_signal(signal.SIGTERM)
            for proc in procs_b:
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err.decode()
        finally:
            host_b.restore()
            _stop(procs_a + procs_b)
        messages = server.all_messages()
        texts = [m["text"] for m in messages]
        assert len(texts) == total and len(set(texts)) == total  # each exactly once
        for c in range(CHANNELS):
            got = [int(m["text"].split("-")[1]) for m in server.messages(f"ch{c}")]
            assert got == list(range(PER_CHANNEL)), f"ch{c} out of order"
        with Outbox(fleet_pg.url()) as outbox:
            stats = outbox.stats()
        assert stats.pending == 0 and stats.dead_letters == 0, stats
