"""Prepaid credits in the atomic step: an acquire that draws credits vs the same acquire
without a credits limit, on one Redis, in the same run; the median ratio of their times.

    taskset -c 1 .venv/bin/python -m bench.credits            # 5 rounds x 20,000 calls per case
    taskset -c 1 .venv/bin/python -m bench.credits --quick    # 1 round x 2,000 calls (smoke)

Both cases run one plan of the same rate limit and daily budget (the issue's target: "an acquire
that draws prepaid credits costs <= 10% more than the same acquire without them"); the credits
case adds ``{ credits = "USD" }`` on a grant large enough never to run out, with no expiring
grant (so the step never allocates: the common path). Rounds alternate the two cases, each on a
fresh subject, after a warm-up; the figure per case is the median of per-round means. The
harness starts its own redis-server (pinned to CPU 0 with taskset when available) and stops it
by its pid. Writes ``bench/CREDITS_RESULTS.md``; exit status 1 when a call was denied or
degraded, or the ratio misses the target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.server import RedisServer

HERE = Path(__file__).resolve().parent
TARGET = 1.10


def _policy(credits: bool) -> dict[str, Any]:
    limits: list[dict[str, Any]] = [
        {"name": "burst", "rate": "1000000/s", "burst": 10_000_000},
        {"name": "spend", "budget": "1000000.00 USD/day"},
    ]
    if credits:
        limits.append({"credits": "USD"})
    return {
        "store": {"timeout_ms": 5000},
        "defaults": {"plan": "p"},
        "operations": {"call": {"price": "0.000001 USD"}},
        "plans": {"p": {"limits": limits}},
    }


def _round(tw: Any, subject: str, calls: int, warm: int) -> float:
    """Mean microseconds per acquire; raises if any call was denied or degraded."""
    for _ in range(warm):
        tw.acquire(subject, "call")
    bad = 0
    start = time.perf_counter_ns()
    for _ in range(calls):
        d = tw.acquire(subject, "call")
        bad += (not d.allowed) or d.degraded
    elapsed = time.perf_counter_ns() - start
    if bad:
        raise RuntimeError(f"{bad} calls denied or degraded on {subject}")
    return elapsed / calls / 1000


def main(argv: list[str] | None = None) -> int:
    from tollway import Tollway

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--quick", action="store_true")
    args.add_argument("--rounds", type=int, default=5)
    opts = args.parse_args(argv)
    rounds, calls = (1, 2_000) if opts.quick else (opts.rounds, 20_000)
    server = RedisServer(0, HERE / "results" / "credits-redis.log")
    server.start()
    try:
        plain, drawing = Tollway(_policy(False), server.url), Tollway(_policy(True), server.url)
        times: dict[str, list[float]] = {"without credits": [], "with credits": []}
        for r in range(rounds):
            subject = f"bench-{r}"
            drawing.driver.grant(subject + "-c", "USD", "g", 10**15)
            times["without credits"].append(_round(plain, subject, calls, calls // 10))
            times["with credits"].append(_round(drawing, subject + "-c", calls, calls // 10))
        plain.close()
        drawing.close()
    finally:
        server.stop()
    med = {name: statistics.median(v) for name, v in times.items()}
    ratio = med["with credits"] / med["without credits"]
    lines = [
        "# Prepaid credits: the cost of drawing in the atomic step",
        "",
        f"{rounds} rounds x {calls:,} sync acquires per case, one Redis on loopback "
        f"(`python -m bench.credits{' --quick' if opts.quick else ''}`).",
        "",
        "| case | median us / acquire |",
        "|---|---|",
        *(f"| {name} | {value:.1f} |" for name, value in med.items()),
        "",
        f"Ratio with / without: **{ratio:.3f}** (target <= {TARGET:.2f}: "
        f"{'met' if ratio <= TARGET else 'missed'}).",
        "",
    ]
    (HERE / "CREDITS_RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
