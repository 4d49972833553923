"""In-memory subjects, one thread: a pure-Python dict counter (the floor), tollway, peers."""

from __future__ import annotations

import time
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


class DictCounter:
    """The floor: a fixed-window counter in six lines of plain Python (a dict + monotonic)."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit, self.period, self.state = limit, period, {}

    def hit(self, key: str) -> bool:
        window = int(time.monotonic() // self.period)
        start, count = self.state.get(key, (window, 0))
        count = count if start == window else 0
        self.state[key] = (window, count + 1)
        return count < self.limit


def _floor(three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        key = ctx.key
        if not three:
            hit = DictCounter(ONE_PER_MINUTE, 60).hit
            return (lambda: hit(key)), closer()
        a, b, c = (DictCounter(n, p).hit for n, p in zip(THREE, (1, 3600, 86400), strict=True))
        return (lambda: a(key) and b(key) and c(key)), closer()

    return setup


def _tollway(three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        tw = load_tollway("Tollway")(tollway_policy(three), store="memory://")
        call, stats = tollway_call(tw.acquire, ctx.key)
        return call, closer(tw.close), stats

    return setup


def _limits_fixed_window(three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        from limits import (
            RateLimitItemPerDay,
            RateLimitItemPerHour,
            RateLimitItemPerMinute,
            RateLimitItemPerSecond,
        )
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter

        storage = MemoryStorage()
        hit, key = FixedWindowRateLimiter(storage).hit, ctx.key
        done = closer(storage.timer.cancel)
        if not three:
            item = RateLimitItemPerMinute(ONE_PER_MINUTE)
            return (lambda: hit(item, key)), done
        s = RateLimitItemPerSecond(THREE[0])
        h = RateLimitItemPerHour(THREE[1])
        d = RateLimitItemPerDay(THREE[2])
        return (lambda: hit(s, key) and hit(h, key) and hit(d, key)), done

    return setup


def _throttled(algo: str, three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        from throttled import MemoryStore, Throttled, per_day, per_hour, per_min, per_sec

        store = MemoryStore()
        if not three:
            quota = per_min(ONE_PER_MINUTE)
            limit = Throttled(key=ctx.key, using=algo, quota=quota, store=store).limit
            return (lambda: not limit().limited), closer()
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


def _pyrate(three: bool) -> Setup:
    def setup(ctx: Ctx) -> Any:
        from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

        if three:
            rates = [
                Rate(THREE[0], Duration.SECOND),
                Rate(THREE[1], Duration.HOUR),
                Rate(THREE[2], Duration.DAY),
            ]
        else:
            rates = [Rate(ONE_PER_MINUTE, Duration.MINUTE)]
        limiter = Limiter(InMemoryBucket(rates))
        acquire, key = limiter.try_acquire, ctx.key
        return (lambda: acquire(key, blocking=False)), closer(limiter.close)

    return setup


def floor(three: bool) -> Subject:
    what = "3 dict counters in turn" if three else "dict counter"
    return Subject(f"floor: pure-Python {what}", FLOOR, _floor(three))


def subjects(three: bool) -> list[Subject]:
    tw = (
        "tollway memory:// (rate + quota + budget)" if three else "tollway memory:// (1 rate limit)"
    )
    suffix = " (3 limits)" if three else ""
    return [
        Subject(tw, TOLLWAY, _tollway(three)),
        Subject(f"limits.FixedWindow MemoryStorage{suffix}", PEER, _limits_fixed_window(three)),
        *(
            Subject(f"throttled.{a} MemoryStore{suffix}", PEER, _throttled(a, three))
            for a in ("fixed_window", "gcra")
        ),
        Subject(f"pyrate.SlidingWindowLog InMemoryBucket{suffix}", PEER, _pyrate(three)),
    ]
