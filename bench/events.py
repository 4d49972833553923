"""Usage-event benchmark: ``python -m bench.events [--rounds N] [--calls N] [--lag-seconds S]``.

Two questions of issue 5, on a private redis-server pinned to CPU 0:

1. **What the usage event costs an acquire.** ``tw.acquire`` (a rate, a quota and a budget)
   with ``[ledger]`` on (the step script also appends the event to a stream) against the same
   acquire with it off. One fresh worker interpreter per round, variant and config (A: client
   on CPU 1; B: client on CPU 0 with the server), the two variants alternating first; medians
   over rounds. Target: the event costs at most 15 % of throughput (ratio >= 0.85).
2. **Drain lag under a sustained load.** A paced loader (CPU 1) runs acquires at ``--rate``
   for ``--lag-seconds`` while ``tollway worker`` (CPU 0, beside Redis) drains the streams
   into a SQLite ledger. Lag per event = ``recorded_at - occurred_at`` (both from this
   machine's clock: Redis ``TIME`` when the step ran, and the worker's when it read the
   batch it then commits), read back from the ledger. Target: p99 below 1 s.

Writes ``bench/EVENTS_RESULTS.md``; raw records go to ``bench/results/events-<timestamp>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

from bench.common import REPO
from bench.run import SERVER_CPU, cpu_model, json_worker, pinned_configs
from bench.server import RedisServer, server_version

COST_TARGET = 0.85
LAG_TARGET_S = 1.0
CONFIG_TEXT = {"A": "client on CPU 1, redis-server on CPU 0", "B": "both on CPU 0"}


def worker(cmd: list[str], cpu: int | None, err: Path) -> dict[str, Any]:
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    records, rc = json_worker(cmd, err, 900)
    if rc != 0 or not records:
        raise RuntimeError(f"worker failed (exit {rc}); see {err}")
    return records[-1]


def flush(url_port: int) -> None:
    subprocess.run(["redis-cli", "-p", str(url_port), "FLUSHALL"], check=True, capture_output=True)


def cost_rounds(
    server: RedisServer, configs: dict[str, int | None], args: argparse.Namespace, out: Path
) -> list[dict[str, Any]]:
    records = []
    for rnd in range(args.rounds):
        for cfg, cpu in configs.items():
            order = (False, True) if rnd % 2 == 0 else (True, False)
            for events in order:
                flush(server.port)
                cmd = [sys.executable, "-m", "bench.events_worker", "--mode", "cost"]
                cmd += ["--url", server.url, "--calls", str(args.calls), "--tag", f"r{rnd}"]
                if events:
                    cmd.append("--events")
                tag = f"cost-r{rnd}-{cfg}-{'events' if events else 'plain'}"
                rec = worker(cmd, cpu, out / f"{tag}.stderr")
                rec.update(round=rnd, config=cfg)
                records.append(rec)
                print(f"{tag}: {rec['rate']:.0f}/s", flush=True)
    return records


def lag_run(server: RedisServer, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    flush(server.port)
    folder = Path(tempfile.mkdtemp(prefix="tollway-lag-"))
    db = folder / "ledger.db"
    config = folder / "policy.yaml"  # JSON is YAML
    from bench.events_worker import policy

    config.write_text(json.dumps(policy(f"sqlite:///{db}")))
    # The ledger exists (migrated) before the clock starts.
    subprocess.run(
        [sys.executable, "-c", f"from tollway.metering.ledger import open_ledger; "
         f"open_ledger('sqlite:///{db}').close()"],
        check=True,
    )  # fmt: skip
    drain_cmd = [sys.executable, "-m", "tollway.cli", "worker", "--config", str(config)]
    drain_cmd += ["--store", server.url, "--block-ms", "50"]
    drain_err = (out / "lag-worker.stderr").open("w")
    drain = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), *drain_cmd], cwd=REPO, stderr=drain_err
    )
    try:
        load_cmd = [sys.executable, "-m", "bench.events_worker", "--mode", "load"]
        load_cmd += ["--url", server.url, "--ledger", f"sqlite:///{db}"]
        load_cmd += ["--rate", str(args.rate), "--seconds", str(args.lag_seconds)]
        loaded = worker(load_cmd, 1, out / "lag-load.stderr")
        deadline = time.monotonic() + 60
        count = 0
        while time.monotonic() < deadline:
            count = _count(db)
            if count >= loaded["allowed"]:
                break
            time.sleep(0.2)  # waiting for the drain to catch up, bounded by the deadline
    finally:
        drain.terminate()  # our own child, by its pid
        drain.wait(30)
        drain_err.close()
    lags = _lags(db)
    lags.sort()

    def pct(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))] / 1e6 if lags else float("nan")

    return {
        "type": "lag",
        "offered_rate": args.rate,
        "achieved_rate": loaded["rate"],
        "allowed": loaded["allowed"],
        "in_ledger": count,
        "p50_s": pct(0.50),
        "p99_s": pct(0.99),
        "max_s": lags[-1] / 1e6 if lags else float("nan"),
    }


def _count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM usage_events").fetchone()[0])


def _lags(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT recorded_at_us - occurred_at_us FROM usage_events")
        return [int(row[0]) for row in rows]


def render(cost: list[dict[str, Any]], lag: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines = [
        "# Usage-event benchmark",
        "",
        f"Run {meta['when']} on {meta['cpu']} ({meta['cores']} CPUs), Python "
        f"{meta['python']}, redis-server {meta['redis']}; `python -m bench.events "
        f"--rounds {meta['rounds']} --calls {meta['calls']}`. Method: see the module "
        "docstring of `bench/events.py`.",
        "",
        "## The usage event's cost to an acquire",
        "",
        "| config | acquire alone (median/s) | acquire + event (median/s) | ratio | per round |",
        "|---|---:|---:|---:|---|",
    ]
    verdicts = []
    for cfg in sorted({r["config"] for r in cost}):
        plain = {r["round"]: r["rate"] for r in cost if r["config"] == cfg and not r["events"]}
        with_ev = {r["round"]: r["rate"] for r in cost if r["config"] == cfg and r["events"]}
        ratios = [with_ev[k] / plain[k] for k in sorted(plain) if k in with_ev]
        ratio = median(ratios)
        per = ", ".join(f"{x:.3f}" for x in ratios)
        lines.append(
            f"| {cfg} ({CONFIG_TEXT[cfg]}) | {median(plain.values()):,.0f} | "
            f"{median(with_ev.values()):,.0f} | **{ratio:.3f}** | {per} |"
        )
        verdicts.append(
            f"- Config {cfg}: the event costs {100 * (1 - ratio):.1f} % of throughput: "
            f"**{'PASS' if ratio >= COST_TARGET else 'FAIL'}** (target: at most 15 %)."
        )
    lines += ["", *verdicts, ""]
    if lag is not None:
        lines += [
            "## Drain lag under a sustained load",
            "",
            "| offered/s | achieved/s | events | in the ledger | p50 | p99 | max |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {lag['offered_rate']:,} | {lag['achieved_rate']:,.0f} | {lag['allowed']:,} | "
            f"{lag['in_ledger']:,} | {lag['p50_s'] * 1000:.1f} ms | "
            f"{lag['p99_s'] * 1000:.1f} ms | {lag['max_s'] * 1000:.1f} ms |",
            "",
            f"- p99 lag {lag['p99_s']:.3f} s: **"
            f"{'PASS' if lag['p99_s'] < LAG_TARGET_S else 'FAIL'}** (target: below 1 s); "
            f"every event drained: **{'yes' if lag['in_ledger'] == lag['allowed'] else 'NO'}**.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--lag-seconds", type=float, default=15.0)
    p.add_argument("--no-lag", action="store_true")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "EVENTS_RESULTS.md")
    args = p.parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = REPO / "bench" / "results" / f"events-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    configs = pinned_configs(notes)
    server = RedisServer(SERVER_CPU if len(configs) > 1 else None, out / "redis.log")
    server.start()
    try:
        cost = cost_rounds(server, configs, args, out)
        lag = None if args.no_lag else lag_run(server, args, out)
    finally:
        server.stop()
    meta = {
        "when": stamp,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "redis": server_version(),
        "rounds": args.rounds,
        "calls": args.calls,
    }
    (out / "records.json").write_text(json.dumps({"cost": cost, "lag": lag, "meta": meta}))
    text = render(cost, lag, meta)
    args.output.write_text(text + "".join(f"\n{n}\n" for n in notes))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
