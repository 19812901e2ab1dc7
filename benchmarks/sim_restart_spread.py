"""How many of N clients land in one 100 ms window when each waits U(0, spread) after a restart.

No network: the pure arithmetic behind the realtime benchmark's "reconnects per 100 ms"
target. For each spread, many simulated restarts of N clients; prints the median wait, the
typical (median) worst window, and the share of restarts whose worst window stays within
the limit (25% of N).

    python benchmarks/sim_restart_spread.py [--clients 50] [--runs 1000] [--restarts 10]
"""

from __future__ import annotations

import argparse
import bisect
import random
import statistics


def worst_window(waits: list[float], width: float = 0.1) -> int:
    """The most waits inside any window of ``width`` seconds."""
    ordered = sorted(waits)
    return max(bisect.bisect_right(ordered, t + width) - i for i, t in enumerate(ordered))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    limit = args.clients // 4
    print(f"{args.clients} clients, {args.runs} runs of {args.restarts} restarts, limit {limit}")
    print(f"{'spread s':>9} {'median wait s':>14} {'typical worst':>14} {'runs within limit':>18}")
    for spread in (0.8, 1.0, 1.2, 1.4):
        worst_per_run = []
        for _ in range(args.runs):
            worst_per_run.append(
                max(
                    worst_window([rng.uniform(0, spread) for _ in range(args.clients)])
                    for _ in range(args.restarts)
                )
            )
        within = sum(w <= limit for w in worst_per_run) / args.runs
        print(
            f"{spread:>9.1f} {spread / 2:>14.2f} {statistics.median(worst_per_run):>14.0f} "
            f"{within:>17.0%}"
        )


if __name__ == "__main__":
    main()
