"""Memory of one call against hostile responses: chatsdk beside plain requests, in one run.

Each arm runs in its own subprocess against the same raw server (tests/hostile/servers.py)
and prints the peak of what it allocated during the call (tracemalloc):

1. a gzip bomb: a 201 of about 1 MB on the wire that inflates to 1 GiB;
2. a 100 MB error body (400, text/html).

The goal (issue 12): chatsdk stays under ~50 MB above its baseline; plain requests reads the
whole body.

    python benchmarks/bench_hostile.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.hostile import servers  # noqa: E402
from tests.hostile.servers import RawHTTPServer  # noqa: E402

ARM = textwrap.dedent(
    """
    import json, sys, tracemalloc
    import requests
    import chatsdk
    url, arm = sys.argv[1], sys.argv[2]
    if arm == "chatsdk":
        chat = chatsdk.ChatClient(url, "k-bench", retry=chatsdk.RetryPolicy(max_attempts=1),
                                  timeout=(5, 60))
        call = lambda: chat.send_message("general", "hi")
    else:
        session = requests.Session()
        call = lambda: session.post(url + "/api/messages", json={"channelId": "general",
                                    "text": "hi"}, timeout=(5, 60)).content
    tracemalloc.start()
    try:
        call()
        outcome = "returned"
    except Exception as exc:
        outcome = type(exc).__name__
    print(json.dumps({"outcome": outcome, "mb": tracemalloc.get_traced_memory()[1] / 2**20}))
    """
)


def peak(url: str, arm: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", ARM, url, arm], capture_output=True, text=True, env=env, check=True
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    bomb = servers.gzip_bomb(1024**3)
    cases = [
        (f"gzip bomb ({len(bomb) / 2**20:.1f} MB -> 1 GiB)",
         servers.stream_body(201, bomb, {"Content-Encoding": "gzip"})),
        ("100 MB error body",
         servers.stream_body(400, b"x" * (100 * 2**20), {"Content-Type": "text/html"})),
    ]  # fmt: skip
    print(f"{'case':36} {'chatsdk':>22} {'requests':>22}")
    for name, handler in cases:
        with RawHTTPServer(handler) as server:
            ours, theirs = peak(server.url, "chatsdk"), peak(server.url, "requests")
        print(
            f"{name:36} {ours['mb']:8.1f} MB {ours['outcome']:>12}"
            f" {theirs['mb']:8.1f} MB {theirs['outcome']:>12}"
        )
    print("goal: chatsdk under ~50 MB in every case")


if __name__ == "__main__":
    main()
