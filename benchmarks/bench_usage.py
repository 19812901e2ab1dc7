"""Real time of the user-style suite (tests/usage/test_notify_on_order.py) in test mode.

Run: ``python benchmarks/bench_usage.py [--rounds N]``

The file is run with ``pytest.main`` (coverage off) in a fresh interpreter, ``--rounds``
times. Two figures per round: the real time of its tests (setup + call + teardown of each, summed),
and the time the SDK *would* have waited in production: the backoffs, ``Retry-After`` waits
and breaker periods that test mode skipped (the SDK clock's skipped seconds). Their ratio
is the speed-up test mode gives; the target is under 1 s of real time for the whole file.
Figures only; no assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILE = ROOT / "tests" / "usage" / "test_notify_on_order.py"

# One round, in a fresh interpreter: run the file with a timing plugin, print the figures.
CHILD = """
import json, sys, time
import pytest

class Timer:
    seconds = 0.0
    tests = 0
    failed = 0
    def pytest_runtest_logreport(self, report):
        self.seconds += report.duration
        if report.when == "call":
            self.tests += 1
            self.failed += int(report.failed)

timer = Timer()
code = pytest.main([sys.argv[1], "-q", "-p", "no:cov"], plugins=[timer])
import chatsdk._testmode as testmode  # after the run: the SDK clock's skipped seconds
skipped = testmode.monotonic() - time.monotonic()
print(json.dumps({"real": timer.seconds, "skipped": skipped, "tests": timer.tests,
                  "failed": timer.failed, "code": int(code)}))
"""


def one_round() -> dict[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(FILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    process = time.perf_counter() - started
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process"] = process
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = [one_round() for _ in range(args.rounds)]
    real = [r["real"] for r in rounds]
    median_real = statistics.median(real)
    median_skipped = statistics.median(r["skipped"] for r in rounds)
    median_process = statistics.median(r["process"] for r in rounds)
    last = rounds[-1]
    tests, failed = last["tests"], last["failed"]
    print(f"tests/usage/test_notify_on_order.py: {tests:.0f} tests, {failed:.0f} failed")
    print(
        f"  real time of the tests, test mode on: {median_real:.3f} s"
        f" (median of {args.rounds}; target < 1 s)"
    )
    print(f"  whole pytest process (startup incl.):  {median_process:.2f} s")
    print(f"  waits skipped (production would wait): {median_skipped:.1f} s")
    print(f"  ratio skipped waits / real time:       {median_skipped / median_real:.0f}x")
    print("  rounds (real s): " + ", ".join(f"{r:.3f}" for r in real))


if __name__ == "__main__":
    main()
