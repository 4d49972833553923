"""Sync Redis subjects: the EVALSHA floor, tollway and peers, with one limit and three limits."""

from __future__ import annotations

from typing import Any

from bench.common import (
    FLOOR,
    ONE_PER_MINUTE,
    PEER,
    THREE,
    TOLLWAY,
    Ctx,
    Setup,
    Subject,
    closer,
    load_tollway,
    tollway_call,
    tollway_policy,
)

LIMITS_STRATEGIES = ("FixedWindow", "SlidingWindowCounter", "MovingWindow")
THROTTLED_ALGOS = ("fixed_window", "gcra")


def _floor(ctx: Ctx) -> Any:
    import redis

    r = redis.Redis.from_url(ctx.url)
    sha = r.script_load("return 1")
    return (lambda: r.evalsha(sha, 0)), closer(r.close)


def _tollway(three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        tw = load_tollway("Tollway")(tollway_policy(three), store=ctx.url)
        call, stats = tollway_call(tw.acquire, ctx.key)
        return call, closer(tw.close), stats

    return setup


def _limits(strategy: str, three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        from limits import (
            RateLimitItemPerDay,
            RateLimitItemPerHour,
            RateLimitItemPerMinute,
            RateLimitItemPerSecond,
            strategies,
        )
        from limits.storage import RedisStorage

        storage = RedisStorage(ctx.url)
        hit = getattr(strategies, f"{strategy}RateLimiter")(storage).hit
        key = ctx.key
        done = closer(storage.storage.close)
        if not three:
            item = RateLimitItemPerMinute(ONE_PER_MINUTE)
            return (lambda: hit(item, key)), done
        s = RateLimitItemPerSecond(THREE[0])
        h = RateLimitItemPerHour(THREE[1])
        d = RateLimitItemPerDay(THREE[2])
        # Flask-Limiter style: each limit in turn, stop at the first that refuses.
        return (lambda: hit(s, key) and hit(h, key) and hit(d, key)), done

    return setup


def _pyrate(three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        import redis
        from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

        if three:
            rates = [
                Rate(THREE[0], Duration.SECOND),
                Rate(THREE[1], Duration.HOUR),
                Rate(THREE[2], Duration.DAY),
            ]
        else:
            rates = [Rate(ONE_PER_MINUTE, Duration.MINUTE)]
        r = redis.Redis.from_url(ctx.url)
        limiter = Limiter(RedisBucket.init(rates, r, f"{ctx.key}:pyrate"))
        acquire, key = limiter.try_acquire, ctx.key
        return (lambda: acquire(key, blocking=False)), closer(limiter.close, r.close)

    return setup


def _throttled(algo: str, three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        from throttled import RedisStore, Throttled, per_day, per_hour, per_min, per_sec

        store = RedisStore(server=ctx.url)
        if not three:
            t = Throttled(key=ctx.key, using=algo, quota=per_min(ONE_PER_MINUTE), store=store)
            limit = t.limit
            return (lambda: not limit().limited), closer()
        # One Throttled per quota (it takes one quota each), each on its own key.
        a, b, c = (
            Throttled(key=f"{ctx.key}:{suffix}", using=algo, quota=quota, store=store).limit
            for suffix, quota in (
                ("s", per_sec(THREE[0])),
                ("h", per_hour(THREE[1])),
                ("d", per_day(THREE[2])),
            )
        )
        return (lambda: not a().limited and not b().limited and not c().limited), closer()

    return setup


FLOOR_SUBJECT = Subject("floor: redis-py EVALSHA 'return 1'", FLOOR, _floor)


def one_limit() -> list[Subject]:
    return [
        Subject("tollway (1 rate limit)", TOLLWAY, _tollway(False)),
        *(Subject(f"limits.{s}", PEER, _limits(s, False)) for s in LIMITS_STRATEGIES),
        Subject("pyrate.SlidingWindowLog (RedisBucket)", PEER, _pyrate(False)),
        *(Subject(f"throttled.{a}", PEER, _throttled(a, False)) for a in THROTTLED_ALGOS),
    ]


def three_limits() -> list[Subject]:
    return [
        Subject("tollway (rate + quota + budget, 1 acquire)", TOLLWAY, _tollway(True)),
        *(Subject(f"limits.{s} (3 hits)", PEER, _limits(s, True)) for s in LIMITS_STRATEGIES),
        Subject("pyrate.SlidingWindowLog (1 bucket, 3 rates)", PEER, _pyrate(True)),
        *(
            Subject(f"throttled.{a} (3 Throttled)", PEER, _throttled(a, True))
            for a in THROTTLED_ALGOS
        ),
    ]
