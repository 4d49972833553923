"""HTTP middleware overhead: ``python -m bench.http.run [--quick] [--rounds N] [--duration S]``.

Starts a private redis-server, then for each round and variant one uvicorn process (1 worker)
serving the app from ``bench/http/apps.py``, loads it with wrk on loopback for a fixed time,
stops it by its pid, and writes medians over rounds to ``bench/HTTP_RESULTS.md``. Raw wrk
output, server logs and JSON records go to ``bench/results/http-<timestamp>/``.

Placement (2 vCPUs): the uvicorn server alone on CPU 0; wrk and redis-server on CPU 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from bench.common import REPO, tollway_fingerprint
from bench.http import apps, wrk
from bench.server import RedisServer, free_port, server_version
from bench.sysload import busy_s, pid_cpu_s

SERVER_CPU, LOAD_CPU, REDIS_CPU = 0, 1, 1
CONNECTIONS = 32
NOISY = 0.10  # other processes' CPU (fraction of one CPU) above which a run is flagged
TARGET_MEMORY_RATIO = 0.90
ADMIN_COMMANDS = {"info", "config", "flushdb", "ping", "client", "hello", "command", "select"}


# --- machine and CPU accounting ------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    return "unknown"


def own_cpu_s() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "starlette",
        "uvicorn",
        "slowapi",
        "limits",
        "redis",
        "hiredis",
        "tollway",
        "httpx",
        "uvloop",
        "httptools",
        "h11",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# --- one server ----------------------------------------------------------------------------


class Server:
    """One uvicorn process for one variant; started here and stopped by its own pid."""

    def __init__(
        self, variant: str, *, redis_url: str, loop: str, http: str, pin: bool, log: Path
    ) -> None:
        self.variant, self.port, self.log = variant, free_port(), log
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.http.apps:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--loop",
            loop,
            "--http",
            http,
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        # taskset execs python, so the pid we hold is the server's own.
        self.cmd = ["taskset", "-c", str(SERVER_CPU), *cmd] if pin else cmd
        self.env = {
            **os.environ,
            "BENCH_HTTP_VARIANT": variant,
            "BENCH_HTTP_REDIS_URL": redis_url,
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{apps.PATH}"

    def start(self, timeout: float = 30.0) -> httpx.Response:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.variant}: uvicorn exited early; see {self.log}")
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(self.url, timeout=2.0)
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.variant}: uvicorn did not answer within {timeout}s")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # graceful: lifespan shutdown closes the store
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_calls(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return {k: v for k, v in calls.items() if k.split("|")[0] not in ADMIN_COMMANDS}


def run_variant(
    variant: str,
    rnd: int,
    *,
    args: argparse.Namespace,
    redis: RedisServer,
    rclient: Any,
    outdir: Path,
    pin: bool,
) -> dict[str, Any]:
    rec: dict[str, Any] = {"type": "measurement", "variant": variant, "round": rnd, "warnings": []}
    uses_redis = "redis" in variant
    if uses_redis:
        rclient.flushdb()
    tag = f"r{rnd}-{variant}"
    server = Server(
        variant,
        redis_url=redis.url,
        loop=args.loop,
        http=args.http,
        pin=pin,
        log=outdir / f"server-{tag}.log",
    )
    try:
        probe = server.start()
        rec["probe_status"] = probe.status_code
        rec["probe_headers"] = sorted(k for k in probe.headers if "ratelimit" in k.lower())
        if probe.status_code != 200:
            rec["warnings"].append(f"first request answered {probe.status_code}: {probe.text!r}")
        if (
            variant.startswith("tollway")
            and not variant.endswith("noheaders")
            and not any(h.lower() == "ratelimit" for h in probe.headers)
        ):
            rec["warnings"].append("no RateLimit header: is TollwayMiddleware active?")
        # Warm-up (not measured), then reset Redis's command counters.
        warm = subprocess.run(
            wrk.command(
                server.url,
                duration=args.warmup,
                connections=args.connections,
                cpu=LOAD_CPU if pin else None,
            ),
            capture_output=True,
            text=True,
            timeout=args.warmup + 60,
            check=False,
        )
        (outdir / f"wrk-{tag}-warmup.txt").write_text(warm.stdout + warm.stderr)
        with contextlib.suppress(ValueError):
            w = wrk.parse(warm.stdout)
            if w["non2xx"] or w["socket_errors"]:
                rec["warnings"].append(
                    f"warm-up: {w['non2xx']} non-2xx, {w['socket_errors']} socket errors"
                )
        if uses_redis:
            rclient.config_resetstat()
        assert server.proc is not None
        spid, rpid = server.proc.pid, (redis.proc.pid if redis.proc else None)
        t0, b0, s0, r0, o0 = (
            time.monotonic(),
            busy_s(),
            pid_cpu_s(spid),
            pid_cpu_s(rpid),
            own_cpu_s(),
        )
        cmd = wrk.command(
            server.url,
            duration=args.duration,
            connections=args.connections,
            cpu=LOAD_CPU if pin else None,
        )
        run = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.duration + 60, check=False
        )
        t1, b1, s1, r1, o1 = (
            time.monotonic(),
            busy_s(),
            pid_cpu_s(spid),
            pid_cpu_s(rpid),
            own_cpu_s(),
        )
        (outdir / f"wrk-{tag}.txt").write_text(" ".join(cmd) + "\n" + run.stdout + run.stderr)
        if run.returncode != 0:
            raise RuntimeError(f"wrk exited {run.returncode}: {run.stderr.strip()}")
        rec.update(wrk.parse(run.stdout))
        wall = t1 - t0
        server_cpu = s1 - s0
        rec["server_cpu_share"] = server_cpu / wall
        rec["server_cpu_us_per_req"] = server_cpu * 1e6 / max(rec["requests"], 1)
        rec["redis_cpu_share"] = (r1 - r0) / wall
        rec["foreign_share"] = max(0.0, (b1 - b0) - server_cpu - (r1 - r0) - (o1 - o0)) / wall
        if uses_redis:
            calls = redis_calls(rclient)
            rec["redis_calls"] = calls
            rec["redis_calls_per_req"] = sum(calls.values()) / max(rec["requests"], 1)
            if not calls:
                rec["warnings"].append("Redis received no commands: the limiter did not run")
        after = httpx.get(server.url, timeout=5.0)
        if after.status_code != 200:
            rec["warnings"].append(f"request after the run answered {after.status_code}")
        if rec["non2xx"]:
            rec["warnings"].append(f"{rec['non2xx']} non-2xx responses (status >= 400)")
        if rec["socket_errors"]:
            rec["warnings"].append(rec["socket_errors_text"])
        if server.proc.poll() is not None:
            rec["warnings"].append(f"server died during the run; see {server.log}")
    except Exception as exc:  # recorded, reported, and fails the run
        rec["warnings"].append(f"error: {exc!r}")
    finally:
        server.stop()
    rec["valid"] = not rec["warnings"] and "rps" in rec
    print(
        f"  round {rnd} {variant:<26} "
        + (
            f"{rec['rps']:>9,.0f} req/s  p50 {rec['p50_ms']:6.2f} ms  p99 {rec['p99_ms']:6.2f} ms"
            f"  cpu {rec['server_cpu_share']:.0%}  other {rec['foreign_share']:.0%}"
            if "rps" in rec
            else "no result"
        )
        + ("" if rec["valid"] else f"  INVALID: {'; '.join(rec['warnings'])}"),
        flush=True,
    )
    return rec


# --- aggregation and report ----------------------------------------------------------------


def aggregate(records: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, Any]]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in records:
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        recs = [r for r in records if r["variant"] == v and "rps" in r]
        ratios, cpu_ratios = [], []
        for rnd in by_round.values():
            base, mine = rnd.get("bare"), rnd.get(v)
            if base and mine and "rps" in base and "rps" in mine:
                ratios.append(mine["rps"] / base["rps"])
                cpu_ratios.append(base["server_cpu_us_per_req"] / mine["server_cpu_us_per_req"])
        calls = [r["redis_calls_per_req"] for r in recs if "redis_calls_per_req" in r]
        rows[v] = {
            "n": len(recs),
            "rps": median(r["rps"] for r in recs) if recs else None,
            "rps_all": [r["rps"] for r in sorted(recs, key=lambda r: r["round"])],
            "p50": median(r["p50_ms"] for r in recs) if recs else None,
            "p99": median(r["p99_ms"] for r in recs) if recs else None,
            "cpu_us": median(r["server_cpu_us_per_req"] for r in recs) if recs else None,
            "cpu_share": median(r["server_cpu_share"] for r in recs) if recs else None,
            "ratio": median(ratios) if ratios else None,
            "ratio_all": ratios,
            "cpu_ratio": median(cpu_ratios) if cpu_ratios else None,
            "redis_calls": median(calls) if calls else None,
            "non2xx": sum(r.get("non2xx", 0) for r in recs),
            "socket_errors": sum(r.get("socket_errors", 0) for r in recs),
            "valid": all(r["valid"] for r in records if r["variant"] == v) and bool(recs),
        }
    return rows


def pair_ratio(records: list[dict[str, Any]], a: str, b: str) -> list[float]:
    """Per round: a's req/s ÷ b's req/s."""
    out = []
    for rnd in sorted({r["round"] for r in records}):
        ra = [r for r in records if r["round"] == rnd and r["variant"] == a and "rps" in r]
        rb = [r for r in records if r["round"] == rnd and r["variant"] == b and "rps" in r]
        if ra and rb:
            out.append(ra[0]["rps"] / rb[0]["rps"])
    return out


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def render(
    records: list[dict[str, Any]], variants: list[str], ctx: dict[str, Any]
) -> tuple[str, bool]:
    rows = aggregate(records, variants)
    invalid = [v for v in variants if not rows[v]["valid"]]
    lines = [
        "# tollway HTTP middleware benchmark"
        + (" (QUICK smoke run: 1 short round, not for decisions)" if ctx["quick"] else ""),
        "",
        f"Measured {ctx['started']:%Y-%m-%d %H:%M} to {ctx['ended']:%H:%M} UTC with "
        f"`{ctx['command']}`. Raw output: `{ctx['outdir']}/` (git-ignored).",
        "",
        "## Results",
        "",
        f"Median over {ctx['rounds']} round(s) of {ctx['duration']} s each. Ratio = req/s ÷ the "
        "bare app's req/s in the same round (median over rounds). CPU µs/req = the server "
        "process's CPU time ÷ requests served (less sensitive to CPU stolen by other "
        "processes); CPU ratio = bare's CPU µs/req ÷ the variant's.",
        "",
        "| variant | req/s (median) | req/s per round | ratio to bare | p50 ms | p99 ms | "
        "server CPU µs/req | CPU ratio | Redis cmds/req | non-2xx | valid |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v in variants:
        r = rows[v]
        lines.append(
            f"| `{v}` | {fmt(r['rps'], ',.0f')} | {', '.join(f'{x:,.0f}' for x in r['rps_all'])} | "
            f"{fmt(r['ratio'], '.3f')} | {fmt(r['p50'], '.2f')} | {fmt(r['p99'], '.2f')} | "
            f"{fmt(r['cpu_us'], '.0f')} | {fmt(r['cpu_ratio'], '.3f')} | "
            f"{fmt(r['redis_calls'], '.2f')} | {r['non2xx']} | "
            f"{'yes' if r['valid'] else '**INVALID**'} |"
        )
    lines += ["", "Variants:", ""]
    lines += [f"- `{v}`: {apps.VARIANTS[v][0]}" for v in variants]

    # Targets
    lines += [
        "",
        "## Targets (issue 3)",
        "",
        "| target | measured (median) | per round | verdict |",
        "|---|---:|---|---|",
    ]
    if "tollway-memory" in rows and "bare" in rows:
        r = rows["tollway-memory"]
        ok = r["ratio"] is not None and r["ratio"] >= TARGET_MEMORY_RATIO
        verdict = (
            "INVALID" if not (r["valid"] and rows["bare"]["valid"]) else ("PASS" if ok else "FAIL")
        )
        if (
            verdict != "INVALID"
            and r["ratio_all"]
            and (min(r["ratio_all"]) < TARGET_MEMORY_RATIO <= max(r["ratio_all"]))
        ):
            verdict += " (rounds disagree: within noise)"
        lines.append(
            f"| tollway memory costs <= 10% of bare req/s (ratio >= {TARGET_MEMORY_RATIO}) | "
            f"{fmt(r['ratio'], '.3f')} (CPU ratio {fmt(r['cpu_ratio'], '.3f')}) | "
            f"{', '.join(f'{x:.3f}' for x in r['ratio_all'])} | **{verdict}** |"
        )
    if "tollway-redis" in rows and "slowapi-redis" in rows:
        per = pair_ratio(records, "tollway-redis", "slowapi-redis")
        m = median(per) if per else None
        cpu = (
            rows["slowapi-redis"]["cpu_us"] / rows["tollway-redis"]["cpu_us"]
            if rows["slowapi-redis"]["cpu_us"] and rows["tollway-redis"]["cpu_us"]
            else None
        )
        valid = rows["tollway-redis"]["valid"] and rows["slowapi-redis"]["valid"]
        verdict = "INVALID" if not valid else ("PASS" if m and m > 1 else "FAIL")
        if valid and per and min(per) <= 1 < max(per):
            verdict += " (rounds disagree: within noise)"
        lines.append(
            f"| tollway Redis beats slowapi Redis (req/s ratio > 1) | {fmt(m, '.3f')} "
            f"(CPU µs/req ratio {fmt(cpu, '.3f')}) | {', '.join(f'{x:.3f}' for x in per)} | "
            f"**{verdict}** |"
        )
    if "tollway-memory" in rows and "slowapi-memory" in rows:
        per = pair_ratio(records, "tollway-memory", "slowapi-memory")
        lines.append(
            "| (reference) tollway memory ÷ slowapi memory | "
            f"{fmt(median(per) if per else None, '.3f')} | "
            f"{', '.join(f'{x:.3f}' for x in per)} | — |"
        )

    # Notes
    notes = list(ctx["notes"])
    for r in records:
        if not r["valid"]:
            notes.append(
                f"⚠ round {r['round']} `{r['variant']}` invalid: {'; '.join(r['warnings'])}"
            )
    noisy = [r for r in records if r.get("foreign_share", 0) > NOISY]
    if noisy:
        notes.append(
            "Other processes used more than 10% of a CPU during: "
            + ", ".join(
                f"round {r['round']} `{r['variant']}` ({r['foreign_share']:.0%})" for r in noisy
            )
            + ". Pinning does not keep them off CPU 0/1; those figures are noisier."
        )
    low = [r for r in records if "server_cpu_share" in r and r["server_cpu_share"] < 0.85]
    if low:
        notes.append(
            "The server process used under 85% of its CPU during: "
            + ", ".join(
                f"round {r['round']} `{r['variant']}` ({r['server_cpu_share']:.0%})" for r in low
            )
            + " — it was partly waiting (on Redis, on wrk, or CPU stolen), not CPU-bound."
        )
    for v in variants:
        by_cmd: dict[str, list[float]] = {}
        for r in records:
            if r["variant"] == v and r.get("redis_calls") and r.get("requests"):
                for cmd, n in r["redis_calls"].items():
                    by_cmd.setdefault(cmd, []).append(n / r["requests"])
        if by_cmd:
            notes.append(
                f"Redis commands per request, `{v}` (median over rounds; commands run inside "
                "Lua count too): "
                + ", ".join(f"{c} {median(x):.2f}" for c, x in sorted(by_cmd.items()))
            )
    lines += ["", "## Notes", ""] + ([f"- {n}" for n in notes] if notes else ["- none"])

    v = ctx["versions"]
    lines += [
        "",
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {os.cpu_count()} vCPU, {cpu_model()}, {mem_total()} RAM, "
        f"kernel {platform.release()} |",
        f"| Python | {v['python']} ({sys.executable}) |",
        f"| uvicorn | {v['uvicorn']}, 1 worker, `--loop {ctx['loop']} --http {ctx['http']} "
        f"--no-access-log` (uvloop {v['uvloop']}, httptools {v['httptools']}, h11 {v['h11']}) |",
        f"| starlette | {v['starlette']} |",
        f"| tollway | {v['tollway']}, source fingerprint {ctx['fingerprint']} |",
        f"| slowapi | {v['slowapi']} (limits {v['limits']}) |",
        f"| redis-py | {v['redis']}, hiredis {v['hiredis']} |",
        f"| redis-server | {server_version()} (`--save '' --appendonly no`, 127.0.0.1) |",
        f"| load generator | {wrk.version()} |",
        f"| other processes' CPU while wrk ran | {ctx['foreign']} |",
    ]
    lines += ["", "## Method", ""] + [f"- {m}" for m in ctx["method"]]
    return "\n".join(lines) + "\n", bool(invalid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 round: a smoke check")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    p.add_argument(
        "--duration",
        type=int,
        default=None,
        help="seconds per wrk run (default 10; 3 with --quick)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="seconds of unmeasured load first (default 2; 1 with --quick)",
    )
    p.add_argument("--connections", type=int, default=CONNECTIONS)
    default_variants = [k for k, (_, on) in apps.VARIANTS.items() if on]
    p.add_argument(
        "--variants",
        default=",".join(default_variants),
        help=f"comma-separated subset of {','.join(apps.VARIANTS)}",
    )
    p.add_argument("--output", type=Path, default=REPO / "bench" / "HTTP_RESULTS.md")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 2)
    variants = args.variants.split(",")
    unknown = set(variants) - set(apps.VARIANTS)
    if unknown:
        p.error(f"unknown variants: {sorted(unknown)}")
    if "bare" not in variants:
        variants.insert(0, "bare")
    if shutil.which("wrk") is None:
        p.error("wrk not found: apt-get install -y wrk")
    args.loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    args.http = "httptools" if importlib.util.find_spec("httptools") else "h11"

    import redis as redis_py

    started = datetime.now(timezone.utc)
    outdir = REPO / "bench" / "results" / f"http-{started:%Y%m%dT%H%M%SZ}"
    outdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    allowed = os.sched_getaffinity(0)
    pin = shutil.which("taskset") is not None and {SERVER_CPU, LOAD_CPU} <= allowed
    if not pin:
        notes.append(
            "Could not pin (no taskset or fewer than 2 CPUs): ran unpinned; these "
            "numbers are not comparable with pinned runs."
        )
    fingerprint = tollway_fingerprint()
    print(
        f"bench.http: {len(variants)} variants x {args.rounds} round(s) x {args.duration} s; "
        f"loop {args.loop}, http {args.http}; raw output in {outdir}",
        flush=True,
    )

    redis = RedisServer(REDIS_CPU if pin else None, outdir / "redis-server.log")
    redis.start()
    rclient = redis_py.Redis(host="127.0.0.1", port=redis.port, db=0)
    records: list[dict[str, Any]] = []
    try:
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(variants)
            order = variants[shift:] + variants[:shift]  # rotate: spread drift over variants
            print(f"round {rnd}: {', '.join(order)}", flush=True)
            for v in order:
                records.append(
                    run_variant(
                        v, rnd, args=args, redis=redis, rclient=rclient, outdir=outdir, pin=pin
                    )
                )
    finally:
        rclient.close()
        redis.stop()
    ended = datetime.now(timezone.utc)
    with (outdir / "raw.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    if tollway_fingerprint() != fingerprint:
        notes.append(
            f"⚠ tollway's source changed during the run (fingerprint {fingerprint} → "
            f"{tollway_fingerprint()}): tollway rows may mix versions; rerun."
        )
    shares = sorted(r["foreign_share"] for r in records if "foreign_share" in r)
    foreign = (
        f"median {shares[len(shares) // 2]:.0%}, max {shares[-1]:.0%} of one CPU"
        if shares
        else "not measured"
    )
    cmd = (
        "python -m bench.http.run"
        + (" --quick" if args.quick else "")
        + (f" --rounds {args.rounds} --duration {args.duration}")
    )
    placement = (
        f"Placement (`taskset -c`): uvicorn server alone on CPU {SERVER_CPU}; wrk and "
        f"redis-server together on CPU {LOAD_CPU}. The server is the subject, so it gets a CPU of "
        "its own; wrk (1 thread) and Redis are light and share the other, so a Redis round trip "
        "crosses CPUs as it would to a separate Redis host."
        if pin
        else "Unpinned."
    )
    method = [
        placement,
        f"Each variant runs in its own fresh uvicorn process per round (1 worker, "
        f"`--loop {args.loop} --http {args.http} --no-access-log --log-level warning`), built "
        "by `bench.http.apps:create_app --factory` with the variant in `BENCH_HTTP_VARIANT`; "
        "stopped with SIGTERM by its pid after the run.",
        f"Load: `wrk -t1 -c{args.connections} -d{args.duration}s --latency "
        f"http://127.0.0.1:PORT{apps.PATH}` after a {args.warmup} s unmeasured warm-up run "
        "with the same settings. Loopback only.",
        f"{args.rounds} round(s); the variant order rotates by one each round. Figures are "
        "medians over rounds; ratios are taken within a round, then the median is reported.",
        f"Route: `GET {apps.PATH}` returns `{json.dumps(apps.BODY, separators=(',', ':'))}` "
        "(Starlette `JSONResponse`, 28 bytes).",
        "tollway: `AsyncTollway(policy, store=...)` wrapped as `TollwayMiddleware` with default "
        'options (anonymous subject `ip:127.0.0.1`, `headers="all"`: every response carries '
        "`RateLimit` and `RateLimit-Policy`). Policy: operation `geocode` (endpoint "
        f"`GET {apps.PATH}`, cost 1), plan limits {json.dumps(apps.TOLLWAY_LIMITS)}, store "
        f"{json.dumps(apps.TOLLWAY_STORE)} (a store failure answers 503, so it cannot pass "
        "as a fast 200).",
        f"slowapi: `Limiter(key_func=get_remote_address, storage_uri=...)` and "
        f'`@limiter.limit("{apps.SLOWAPI_LIMITS}")` on the route (slowapi\'s documented '
        "usage; fixed-window strategy by default, `headers_enabled=False` by default, so it "
        "sends no rate-limit headers). Both libraries count one key per client address "
        "(127.0.0.1) and apply a 10⁶/s rate and a 10⁹/hour quota: nothing is ever denied.",
        "Validity: every variant must answer 200 before and after its run, wrk must report 0 "
        "'Non-2xx or 3xx responses' (wrk counts statuses >= 400 there) and 0 socket errors, "
        "tollway responses must carry a `RateLimit` header, and Redis variants must send "
        "commands to Redis (INFO commandstats, reset after the warm-up; it counts commands "
        "run inside Lua too). Otherwise the variant is marked INVALID and the exit status is 1.",
        "Redis is flushed (FLUSHDB) before each Redis variant's server starts.",
        "Server CPU is the uvicorn process's utime+stime over the wrk run (/proc/PID/stat); "
        "'other processes' CPU' = machine busy time minus the server, redis-server, wrk and "
        "this harness.",
        "This VM has 2 vCPUs and is shared: differences of a few percent are within noise; "
        "look at the per-round values and the CPU ratio before drawing conclusions.",
    ]
    ctx = {
        "quick": args.quick,
        "started": started,
        "ended": ended,
        "command": cmd,
        "outdir": outdir.relative_to(REPO),
        "rounds": args.rounds,
        "duration": args.duration,
        "notes": notes,
        "versions": versions(),
        "loop": args.loop,
        "http": args.http,
        "fingerprint": fingerprint,
        "foreign": foreign,
        "method": method,
    }
    doc, failed = render(records, variants, ctx)
    args.output.write_text(doc)
    print(doc)
    print(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
