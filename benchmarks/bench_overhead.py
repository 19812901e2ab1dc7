"""Success-path overhead of ChatSession against a plain requests.Session, and of
instrumentation on against off.

The same 2,000 keep-alive GETs against one loopback server (in its own process), interleaved
(one per arm, in alternating order) so every arm sees the same machine noise; prints the
median per-request time of each arm and the ratios. Targets: ChatSession <= 1.05x plain
requests; instrumentation on (OpenTelemetry integration enabled with no exporter, no event
hooks) <= 1.05x instrumentation off. Every arm sends the same headers on the wire (the plain
session carries the X-API-Key too), except the traced arm's ``traceparent`` when a provider
records. The instrumented arms need ``chatsdk[otel]`` (the ``bench`` extra has it); the
"SDK, no exporter" arm is a TracerProvider with no span processor: spans are made, then
dropped.

    python benchmarks/bench_overhead.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from chatsdk import ChatSession, _instrument

try:
    from opentelemetry.sdk.trace import TracerProvider

    import chatsdk.integrations.otel as otel
except ImportError:  # pragma: no cover - without chatsdk[otel] only the first two arms run
    otel = None  # type: ignore[assignment]

OFF = "chatsdk.ChatSession"
ON = "instrumented (no-op)"
SDK = "instrumented (SDK)"

BODY = b'{"status": "ok"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        # One write per response: split writes meet delayed ACKs and measure the kernel.
        self.wfile.write(RESPONSE)


def _serve(ports: multiprocessing.Queue[int]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    ports.put(server.server_address[1])
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    # The server runs in its own process, so it does not compete with the client for the GIL.
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}"

    plain = requests.Session()
    plain.headers["X-API-Key"] = "bench-key"  # the same request on the wire as ChatSession's
    chat = ChatSession(url, "bench-key")
    arms = {
        "requests.Session": (plain, f"{url}/api/health"),
        OFF: (chat, "/api/health"),
    }
    # Instrumentation is process-wide: each arm installs its tracer (or none) before its
    # request, outside the timed region. Every arm uses its own session and pool.
    tracers: dict[str, _instrument.Tracer | None] = {"requests.Session": None, OFF: None}
    if otel is not None:
        otel.instrument()  # the API's default provider: no SDK, no exporter
        tracers[ON] = _instrument.tracer
        otel.instrument(tracer_provider=TracerProvider())  # an SDK with no span processor
        tracers[SDK] = _instrument.tracer
        otel.uninstrument()
        arms[ON] = (ChatSession(url, "bench-key"), "/api/health")
        arms[SDK] = (ChatSession(url, "bench-key"), "/api/health")
    times: dict[str, list[float]] = {name: [] for name in arms}
    for name, (session, target) in arms.items():  # warm every connection pool
        _instrument.set_tracer(tracers[name])
        for _ in range(50):
            session.get(target, timeout=(3.05, 30)).raise_for_status()
    for i in range(args.requests):
        order = list(arms.items()) if i % 2 == 0 else list(reversed(arms.items()))
        for name, (session, target) in order:
            _instrument.set_tracer(tracers[name])
            start = time.perf_counter()
            response = session.get(target, timeout=(3.05, 30))
            times[name].append(time.perf_counter() - start)
            assert response.status_code == 200
    server.terminate()
    server.join()

    base = statistics.median(times["requests.Session"])
    print(f"{'arm':<24} {'median us':>10} {'p90 us':>10} {'ratio':>7}")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"{name:<24} {median * 1e6:>10.1f} {p90 * 1e6:>10.1f} {median / base:>7.3f}")
    _instrument.set_tracer(None)
    off = statistics.median(times[OFF])
    print(f"ChatSession / requests median ratio: {off / base:.3f} (target <= 1.05)")
    for name in (ON, SDK):
        if name in times:
            ratio = statistics.median(times[name]) / off
            print(f"{name} / instrumentation off median ratio: {ratio:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
