"""Fault injection of the reference server and the chaos proxy, seen with plain requests."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import attrs
import pytest
import requests

from chatsdk.testing import PROFILES, ChaosProxy, FaultPlan, ReferenceServer, run_forever
from chatsdk.testing._faults import FaultInjector
from tests.helpers import wait_until

KEY = {"X-API-Key": "test-key"}
BODY = {"channelId": "faults", "text": "hello"}


@pytest.fixture
def srv() -> Iterator[ReferenceServer]:
    with ReferenceServer() as s:
        yield s


def post(url: str, key: str | None = None, timeout: float = 5.0) -> requests.Response:
    headers = dict(KEY)
    if key:
        headers["Idempotency-Key"] = key
    return requests.post(f"{url}/api/messages", json=BODY, headers=headers, timeout=timeout)


# -- the plan ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_error": 1.5},
        {"rate_limit": -0.1},
        {"server_error": 0.6, "drop_after": 0.6},
        {"delay_range": (0.5, 0.1)},
        {"delay_range": (-1.0, 1.0)},
        {"stall_seconds": 0},
        {"retry_after": -1},
        {"retry_after": 1.5},
        {"retry_after_form": "minutes"},
        {"seed": "x"},
    ],
)
def test_plan_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**kwargs)  # type: ignore[arg-type]


def test_plan_is_frozen_and_profiles_are_named() -> None:
    plan = FaultPlan()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan.server_error = 0.5  # type: ignore[misc]
    assert set(PROFILES) == {"none", "flaky", "terrible"}
    assert FaultPlan.profile("none") == FaultPlan()
    with pytest.raises(ValueError, match="unknown fault profile"):
        FaultPlan.profile("awful")
    terrible = PROFILES["terrible"]
    assert terrible.failure_rate >= 0.30
    assert terrible.drop_after == 0.05


def test_terrible_fails_at_least_30_percent_of_requests() -> None:
    injector = FaultInjector(attrs.evolve(PROFILES["terrible"], seed=11))
    kinds = Counter(injector.decide().kind for _ in range(20_000))
    failed = sum(n for kind, n in kinds.items() if kind is not None) / 20_000
    assert 0.29 <= failed <= 0.32
    assert 0.04 <= kinds["drop_after"] / 20_000 <= 0.06


def test_seeded_plans_decide_the_same(srv: ReferenceServer) -> None:
    plan = FaultPlan(server_error=0.3, rate_limit=0.3, seed=99)
    runs = []
    for _ in range(2):
        srv.faults = plan
        runs.append([post(srv.url).status_code for _ in range(30)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 2


def test_faults_settable_by_profile_name(srv: ReferenceServer) -> None:
    srv.faults = "flaky"
    assert srv.faults == PROFILES["flaky"]
    srv.faults = None
    assert srv.faults == FaultPlan()
    with pytest.raises(ValueError):
        srv.faults = "nope"


# -- each fault kind -----------------------------------------------------------------------


def test_server_error_and_rate_limit_are_counted(srv: ReferenceServer) -> None:
    srv.faults = FaultPlan(server_error=1.0)
    assert post(srv.url).status_code in (500, 502, 503, 504)
    srv.faults = FaultPlan(rate_limit=1.0)
    response = post(srv.url)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    counters = srv.counters()
    assert counters["fault.server_error"] == 1
    assert counters["fault.rate_limit"] == 1
    assert srv.messages("faults") == []


def test_health_is_never_faulted(srv: ReferenceServer) -> None:
    srv.faults = FaultPlan(server_error=1.0)
    assert requests.get(f"{srv.url}/api/health", timeout=5).status_code == 200
    assert srv.counters()["fault.server_error"] == 0


def test_drop_before_processes_nothing(srv: ReferenceServer) -> None:
    srv.faults = FaultPlan(drop_before=1.0)
    with pytest.raises(requests.ConnectionError):
        post(srv.url, key="k1")
    assert srv.messages("faults") == []
    assert srv.counters()["fault.drop_before"] == 1
    srv.faults = None
    first = post(srv.url, key="k1")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers


def test_drop_after_commits_then_resets(srv: ReferenceServer) -> None:
    srv.faults = FaultPlan(drop_after=1.0)
    with pytest.raises(requests.ConnectionError):
        post(srv.url, key="k2")
    assert len(srv.messages("faults")) == 1
    assert srv.counters()["fault.drop_after"] == 1
    srv.faults = None
    retry = post(srv.url, key="k2")
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == srv.messages("faults")[0]["id"]
    # Without a key, the retry of a lost response is a duplicate: what naive clients get.
    srv.faults = FaultPlan(drop_after=1.0)
    with pytest.raises(requests.ConnectionError):
        post(srv.url)
    srv.faults = None
    post(srv.url)
    assert len(srv.messages("faults")) == 3


def test_drop_after_is_a_tcp_reset(srv: ReferenceServer) -> None:
    srv.faults = FaultPlan(drop_after=1.0)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        request = (
            "GET /api/channels/faults/messages HTTP/1.1\r\nHost: x\r\nX-API-Key: test-key\r\n\r\n"
        )
        sock.sendall(request.encode())
        with pytest.raises(ConnectionResetError):
            sock.recv(65536)


def test_delay_adds_latency(srv: ReferenceServer) -> None:
    srv.faults = FaultPlan(delay=1.0, delay_range=(0.2, 0.2))
    started = time.monotonic()
    assert post(srv.url).status_code == 201
    assert time.monotonic() - started >= 0.2
    assert srv.counters()["fault.delay"] == 1


def test_stall_outlasts_the_read_timeout_and_processes_nothing(srv: ReferenceServer) -> None:
    srv.faults = FaultPlan(stall=1.0, stall_seconds=0.6)
    with pytest.raises(requests.ReadTimeout):
        post(srv.url, timeout=0.2)
    assert srv.counters()["fault.stall"] == 1
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as sock:
        sock.sendall(b"GET /api/channels/faults/messages HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            sock.recv(65536)
        assert time.monotonic() - started >= 0.4
    assert srv.messages("faults") == []


# -- outage, restart, concurrency ----------------------------------------------------------


def test_outage_refuses_then_comes_back(srv: ReferenceServer) -> None:
    assert post(srv.url, key="before").status_code == 201
    with requests.Session() as session:
        assert session.get(f"{srv.url}/api/health", timeout=5).status_code == 200
        back = srv.outage(0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
        with pytest.raises(requests.ConnectionError):
            session.get(f"{srv.url}/api/health", timeout=1)
        assert back.wait(5)
        assert session.get(f"{srv.url}/api/health", timeout=5).status_code == 200
    assert srv.counters()["fault.outage"] == 1
    assert post(srv.url, key="before").headers["Idempotent-Replayed"] == "true"


def test_stop_and_start_on_the_same_port_keeps_rest_data(srv: ReferenceServer) -> None:
    port = srv.port
    created = post(srv.url, key="persist").json()
    srv.stop()
    with pytest.raises(requests.ConnectionError):
        post(srv.url, timeout=1)
    srv.start()
    assert srv.port == port
    assert srv.messages("faults") == [created]
    replay = post(srv.url, key="persist")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == created


def test_stop_cuts_a_request_in_progress_and_frees_its_key() -> None:
    with ReferenceServer(faults=FaultPlan(delay=1.0, delay_range=(5.0, 5.0))) as srv:
        errors: list[Exception] = []

        def send() -> None:
            try:
                post(srv.url, key="cut")
            except requests.RequestException as exc:
                errors.append(exc)

        thread = threading.Thread(target=send)
        thread.start()
        assert wait_until(lambda: srv.counters().get("idempotency_reserved", 0) >= 1, 5)
        srv.stop()
        thread.join(timeout=5)
        assert errors
        srv.faults = None
        srv.start()
        assert post(srv.url, key="cut").status_code == 201


def test_stop_cancels_a_stalled_request_at_once_and_leaves_no_task() -> None:
    srv = ReferenceServer(faults=FaultPlan(stall=1.0, stall_seconds=30.0))
    srv.start()
    errors: list[Exception] = []

    def send() -> None:
        try:
            post(srv.url, key="stalled", timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    assert wait_until(lambda: srv.counters()["fault.stall"] >= 1, 5)
    loop = srv._loop
    assert loop is not None
    srv.stop()
    thread.join(timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError)
    # The stalled handler was cancelled, neither abandoned nor waited for.
    assert asyncio.all_tasks(loop) == set()


def test_32_concurrent_clients_make_an_exact_count(srv: ReferenceServer) -> None:
    per_thread = 10
    failures: list[BaseException] = []
    start = threading.Barrier(32)

    def client(n: int) -> None:
        try:
            with requests.Session() as session:
                start.wait(timeout=10)
                for i in range(per_thread):
                    key = f"{n}-{i}"
                    body = {"channelId": f"c{n % 4}", "text": f"{n}/{i}"}
                    headers = {**KEY, "Idempotency-Key": key}
                    for _ in range(2):  # every create sent twice: the second one replays
                        response = session.post(
                            f"{srv.url}/api/messages", json=body, headers=headers, timeout=10
                        )
                        assert response.status_code == 201
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    messages = srv.all_messages()
    assert len(messages) == 32 * per_thread
    assert len({m["id"] for m in messages}) == 32 * per_thread
    counters = srv.counters()
    assert counters["creates"] == 32 * per_thread
    assert counters["replays"] == 32 * per_thread
    assert counters["requests"] == 64 * per_thread


def test_run_forever_stops_the_server_when_asked() -> None:
    srv = ReferenceServer()
    stop = threading.Event()
    thread = threading.Thread(target=run_forever, args=(srv,), kwargs={"stop": stop})
    thread.start()
    assert wait_until(lambda: srv.running, 5)
    assert requests.get(f"{srv.url}/api/health", timeout=5).status_code == 200
    stop.set()
    thread.join(timeout=5)
    assert not srv.running


# -- chaos proxy ---------------------------------------------------------------------------


@pytest.fixture
def proxy(srv: ReferenceServer) -> Iterator[ChaosProxy]:
    with ChaosProxy(srv.host, srv.port) as p:
        yield p


def test_proxy_passes_traffic_through(srv: ReferenceServer, proxy: ChaosProxy) -> None:
    assert post(proxy.url).status_code == 201
    assert requests.get(f"{proxy.url}/api/health", timeout=5).json() == {"status": "ok"}
    counters = proxy.counters()
    assert counters["connections_total"] == 2
    assert counters["bytes_up"] > 0
    assert counters["bytes_down"] > 0


def test_proxy_latency(proxy: ChaosProxy) -> None:
    proxy.latency = 0.15
    started = time.monotonic()
    assert requests.get(f"{proxy.url}/api/health", timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.3  # once each way


def test_proxy_resets_mid_response(srv: ReferenceServer, proxy: ChaosProxy) -> None:
    proxy.reset_after_bytes = 20
    with pytest.raises(requests.ConnectionError):
        post(proxy.url, key="mid")
    assert proxy.counters()["resets"] == 1
    assert len(srv.messages("faults")) == 1  # the server committed it
    proxy.reset_after_bytes = None
    assert post(proxy.url, key="mid").headers["Idempotent-Replayed"] == "true"


def test_proxy_blackhole(srv: ReferenceServer, proxy: ChaosProxy) -> None:
    proxy.blackhole = True
    with pytest.raises(requests.ReadTimeout):
        post(proxy.url, timeout=0.3)
    assert srv.counters()["requests"] == 0
    assert proxy.counters()["blackholed_connections"] == 1
    proxy.blackhole = False
    assert post(proxy.url).status_code == 201


def test_proxy_refuse_then_accept_again(proxy: ChaosProxy) -> None:
    port = proxy.port
    with requests.Session() as session:
        assert session.get(f"{proxy.url}/api/health", timeout=5).status_code == 200
        proxy.refuse = True
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        with pytest.raises(requests.ConnectionError):
            session.get(f"{proxy.url}/api/health", timeout=1)
        proxy.refuse = False
        assert proxy.port == port
        assert session.get(f"{proxy.url}/api/health", timeout=5).status_code == 200


def test_proxy_to_a_dead_upstream_resets() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    with ChaosProxy("127.0.0.1", dead_port) as proxy, pytest.raises(requests.ConnectionError):
        requests.get(f"{proxy.url}/api/health", timeout=2)


def test_unique_keys_under_the_flaky_profile_never_duplicate() -> None:
    plan = attrs.evolve(PROFILES["flaky"], seed=5, delay=0.0)
    with ReferenceServer(faults=plan) as srv, requests.Session() as session:
        for i in range(40):
            key = str(uuid.uuid4())
            body = {"channelId": "flaky", "text": f"m{i}"}
            for _attempt in range(20):
                try:
                    response = session.post(
                        f"{srv.url}/api/messages",
                        json=body,
                        headers={**KEY, "Idempotency-Key": key},
                        timeout=5,
                    )
                except requests.ConnectionError:
                    continue
                if response.status_code == 201:
                    break
            else:
                pytest.fail("never created")
        texts = [m["text"] for m in srv.messages("flaky")]
        assert sorted(texts) == sorted(f"m{i}" for i in range(40))


# -- lifecycle, plugin, packaging ----------------------------------------------------------


def test_lifecycle_errors_and_helpers() -> None:
    with pytest.raises(ValueError):
        ReferenceServer(ping_interval=0)
    with pytest.raises(ValueError):
        ReferenceServer(token_ttl=0)
    srv = ReferenceServer()
    assert not srv.running
    assert srv.publish("chat:early", {"n": 1}) == 1  # stopped: goes straight to history
    srv.start(keep_state=True)
    try:
        assert "running" in repr(srv)
        with pytest.raises(RuntimeError):
            srv.start()
        with pytest.raises(ValueError):
            srv.outage(-1)
        with pytest.raises(ValueError):
            srv.ping_interval = 0
        assert srv.publish("chat:early", {"n": 2}) == 2
    finally:
        srv.close()
    srv.stop()  # idempotent
    assert "stopped" in repr(srv)
    with pytest.raises(RuntimeError):
        srv.send_ping()


def test_reset_counters(srv: ReferenceServer) -> None:
    post(srv.url)
    assert srv.counters()["requests"] == 1
    srv.reset_counters()
    assert srv.counters()["requests"] == 0
    assert srv.ws_stats()["connects_total"] == 0


def test_pytest_plugin_fixtures(
    chatsdk_server: ReferenceServer, chatsdk_server_factory: Callable[..., ReferenceServer]
) -> None:
    assert chatsdk_server.running
    assert post(chatsdk_server.url).status_code == 201
    faulty = chatsdk_server_factory(faults="terrible")
    assert faulty.running
    assert faulty.faults == PROFILES["terrible"]
    assert faulty.port != chatsdk_server.port


def test_import_guard_names_the_extra() -> None:
    # chatsdk.testing itself (the in-memory transport, test mode) needs no aiohttp; the
    # reference server does, and says which extra brings it.
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "import chatsdk.testing\n"
        "try:\n"
        "    from chatsdk.testing import ReferenceServer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'chatsdk[server]'" in result.stdout


def test_testing_all_is_sorted_and_importable() -> None:
    import chatsdk.testing as testing

    assert list(testing.__all__) == sorted(set(testing.__all__))
    for name in testing.__all__:
        assert hasattr(testing, name), name
