"""Success-path overhead of ChatSession against a plain requests.Session.

The same 2,000 keep-alive GETs against one loopback server (in its own process), interleaved
(one plain, one ChatSession, ...) so both see the same machine noise; prints the median
per-request time of each and the ratio. Target: ChatSession <= 1.05x plain requests. Both
send the same headers on the wire (the plain session carries the X-API-Key too).

    python benchmarks/bench_overhead.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from chatsdk import ChatSession

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
        "chatsdk.ChatSession": (chat, "/api/health"),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for session, target in arms.values():  # warm both connection pools
        for _ in range(50):
            session.get(target, timeout=(3.05, 30)).raise_for_status()
    for i in range(args.requests):
        order = list(arms.items()) if i % 2 == 0 else list(reversed(arms.items()))
        for name, (session, target) in order:
            start = time.perf_counter()
            response = session.get(target, timeout=(3.05, 30))
            times[name].append(time.perf_counter() - start)
            assert response.status_code == 200
    server.terminate()
    server.join()

    base = statistics.median(times["requests.Session"])
    print(f"{'arm':<22} {'median us':>10} {'p90 us':>10} {'ratio':>7}")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"{name:<22} {median * 1e6:>10.1f} {p90 * 1e6:>10.1f} {median / base:>7.3f}")
    ratio = statistics.median(times["chatsdk.ChatSession"]) / base
    print(f"ChatSession / requests median ratio: {ratio:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
