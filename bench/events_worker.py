"""One measuring interpreter of ``bench.events`` (run by it, pinned with taskset).

``--mode cost``: time ``tw.acquire`` on a fresh Redis subject set, with the policy's
``[ledger]`` on (each step appends its usage event) or off; prints one JSON record.
``--mode load``: acquires at a steady ``--rate`` for ``--seconds`` (a paced loop, no sleep
per call: it waits only when ahead of schedule), for the drain-lag run; prints how many were
allowed.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.common import load_tollway, tollway_policy

SUBJECTS = 64


def policy(ledger_url: str | None) -> dict[str, Any]:
    doc = tollway_policy(True)  # a rate, a quota and a budget, far above what a run takes
    if ledger_url is not None:
        doc["ledger"] = {"url": ledger_url}
    return doc


def measure_cost(url: str, events: bool, calls: int, tag: str) -> dict[str, Any]:
    tollway_cls = load_tollway("Tollway")
    tw = tollway_cls(policy("sqlite:////tmp/tollway-bench-unused.db" if events else None), url)
    subjects = [f"{tag}-{i}" for i in range(SUBJECTS)]
    acquire = tw.acquire
    for subject in subjects:  # warm: scripts loaded, steps cached, streams registered
        acquire(subject, "call")
    allowed = 0
    start = time.perf_counter()
    for i in range(calls):
        allowed += acquire(subjects[i % SUBJECTS], "call").allowed
    elapsed = time.perf_counter() - start
    tw.store.close()
    return {"allowed": allowed, "calls": calls, "seconds": elapsed, "rate": calls / elapsed}


def load(url: str, ledger_url: str, rate: int, seconds: float, tag: str) -> dict[str, Any]:
    tollway_cls = load_tollway("Tollway")
    tw = tollway_cls(policy(ledger_url), url)
    subjects = [f"{tag}-{i}" for i in range(SUBJECTS)]
    allowed = sent = 0
    start = time.perf_counter()
    period = 1.0 / rate
    while True:
        now = time.perf_counter() - start
        if now >= seconds:
            break
        due = int(now / period) + 1
        while sent < due:
            allowed += tw.acquire(subjects[sent % SUBJECTS], "call").allowed
            sent += 1
        ahead = sent * period - (time.perf_counter() - start)
        if ahead > 0.001:
            time.sleep(ahead)  # paced load: idle only when ahead of schedule
    elapsed = time.perf_counter() - start
    tw.store.close()
    return {"allowed": allowed, "sent": sent, "seconds": elapsed, "rate": sent / elapsed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("cost", "load"), required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--events", action="store_true")
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--tag", default="s")
    p.add_argument("--ledger")
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.mode == "cost":
        record = measure_cost(args.url, args.events, args.calls, args.tag)
        record.update(type="cost", events=args.events)
    else:
        record = load(args.url, args.ledger, args.rate, args.seconds, args.tag)
        record.update(type="load")
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
