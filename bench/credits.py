"""Prepaid credits in the atomic step: an acquire that draws credits vs the same acquire
without a credits limit, on one Redis, in the same run; the median ratio of their times.

    taskset -c 1 .venv/bin/python -m bench.credits            # 5 rounds x 20,000 calls per case
    taskset -c 1 .venv/bin/python -m bench.credits --quick    # 1 round x 2,000 calls (smoke)
    taskset -c 1 .venv/bin/python -m bench.credits --rounds 15 --calls 5000   # a noisy machine

Both cases run one plan of the same rate limit and daily budget (the issue's target: "an acquire
that draws prepaid credits costs <= 10% more than the same acquire without them"); the credits
case adds ``{ credits = "USD" }`` on a grant large enough never to run out, with no expiring
grant (so the step never allocates: the common path). Each round runs both cases, each on a
fresh subject after a warm-up, the first case alternating; the ratio is taken within a round
and its median over rounds reported, with where the time went: the client's own CPU per call
(the Python side) and Redis's (INFO commandstats ``usec``: the Lua script). The
harness starts its own redis-server (pinned to CPU 0 with taskset when available) and stops it
by its pid. Writes ``bench/CREDITS_RESULTS.md``; exit status 1 when a call was denied or
degraded, or the ratio misses the target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench import sysload
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


@dataclass
class Sample:
    """One case's round: per acquire, µs of wall time, of this process's CPU, of Redis's."""

    wall: float
    cpu: float
    redis: float
    foreign: float | None


def _round(tw: Any, subject: str, calls: int, warm: int, server: RedisServer) -> Sample:
    """One case's timed calls; raises if any was denied or degraded."""
    for _ in range(warm):
        tw.acquire(subject, "call")
    pid = server.proc.pid if server.proc is not None else None
    stats = redis.Redis.from_url(server.url)
    stats.config_resetstat()
    bad = 0
    before = sysload.sample(pid)
    cpu = time.process_time_ns()
    start = time.perf_counter_ns()
    for _ in range(calls):
        d = tw.acquire(subject, "call")
        bad += (not d.allowed) or d.degraded
    elapsed = time.perf_counter_ns() - start
    cpu = time.process_time_ns() - cpu
    after = sysload.sample(pid)
    usec = sum(int(v["usec"]) for v in stats.info("commandstats").values())
    stats.close()
    if bad:
        raise RuntimeError(f"{bad} calls denied or degraded on {subject}")
    return Sample(
        elapsed / calls / 1000,
        cpu / calls / 1000,
        usec / calls,
        sysload.foreign_share(before, after),
    )


def _ratio(times: dict[str, list[Sample]], part: str) -> float:
    """The median over rounds of (with credits / without), the two taken in the same round."""
    pairs = zip(times["without credits"], times["with credits"], strict=True)
    if part == "cpu+redis":
        return statistics.median((b.cpu + b.redis) / (a.cpu + a.redis) for a, b in pairs)
    return float(statistics.median(getattr(b, part) / getattr(a, part) for a, b in pairs))


def main(argv: list[str] | None = None) -> int:
    from tollway import Tollway

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--quick", action="store_true")
    args.add_argument("--rounds", type=int, default=5)
    args.add_argument("--calls", type=int, default=20_000)
    opts = args.parse_args(argv)
    rounds, calls = (1, 2_000) if opts.quick else (opts.rounds, opts.calls)
    server = RedisServer(0, HERE / "results" / "credits-redis.log")
    server.start()
    try:
        plain, drawing = Tollway(_policy(False), server.url), Tollway(_policy(True), server.url)
        cases = {"without credits": plain, "with credits": drawing}
        times: dict[str, list[Sample]] = {name: [] for name in cases}
        for r in range(rounds):
            drawing.driver.grant(f"bench-{r}-c", "USD", "g", 10**15)
            order = list(cases) if r % 2 == 0 else list(cases)[::-1]  # who goes first alternates
            for name in order:
                subject = f"bench-{r}" + ("-c" if name == "with credits" else "")
                times[name].append(_round(cases[name], subject, calls, calls // 10, server))
        plain.close()
        drawing.close()
    finally:
        server.stop()
    ratio = _ratio(times, "wall")
    foreign = [x.foreign for v in times.values() for x in v if x.foreign is not None]

    def med(name: str, part: str) -> float:
        return float(statistics.median(getattr(x, part) for x in times[name]))

    lines = [
        "# Prepaid credits: the cost of drawing in the atomic step",
        "",
        f"{rounds} rounds x {calls:,} sync acquires per case, one Redis on loopback "
        f"(`taskset -c 1 python -m bench.credits{' --quick' if opts.quick else ''}`; "
        f"redis-server on CPU 0), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "The cases alternate which goes first; ratios are taken within a round, medians "
        "over rounds.",
        "",
        "| case | wall µs / acquire | client CPU µs | Redis µs (commandstats) |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {med(name, 'wall'):.1f} | {med(name, 'cpu'):.1f} | "
            f"{med(name, 'redis'):.1f} |"
            for name in times
        ),
        "",
        f"Ratio with / without (wall): **{ratio:.3f}** (target <= {TARGET:.2f}: "
        f"{'met' if ratio <= TARGET else 'missed'}); client CPU {_ratio(times, 'cpu'):.3f}, "
        f"Redis {_ratio(times, 'redis'):.3f}, client CPU + Redis {_ratio(times, 'cpu+redis'):.3f}.",
        "",
        "Per round (wall µs, without / with): "
        + ", ".join(
            f"{a.wall:.0f} / {b.wall:.0f}"
            for a, b in zip(times["without credits"], times["with credits"], strict=True)
        )
        + f". Other processes used up to {max(foreign, default=0):.0%} of a CPU while a case ran.",
        "",
    ]
    (HERE / "CREDITS_RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
