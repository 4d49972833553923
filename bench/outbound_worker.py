"""One pass of the router benchmark in a fresh interpreter (run by ``bench.outbound``).

``python -m bench.outbound_worker --url redis://127.0.0.1:PORT/0 --config A --round 1``
prints one JSON line per measurement on stdout (a ``meta`` line first); everything else goes
to stderr. ``--profile`` instead runs one route subject under cProfile and prints one
``profile`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from bench.common import FLOOR, RATE_LIMIT, TOLLWAY, Ctx, Subject, closer, load_tollway
from bench.measure import time_sync
from bench.peers_redis import FLOOR_SUBJECT
from bench.probe import PROBE_CALLS, RoundTrips
from bench.worker import commands_per_call, reset_server, versions

# name -> (timed calls, warm-up calls)
COUNTS = {"full": (10_000, 1_000), "quick": (1_000, 100)}
PROFILE_CALLS = 3_000

PRICE = Decimal("0.005")
# Huge limits: nothing is ever denied. A rate of one unit per µs (tollway's cap) with a burst
# of 10**7, a daily quota of 10**9 and a daily budget that 10**8 calls would not use up.
QUOTA = {"name": "daily", "quota": "1000000000/day"}
BUDGET = {"name": "budget", "budget": "1000000.00 USD/day"}
LIMITS = [RATE_LIMIT, QUOTA, BUDGET]
SPENT_QUOTA = 1  # the failover route's first provider: a daily quota used up in setup


def policy() -> dict[str, Any]:
    limits = [dict(limit) for limit in LIMITS]
    spent = [RATE_LIMIT, {**QUOTA, "quota": f"{SPENT_QUOTA}/day"}, BUDGET]
    return {
        "defaults": {"plan": "bench"},
        "operations": {"call": {"cost": 1, "price": f"{PRICE} USD"}},
        "plans": {"bench": {"limits": limits}},
        "providers": {
            "primary": {"price": f"{PRICE} USD", "limits": limits},
            "secondary": {"price": f"{PRICE} USD", "limits": [dict(x) for x in LIMITS]},
            "spent": {"price": f"{PRICE} USD", "limits": [dict(x) for x in spent]},
        },
        "routes": {
            "main": {"providers": ["primary", "secondary"]},
            "failover": {"providers": ["spent", "secondary"]},
        },
    }


class Tally:
    """What the calls of one subject did: counted in the loop, checked after it."""

    def __init__(self, provider: str | None, skips: tuple[tuple[str, str], ...]) -> None:
        self.provider = provider
        self.skips = skips
        self.made = 0
        self.degraded = 0
        self.wrong_provider = 0
        self.wrong_skips = 0

    def note(self, provider: str | None, skipped: Any, *decisions: Any) -> bool:
        self.made += 1
        if provider != self.provider:
            self.wrong_provider += 1
        if len(skipped) != len(self.skips) or (
            skipped and tuple((s.provider, s.reason) for s in skipped) != self.skips
        ):
            self.wrong_skips += 1
        allowed = True
        for d in decisions:
            if d.degraded:
                self.degraded += 1
            allowed = allowed and d.allowed
        return allowed

    def fields(self) -> dict[str, Any]:
        return {
            "degraded": self.degraded,
            "made": self.made,
            "wrong_provider": self.wrong_provider,
            "wrong_skips": self.wrong_skips,
        }


def spend_checks(made: int, state: Any, who: str) -> list[str]:
    """``state`` has ``limit(name)``: its budget must be made x price, its quota made."""
    out = []
    spent = state.limit("budget").used
    if spent != made * PRICE:
        out.append(f"{who}: budget used {spent} USD, expected {made} x {PRICE} = {made * PRICE}")
    used = state.limit("daily").used
    if used != made:
        out.append(f"{who}: daily quota used {used}, expected {made}")
    return out


def _tollway(ctx: Ctx) -> Any:
    return load_tollway("Tollway")(policy(), store=ctx.url)


def _route(route_name: str, provider: str, skips: tuple[tuple[str, str], ...], use_run: bool):
    def setup(ctx: Ctx) -> Any:
        tw = _tollway(ctx)
        route = tw.route(route_name)
        if skips:  # use up the first provider's quota before timing
            for _ in range(SPENT_QUOTA):
                with route.call() as c:
                    c.commit()
        tally = Tally(provider, skips)
        note = tally.note

        if use_run:

            def noop(p: str) -> None:
                return None

            def call() -> bool:
                out = route.run(noop)
                return note(out.provider, out.skipped, out.decision)

        else:

            def call() -> bool:
                with route.call() as c:
                    d = c.commit()
                return note(c.provider, c.skipped, c.decision, d)

        def stats() -> dict[str, Any]:
            status = route.status()
            problems = spend_checks(tally.made, status[provider], provider)
            for p, _ in skips:
                problems += spend_checks(SPENT_QUOTA, status[p], p)
            spent = status[provider].limit("budget").used
            return {**tally.fields(), "checks": problems, "spent": f"{provider} {spent} USD"}

        return call, closer(tw.close), stats, tw

    return setup


def _acquire(ctx: Ctx) -> Any:
    tw = _tollway(ctx)
    tally = Tally(None, ())
    acquire, note, key = tw.acquire, tally.note, ctx.key

    def call() -> bool:
        return note(None, (), acquire(key, "call"))

    def stats() -> dict[str, Any]:
        usage = tw.usage(key)
        spent = f"{key} {usage.limit('budget').used} USD"
        return {**tally.fields(), "checks": spend_checks(tally.made, usage, key), "spent": spent}

    return call, closer(tw.close), stats, tw


def _reserve(ctx: Ctx) -> Any:
    tw = _tollway(ctx)
    tally = Tally(None, ())
    reserve, note, key = tw.reserve, tally.note, ctx.key

    def call() -> bool:
        r = reserve(key, "call")
        return note(None, (), r.decision, r.commit())

    def stats() -> dict[str, Any]:
        usage = tw.usage(key)
        spent = f"{key} {usage.limit('budget').used} USD"
        return {**tally.fields(), "checks": spend_checks(tally.made, usage, key), "spent": spent}

    return call, closer(tw.close), stats, tw


def _provider_step(ctx: Ctx) -> Any:
    """Not the router: the provider's step alone (`Engine.provider` in acquire mode through
    `Driver.decide`: no choice, no `Call`, no `LimitState`s), the least a routed call that
    takes one round trip can cost; the router's own overhead is the difference."""
    from tollway.engine.step import ACQUIRE

    tw = _tollway(ctx)
    route = tw.route("main")
    engine, decide = tw.engine, tw.driver.decide
    tally = Tally("primary", ())
    note = tally.note

    def step() -> Any:
        return engine.provider("primary", None, None, ACQUIRE)

    def call() -> bool:
        return note("primary", (), decide(step))

    def stats() -> dict[str, Any]:
        status = route.status()
        spent = status["primary"].limit("budget").used
        checks = spend_checks(tally.made, status["primary"], "primary")
        return {**tally.fields(), "checks": checks, "spent": f"primary {spent} USD"}

    return call, closer(tw.close), stats, tw


SUBJECTS: list[Subject] = [
    Subject("route.call() + call.commit()", TOLLWAY, _route("main", "primary", (), False)),
    Subject("route.run(lambda p: None)", TOLLWAY, _route("main", "primary", (), True)),
    Subject(
        "failover: route.call() + commit, 1st provider's quota used up",
        TOLLWAY,
        _route("failover", "secondary", (("spent", "daily"),), False),
    ),
    Subject("ref: tw.acquire (same 3 limits, a plan)", TOLLWAY, _acquire),
    Subject("ref: tw.reserve() + commit() (a plan)", TOLLWAY, _reserve),
    Subject("ref: the provider's step alone (no router)", TOLLWAY, _provider_step),
]
CALL_COMMIT = SUBJECTS[0].name
RUN = SUBJECTS[1].name


def server_us(url: str, calls: int) -> float:
    """Time Redis spent in the subject's scripts per call (EVALSHA's own ``usec`` in INFO
    commandstats; it includes the commands the script ran)."""
    import redis

    with redis.Redis.from_url(url) as r:
        stats = r.info("commandstats")
    usec = sum(int(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("evalsha", "eval"))
    return usec / calls if calls else 0.0


@contextlib.contextmanager
def replaying(tw: Any, call: Callable[[], object]) -> Iterator[None]:
    """Inside: the store's Redis client answers every EVALSHA from replies recorded on 20
    real calls (same script and keys), so neither redis-py nor Redis is in the time; only
    tollway's own Python (and the bench loop) is left."""
    client = tw.store.client
    real = client.evalsha
    replies: dict[tuple[Any, ...], Any] = {}

    def record(sha: str, numkeys: int, *args: Any) -> Any:
        out = real(sha, numkeys, *args)
        replies[(sha, *args[:numkeys])] = out
        return out

    def replay(sha: str, numkeys: int, *args: Any) -> Any:
        return replies[(sha, *args[:numkeys])]

    client.evalsha = record
    try:
        for _ in range(20):
            call()
        client.evalsha = replay
        yield
    finally:
        del client.evalsha  # the class's method again


def replayed_us(tw: Any, call: Callable[[], object], n: int) -> float:
    """tollway's own Python per call (see `replaying`); run after the validity reads."""
    with replaying(tw, call):
        result = time_sync(call, n, n // 10)
    return 1e6 / result["calls_per_s"]


def measure_one(subject: Subject, idx: int, args: argparse.Namespace) -> dict[str, Any]:
    n, warm = COUNTS["quick" if args.quick else "full"]
    ctx = Ctx(url=args.url, key=f"bench:outbound:{idx}:client-1")
    reset_server(args.url)
    call, close, *more = subject.setup(ctx)
    stats: Callable[[], dict[str, Any]] = more[0] if more else dict
    tw = more[1] if len(more) > 1 else None
    try:
        cpu0 = time.process_time_ns()
        result = time_sync(call, n, warm)
        result["client_cpu_us"] = (time.process_time_ns() - cpu0) / 1000 / result["calls_total"]
        with RoundTrips(args.url) as rt:
            for _ in range(PROBE_CALLS):
                call()
            result["round_trips"] = rt.per_call()
        calls = result["calls_total"] + PROBE_CALLS
        result["cmds_per_call"] = commands_per_call(args.url, calls)
        result["server_us"] = server_us(args.url, calls)
        result.update(stats())  # the validity reads come last: not in the command counts
        if tw is not None:
            result["python_us"] = replayed_us(tw, call, max(500, n // 2))
    finally:
        close()
    result["warnings"] = sanity(result, calls)
    return result


def sanity(result: dict[str, Any], calls: int) -> list[str]:
    """Reasons this measurement is not what it claims to be (flagged in the report)."""
    out = []
    if result["denied"]:
        out.append(f"{result['denied']} calls denied (limits are meant never to deny)")
    if result.get("degraded"):
        out.append(f"{result['degraded']} degraded decisions (store not asked: fail-open/closed)")
    if result.get("wrong_provider"):
        out.append(f"{result['wrong_provider']} calls went to another provider than expected")
    if result.get("wrong_skips"):
        out.append(f"{result['wrong_skips']} calls skipped other providers than expected")
    if "made" in result and result["made"] != calls:
        out.append(f"{result['made']} calls counted, {calls} made")
    out += result.get("checks", [])
    sent = sum(v for k, v in result["cmds_per_call"].items() if k != "monitor")
    if sent < 0.5:
        out.append(f"Redis ran only {sent:.2f} commands per call: did it reach Redis?")
    return out


def run_all(args: argparse.Namespace) -> None:
    plan = [(FLOOR_SUBJECT, "before"), *((s, "") for s in SUBJECTS), (FLOOR_SUBJECT, "after")]
    for idx, (subject, phase) in enumerate(plan):
        rec: dict[str, Any] = {
            "type": "measurement",
            "name": subject.name,
            "kind": subject.kind,
            "group": "outbound",
            "config": args.config,
            "round": args.round,
            "phase": phase,
        }
        try:
            rec.update(measure_one(subject, idx, args))
            rec["status"] = "ok"
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            rec.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
        if subject.kind == FLOOR and rec["status"] != "ok":
            rec["fatal"] = True
        print(json.dumps(rec), flush=True)


def area(filename: str, func: str) -> str:
    """Where a profiled function lives, for the per-call breakdown."""
    if "<method 'recv" in func or "<method 'send" in func:
        return "socket send/recv (waits for Redis)"
    for part, name in (
        ("tollway/outbound/", "tollway router (outbound/)"),
        ("tollway/engine/decision", "tollway Decision / LimitState"),
        ("tollway/engine/", "tollway engine (step building)"),
        ("tollway/stores/", "tollway Redis store + codec"),
        ("tollway/reservation", "tollway Reservation (settle)"),
        ("tollway/", "tollway other"),
        ("redis/", "redis-py (command, pool, parser)"),
        ("hiredis", "redis-py (command, pool, parser)"),
        ("uuid", "uuid4 (hold id)"),
        ("decimal", "Decimal"),
        ("datetime", "datetime"),
    ):
        if part in filename or part in func:
            return name
    return "other (builtins, bench loop)"


def _stats(prof: cProfile.Profile) -> list[tuple[str, str, float, float, int]]:
    """(filename, where, own s, cumulative s, calls) per profiled function."""
    st = pstats.Stats(prof, stream=io.StringIO())
    out = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in st.stats.items():  # type: ignore[attr-defined]
        where = f"{filename.split('site-packages/')[-1].split('src/')[-1]}:{line}({func})"
        out.append((filename, where, tottime, cumtime, ncalls))
    return out


def _profiled(call: Callable[[], object]) -> tuple[cProfile.Profile, float]:
    prof = cProfile.Profile()
    start = time.perf_counter_ns()
    prof.enable()
    for _ in range(PROFILE_CALLS):
        call()
    prof.disable()
    return prof, (time.perf_counter_ns() - start) / 1000 / PROFILE_CALLS


def profile(args: argparse.Namespace) -> None:
    """cProfile one subject over PROFILE_CALLS calls: own time per call by area and the top
    functions; then the same with Redis replies replayed (tollway's Python alone), where each
    tollway function's share of the profile is scaled to the unprofiled replayed µs per call.
    cProfile slows Python code down (about 2x): read shares, or the scaled figures."""
    subject = {s.name: s for s in [FLOOR_SUBJECT, *SUBJECTS]}[args.profile]
    reset_server(args.url)
    call, close, *more = subject.setup(Ctx(url=args.url, key="bench:outbound:profile"))
    tw = more[1] if len(more) > 1 else None
    replayed: list[dict[str, Any]] = []
    py_us = None
    try:
        for _ in range(1_000):
            call()
        prof, wall_us = _profiled(call)
        if tw is not None:
            with replaying(tw, call):
                py_us = 1e6 / time_sync(call, PROFILE_CALLS, 300)["calls_per_s"]
                rprof, rwall_us = _profiled(call)
            for filename, where, _, cum, ncalls in _stats(rprof):
                if "tollway/" in filename:
                    share = cum * 1e6 / PROFILE_CALLS / rwall_us
                    replayed.append(
                        {"func": where, "share": share, "est_us": share * py_us, "calls": ncalls}
                    )
            replayed.sort(key=lambda r: -r["share"])
    finally:
        close()
    areas: dict[str, float] = {}
    funcs = []
    for filename, where, own, cum, ncalls in _stats(prof):
        label = area(filename, where)
        areas[label] = areas.get(label, 0.0) + own
        funcs.append((own, cum, ncalls, where))
    funcs.sort(reverse=True)
    per = 1e6 / PROFILE_CALLS
    rec = {
        "type": "profile",
        "config": args.config,
        "subject": subject.name,
        "calls": PROFILE_CALLS,
        "wall_us_per_call": wall_us,
        "areas_us": {k: v * per for k, v in sorted(areas.items(), key=lambda kv: -kv[1])},
        "top": [
            {"func": w, "tottime_us": t * per, "cumtime_us": c * per, "calls": n / PROFILE_CALLS}
            for t, c, n, w in funcs[:25]
        ],
        "python_us": py_us,
        "replayed": [{**r, "calls": r["calls"] / PROFILE_CALLS} for r in replayed[:30]],
    }
    print(json.dumps(rec), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="redis://127.0.0.1:PORT/0 (loopback only)")
    p.add_argument("--config", required=True)
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--profile", metavar="SUBJECT", help="cProfile this subject instead")
    args = p.parse_args(argv)
    if not args.url.startswith(("redis://127.0.0.1:", "redis://localhost:")):
        p.error("load only goes to loopback: --url must be redis://127.0.0.1:PORT/...")
    meta = {"type": "meta", "config": args.config, "round": args.round, "versions": versions()}
    print(json.dumps(meta), flush=True)
    if args.profile:
        profile(args)
    else:
        run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
