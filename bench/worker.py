"""One benchmark pass in a fresh interpreter: ``python -m bench.worker --url ... --config A``.

Prints one JSON line per measurement on stdout (and one ``meta`` line first); everything
else goes to stderr. Run by ``bench.run`` under ``taskset``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import traceback
from importlib import metadata
from typing import Any

from bench import peers_async, peers_memory, peers_redis
from bench.common import FLOOR, Ctx, Subject, Unavailable, tollway_fingerprint, tollway_origin
from bench.measure import time_async, time_sync
from bench.probe import PROBE_CALLS, RoundTrips

# group -> (title, which counts to use, is_async, uses_redis)
GROUPS: dict[str, tuple[str, str, bool, bool]] = {
    "redis1": ("Sync Redis, one thread, 1 limit", "redis", False, True),
    "redis3": ("Sync Redis, one thread, 3 limits", "three", False, True),
    "async50": (f"Async Redis, {peers_async.TASKS} concurrent tasks", "async", True, True),
    "memory1": ("In memory, one thread, 1 limit", "memory", False, False),
    "memory3": ("In memory, one thread, 3 limits", "memory3", False, False),
}

# name -> (timed calls, warm-up calls)
COUNTS = {
    "full": {
        "redis": (20_000, 2_000),
        "three": (10_000, 1_000),
        "async": (20_000, 2_000),
        "memory": (200_000, 20_000),
        "memory3": (100_000, 10_000),
    },
    "quick": {
        "redis": (2_000, 200),
        "three": (1_000, 100),
        "async": (2_000, 500),
        "memory": (20_000, 2_000),
        "memory3": (10_000, 1_000),
    },
}


def subjects_for(group: str) -> tuple[Subject, list[Subject]]:
    if group == "redis1":
        return peers_redis.FLOOR_SUBJECT, peers_redis.one_limit()
    if group == "redis3":
        return peers_redis.FLOOR_SUBJECT, peers_redis.three_limits()
    if group == "async50":
        return peers_async.FLOOR_SUBJECT, peers_async.subjects()
    three = group == "memory3"
    return peers_memory.floor(three), peers_memory.subjects(three)


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in (
        "redis",
        "hiredis",
        "limits",
        "coredis",
        "pyrate-limiter",
        "throttled-py",
        "tollway",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        from redis.utils import HIREDIS_AVAILABLE

        out["hiredis_in_use"] = bool(HIREDIS_AVAILABLE)
    except ImportError:
        out["hiredis_in_use"] = None
    out["tollway_origin"] = tollway_origin()
    out["tollway_fingerprint"] = tollway_fingerprint()
    return out


# Admin traffic on our own connection, left out of the per-call command counts.
ADMIN_COMMANDS = ("config", "info", "flushdb", "client", "hello")


def reset_server(url: str) -> None:
    """FLUSHDB and zero the command statistics before a subject (outside its timing)."""
    import redis

    with redis.Redis.from_url(url) as r:
        r.flushdb()
        r.config_resetstat()


def commands_per_call(url: str, calls: int) -> dict[str, float]:
    """Redis commands the subject sent per call (warm-up included), from INFO commandstats."""
    import redis

    with redis.Redis.from_url(url) as r:
        stats = r.info("commandstats")
    out = {}
    for name, value in stats.items():
        cmd = name.removeprefix("cmdstat_")
        if cmd.split("|", 1)[0] not in ADMIN_COMMANDS and calls:
            out[cmd] = round(int(value["calls"]) / calls, 3)
    return out


def measure_one(
    subject: Subject, group: str, idx: int, args: argparse.Namespace, counts: tuple[int, int]
) -> dict[str, Any]:
    _, _, is_async, uses_redis = GROUPS[group]
    n, warm = counts
    ctx = Ctx(url=args.url, key=f"bench:{group}:{idx}:client-1")
    if uses_redis:
        reset_server(args.url)
    if is_async:

        async def go() -> dict[str, Any]:
            call, close, *stats = await subject.setup(ctx)
            try:
                out = await time_async(call, n, warm, peers_async.TASKS)
                for fn in stats:
                    out.update(fn())
                with RoundTrips(args.url) as rt:
                    for _ in range(PROBE_CALLS):
                        await call()
                    out["round_trips"] = rt.per_call()
                return out
            finally:
                await close()

        result = asyncio.run(go())
    else:
        call, close, *stats = subject.setup(ctx)
        try:
            result = time_sync(call, n, warm)
            for fn in stats:
                result.update(fn())
            if uses_redis:
                with RoundTrips(args.url) as rt:
                    for _ in range(PROBE_CALLS):
                        call()
                    result["round_trips"] = rt.per_call()
        finally:
            close()
    if uses_redis:
        calls = result["calls_total"] + PROBE_CALLS
        result["cmds_per_call"] = commands_per_call(args.url, calls)
    result["warnings"] = sanity(result, uses_redis)
    return result


def sanity(result: dict[str, Any], uses_redis: bool) -> list[str]:
    """Reasons this measurement is not what it claims to be (flagged in the report)."""
    out = []
    if result["denied"]:
        out.append(f"{result['denied']} calls denied (limits are meant never to deny)")
    if result.get("degraded"):
        out.append(f"{result['degraded']} degraded decisions (store not asked: fail-open/closed)")
    if uses_redis:
        sent = sum(v for k, v in result["cmds_per_call"].items() if k != "monitor")
        if sent < 0.5:
            out.append(f"Redis ran only {sent:.2f} commands per call: did it reach Redis?")
    return out


def run_group(group: str, args: argparse.Namespace, counts: tuple[int, int]) -> None:
    floor, subjects = subjects_for(group)
    # The floor runs before and after the subjects; their mean is this group's reference.
    plan = [(floor, "before"), *((s, "") for s in subjects), (floor, "after")]
    for idx, (subject, phase) in enumerate(plan):
        rec: dict[str, Any] = {
            "type": "measurement",
            "name": subject.name,
            "kind": subject.kind,
            "group": group,
            "config": args.config,
            "round": args.round,
            "phase": phase,
        }
        try:
            rec.update(measure_one(subject, group, idx, args, counts))
            rec["status"] = "ok"
        except Unavailable as exc:
            rec.update(status="unavailable", error=str(exc))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            rec.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
        if subject.kind == FLOOR and rec["status"] != "ok":
            rec["fatal"] = True
        print(json.dumps(rec), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="redis://127.0.0.1:PORT/0 (loopback only)")
    p.add_argument("--config", required=True)
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if not args.url.startswith(("redis://127.0.0.1:", "redis://localhost:")):
        p.error("load only goes to loopback: --url must be redis://127.0.0.1:PORT/...")
    counts = COUNTS["quick" if args.quick else "full"]
    print(
        json.dumps(
            {"type": "meta", "config": args.config, "round": args.round, "versions": versions()}
        ),
        flush=True,
    )
    for group in args.groups.split(","):
        run_group(group, args, counts[GROUPS[group][1]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
