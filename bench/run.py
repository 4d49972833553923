"""Run the whole benchmark: ``python -m bench.run [--quick] [--rounds N]``.

Starts a private redis-server pinned to CPU 0, runs one fresh worker interpreter per round
and config (A: client on CPU 1, B: client on CPU 0), aggregates medians over rounds and
writes ``bench/RESULTS.md``. Raw output goes to ``bench/results/<timestamp>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import report, sysload
from bench.common import REPO
from bench.server import RedisServer, server_version
from bench.worker import COUNTS, GROUPS

SERVER_CPU, CLIENT_CPU = 0, 1
WORKER_TIMEOUT_S = 1800
NOISY = 0.10  # foreign CPU share above which a worker's window is flagged


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def run_worker(
    cfg: str, cpu: int | None, rnd: int, url: str, *, args: argparse.Namespace, outdir: Path
) -> list[dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "bench.worker",
        "--url",
        url,
        "--config",
        cfg,
        "--round",
        str(rnd),
        "--groups",
        args.groups,
    ]
    if args.quick:
        cmd.append("--quick")
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    print(f"round {rnd} config {cfg}: {' '.join(cmd[:4])} ...", flush=True)
    err_path = outdir / f"worker-r{rnd}-{cfg}.stderr"
    records, returncode = json_worker(cmd, err_path, WORKER_TIMEOUT_S)
    if returncode != 0:
        records.append(
            {
                "type": "crash",
                "config": cfg,
                "round": rnd,
                "rc": returncode,
                "stderr": str(err_path),
            }
        )
    return records


def pinned_configs(notes: list[str]) -> dict[str, int | None]:
    """Config name -> the client's CPU: A on the other CPU than redis-server, B on the same;
    only A, unpinned, when taskset or two CPUs are missing (said in ``notes``)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if shutil.which("taskset") is not None and {SERVER_CPU, CLIENT_CPU} <= allowed:
        return {"A": CLIENT_CPU, "B": SERVER_CPU}
    notes.append(
        "Could not pin (no taskset or fewer than 2 CPUs allowed): ran unpinned as "
        "'A' only; these numbers are not comparable with pinned runs."
    )
    return {"A": None}


def json_worker(
    cmd: list[str], err_path: Path, timeout_s: float
) -> tuple[list[dict[str, Any]], int]:
    """Run one worker interpreter; the JSON records it printed (one per line, each with a
    ``type``) and its exit status. Its stderr goes to ``err_path``."""
    with err_path.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except BaseException:
            proc.kill()  # our own child, by its pid
            proc.wait()
            raise
    records = []
    for line in stdout.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "type" in rec:
            records.append(rec)
    return records, proc.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts, 1 round: a smoke check")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--groups", default=",".join(GROUPS), help=f"subset of {','.join(GROUPS)}")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    unknown = set(args.groups.split(",")) - set(GROUPS)
    if unknown:
        p.error(f"unknown groups: {sorted(unknown)}")

    started = datetime.now(timezone.utc)
    outdir = REPO / "bench" / "results" / started.strftime("%Y%m%dT%H%M%SZ")
    outdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    configs = pinned_configs(notes)
    pin = configs["A"] is not None

    server = RedisServer(SERVER_CPU if pin else None, outdir / "redis-server.log")
    server.start()
    records: list[dict[str, Any]] = []
    try:
        for rnd in range(1, args.rounds + 1):
            order = list(configs) if rnd % 2 else list(reversed(configs))
            for cfg in order:
                pid = server.proc.pid if server.proc else None
                before = sysload.sample(pid)
                records += run_worker(cfg, configs[cfg], rnd, server.url, args=args, outdir=outdir)
                share = sysload.foreign_share(before, sysload.sample(pid))
                records.append({"type": "load", "round": rnd, "config": cfg, "foreign": share})
    finally:
        server.stop()
    with (outdir / "raw.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)

    header = [
        "# tollway benchmark results"
        + (" (QUICK smoke run: small counts, not for decisions)" if args.quick else ""),
        "",
        f"Measured {started:%Y-%m-%d %H:%M} to {datetime.now(timezone.utc):%H:%M} UTC with "
        f"`python -m bench.run{' --quick' if args.quick else ''} --rounds {args.rounds}`. "
        f"Raw output: `{outdir.relative_to(REPO)}/` (git-ignored).",
    ]
    failed = write_report(records, notes, header, args, pin=pin, port=server.port)
    return 1 if failed else 0


def write_report(
    records: list[dict[str, Any]],
    notes: list[str],
    header: list[str],
    args: argparse.Namespace,
    *,
    pin: bool,
    port: int,
) -> bool:
    """Write RESULTS.md; True when something failed (errors, denials, crashed workers)."""
    meas = [r for r in records if r["type"] == "measurement"]
    metas = [r["versions"] for r in records if r["type"] == "meta"]
    crashes = [r for r in records if r["type"] == "crash"]
    notes += [
        f"Worker round {r['round']} config {r['config']} exited with {r['rc']}; see {r['stderr']}."
        for r in crashes
    ]
    bad = [r for r in meas if r["status"] == "error" or r.get("warnings")]
    notes += [
        f"⚠ {r['name']} ({r['group']}, round {r['round']}, config {r['config']}): "
        + "; ".join([r["error"]] if r.get("error") else r["warnings"])
        for r in bad
    ]
    unavailable = {r.get("error") for r in meas if r["status"] == "unavailable"}
    notes += [f"tollway rows unavailable: {u}" for u in sorted(filter(None, unavailable))]
    prints = sorted({str(m.get("tollway_fingerprint")) for m in metas})
    if len(prints) > 1:
        notes.append(
            f"⚠ tollway's source changed during the run (fingerprints {', '.join(prints)}): "
            "its rows mix versions; rerun once the code is stable."
        )
    loads = [r for r in records if r["type"] == "load" and r["foreign"] is not None]
    noisy = [r for r in loads if r["foreign"] > NOISY]
    if noisy:
        worst = ", ".join(f"round {r['round']} {r['config']}: {r['foreign']:.0%}" for r in noisy)
        notes.append(
            f"Other processes were busy while workers ran ({worst} of one CPU). Pinning does "
            "not keep them off CPU 0/1, so those rounds are noisier; rerun on a quiet machine "
            "before drawing conclusions."
        )

    rows, drift = report.aggregate(meas)
    doc = report.render(
        titles={g: t[0] for g, t in GROUPS.items()},
        rows=rows,
        drift=drift,
        machine=machine_rows(metas, loads),
        method=method_lines(args, COUNTS["quick" if args.quick else "full"], pin, port),
        notes=notes,
        header=header,
    )
    args.output.write_text(doc)
    print(doc)
    print(f"wrote {args.output}")
    return bool(bad or crashes)


def machine_rows(metas: list[dict[str, Any]], loads: list[dict[str, Any]]) -> list[tuple[str, str]]:
    v = (metas[0] if metas else {}).get
    origins = sorted({str(m.get("tollway_origin")) for m in metas})
    prints = sorted({str(m.get("tollway_fingerprint")) for m in metas})
    shares = sorted(r["foreign"] for r in loads)
    load = (
        f"median {shares[len(shares) // 2]:.0%}, max {shares[-1]:.0%} of one CPU"
        if shares
        else "not measured"
    )
    return [
        (
            "machine",
            f"{os.cpu_count()} vCPU (nproc), {cpu_model()}, {mem_total()} RAM, "
            f"kernel {platform.release()}",
        ),
        ("Python", f"{v('python', platform.python_version())} ({sys.executable})"),
        ("redis-server", f"{server_version()} (`--save '' --appendonly no`, loopback)"),
        ("redis-py", f"{v('redis')}, hiredis {v('hiredis')} (in use: {v('hiredis_in_use')})"),
        ("limits", f"{v('limits')} (coredis {v('coredis')})"),
        ("pyrate-limiter", str(v("pyrate-limiter"))),
        ("throttled-py", str(v("throttled-py"))),
        (
            "tollway",
            f"{v('tollway') or 'not installed'}; {'; '.join(origins)}; "
            f"source fingerprint {', '.join(prints)}",
        ),
        ("other processes' CPU while workers ran", load),
    ]


def method_lines(
    args: argparse.Namespace, counts: dict[str, tuple[int, int]], pin: bool, port: int
) -> list[str]:
    rounds = args.rounds
    c = {k: f"{n:,} after {w:,} warm-up" for k, (n, w) in counts.items()}
    placement = (
        "Config **A**: redis-server on CPU 0, client on CPU 1 (cross-CPU). Config **B**: "
        "both on CPU 0 (client and server CPU time add up). Pinned with `taskset -c`."
        if pin
        else "Unpinned (taskset or a second CPU unavailable)."
    )
    return [
        f"Own redis-server on 127.0.0.1:{port}, started and stopped by the harness (by pid).",
        placement,
        f"{rounds} round(s); each round runs one fresh interpreter per config "
        "(order alternates between rounds). Every figure is the **median over rounds**.",
        "One `perf_counter_ns()` per call; latency = gap between consecutive stamps (includes "
        "~0.1 µs loop overhead); calls/s = n ÷ total time. `gc.collect()` before each timed run.",
        f"Counts: sync Redis 1 limit {c['redis']}; 3 limits {c['three']}; async 50 tasks "
        f"{c['async']}; memory 1 limit {c['memory']}; memory 3 limits {c['memory3']}.",
        "A hit is one test-and-consume of 1 unit on one key; limits are huge (1 limit: 10⁹/min; "
        "3 limits: 10⁷/s, 10⁸/h, 10⁹/day) so nothing is denied — denials are counted and "
        "flagged. Only the allow path is measured.",
        "Each subject gets a fresh key; Redis is flushed (FLUSHDB) before each subject.",
        "Ratio = median over rounds of (calls/s ÷ floor calls/s of the same round, config and "
        "group). Each group's floor runs before and after its subjects; the reference is the "
        "mean of the two, shown as the floor row. Memory groups use a pure-Python dict counter "
        "as the floor, and their targets are absolute calls/s.",
        "The targets table also shows tollway's min to max over rounds and the best peer.",
        "Differences of ~0.05 in ratio are within this VM's noise (see the reference benchmark).",
    ]


if __name__ == "__main__":
    sys.exit(main())
