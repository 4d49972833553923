"""The cost of tollway.metrics: a /metrics scrape with 10,000 subjects seen, and the observer's
cost per acquire.

    taskset -c 1 .venv/bin/python -m bench.metrics            # about 1 minute
    taskset -c 1 .venv/bin/python -m bench.metrics --quick    # smoke check

Scrape: a memory `Tollway` with the observer takes decisions for ``--subjects`` subjects
(skewed: a few busy ones, the rest seen a few times), on two plans and two operations, some
denied; a route's providers are added as a scrape-time source. Then `render` runs
``--repeats`` times; the median and p90 are reported. Target: median <= 20 ms.

Observer: the same acquire loop (memory store, 1 limit, nothing denied) on two Tollways,
without and with ``observer=metrics.observer``, alternating which goes first, ``--rounds``
rounds; ns per call, median over rounds, and the ratio within each round.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 20.0

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {
        "geocode": {"cost": 1, "price": "0.005 USD"},
        "search": {"cost": 2, "price": "0.01 USD"},
    },
    "plans": {
        "free": {
            "limits": [
                {"name": "burst", "rate": "100/s", "burst": 50},
                {"name": "daily", "quota": "1000/day"},
                {"name": "spend", "budget": "10 USD/day"},
            ]
        },
        "pro": {"limits": [{"name": "daily", "quota": "100000/day"}]},
    },
    "providers": {
        "a": {"price": "0.005 USD", "limits": [{"name": "budget", "budget": "100 USD/day"}]},
        "b": {"price": "0 USD", "limits": [{"name": "daily", "quota": "1000/day"}]},
    },
    "routes": {"geocoding": {"providers": ["a", "b"]}},
}

HOT_POLICY: dict[str, Any] = {
    "defaults": {"plan": "p"},
    "operations": {"op": {"cost": 1}},
    "plans": {"p": {"limits": [{"name": "r", "rate": "1000000/s", "burst": 10_000_000}]}},
}


def scrape(subjects: int, repeats: int) -> dict[str, Any]:
    from tollway import Tollway
    from tollway.metrics import Metrics, render

    metrics = Metrics()
    decisions = 0
    with Tollway(POLICY, observer=metrics.observer) as tw:
        metrics.add_tollway(tw)
        for n in range(subjects // 10):
            tw.assign(f"acct-{n}", "pro")
        for n in range(subjects):
            for _ in range(1 + (n % 3)):
                tw.acquire(f"acct-{n}", "search" if n % 5 == 0 else "geocode")
                decisions += 1
            if n % 100 == 0:
                for busy in range(30):  # busy subjects, denied once their burst is spent
                    tw.acquire(f"busy-{busy}", "geocode")
                    decisions += 1
        route = tw.route("geocoding")
        for _ in range(100):
            with route.call():
                pass
        render(metrics)  # warm: imports, the sources' threads
        times = []
        size = 0
        for _ in range(repeats):
            started = time.perf_counter_ns()
            body = render(metrics)
            times.append((time.perf_counter_ns() - started) / 1e6)
            size = len(body)
    metrics.close()
    times.sort()
    return {
        "subjects": subjects + 30,
        "decisions": decisions,
        "repeats": repeats,
        "median_ms": statistics.median(times),
        "p90_ms": times[int(len(times) * 0.9) - 1],
        "max_ms": times[-1],
        "bytes": size,
        "series": body.count(b"\n") - body.count(b"\n#"),
    }


def observer_cost(calls: int, rounds: int) -> dict[str, Any]:
    from tollway import Tollway
    from tollway.metrics import Metrics

    metrics = Metrics()
    plain = Tollway(HOT_POLICY)
    observed = Tollway(HOT_POLICY, observer=metrics.observer)

    def per_call(tw: Tollway) -> float:
        acquire = tw.acquire
        for n in range(calls // 10):
            acquire(f"s{n % 64}", "op")
        started = time.perf_counter_ns()
        for n in range(calls):
            acquire(f"s{n % 64}", "op")
        return (time.perf_counter_ns() - started) / calls

    rows = []
    for rnd in range(rounds):
        if rnd % 2:
            b, a = per_call(observed), per_call(plain)
        else:
            a, b = per_call(plain), per_call(observed)
        rows.append((a, b, b / a))
    plain.close()
    observed.close()
    return {
        "calls": calls,
        "rounds": rounds,
        "without_ns": statistics.median(r[0] for r in rows),
        "with_ns": statistics.median(r[1] for r in rows),
        "ratio": statistics.median(r[2] for r in rows),
        "ratios": [round(r[2], 3) for r in rows],
    }


def report(result: dict[str, Any], cost: dict[str, Any], argv: list[str]) -> str:
    verdict = "PASS" if result["median_ms"] <= TARGET_MS else "FAIL"
    command = " ".join(["python -m bench.metrics", *argv])
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = []
    lines = [
        "# tollway.metrics: scrape time and the observer's cost",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `{command}`, "
        f"Python {platform.python_version()}, CPUs {cpus} (pin with `taskset -c 1`), load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a busy machine inflates "
        "every figure).",
        "",
        "## Scrape (`render(metrics)`)",
        "",
        "| subjects seen | decisions | repeats | median ms | p90 ms | max ms | series | bytes |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['subjects']:,} | {result['decisions']:,} | {result['repeats']} | "
        f"{result['median_ms']:.2f} | {result['p90_ms']:.2f} | {result['max_ms']:.2f} | "
        f"{result['series']} | {result['bytes']:,} |",
        "",
        f"Target: median <= {TARGET_MS:.0f} ms: **{verdict}**. Series stay bounded whatever the "
        "subjects seen: per-subject series exist only for the 20 busiest (`Metrics(top=20)`).",
        "",
        "## The observer's cost per acquire (memory store, 1 rate limit)",
        "",
        "| calls per round | rounds | without observer ns/call | with ns/call | ratio (median) |",
        "|---|---|---|---|---|",
        f"| {cost['calls']:,} | {cost['rounds']} | {cost['without_ns']:.0f} | "
        f"{cost['with_ns']:.0f} | {cost['ratio']:.3f} |",
        "",
        f"Ratios per round: {cost['ratios']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke check")
    p.add_argument("--subjects", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=None, help="scrapes timed (default 51)")
    p.add_argument("--calls", type=int, default=None, help="acquires per round (default 50,000)")
    p.add_argument("--rounds", type=int, default=None, help="observer rounds (default 7)")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "METRICS_RESULTS.md")
    args = p.parse_args(args_in)
    repeats = args.repeats or (5 if args.quick else 51)
    calls = args.calls or (5_000 if args.quick else 50_000)
    rounds = args.rounds or (2 if args.quick else 7)
    result = scrape(args.subjects, repeats)
    cost = observer_cost(calls, rounds)
    text = report(result, cost, args_in)
    args.output.write_text(text)
    print(text)
    return 0 if result["median_ms"] <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
