"""Async Redis subjects at N concurrent tasks: redis.asyncio EVALSHA floor, tollway, peers.

Every client gets a connection pool of at most ``TASKS`` connections.
"""

from __future__ import annotations

from typing import Any

from bench.common import (
    FLOOR,
    ONE_PER_MINUTE,
    PEER,
    TOLLWAY,
    Ctx,
    Setup,
    Subject,
    load_tollway,
    tollway_acall,
    tollway_policy,
)

TASKS = 50


async def _floor(ctx: Ctx) -> Any:
    import redis.asyncio as aredis

    pool = aredis.ConnectionPool.from_url(ctx.url, max_connections=TASKS)
    r = aredis.Redis(connection_pool=pool)
    sha = await r.script_load("return 1")

    async def close() -> None:
        await r.aclose()
        await pool.disconnect()

    return (lambda: r.evalsha(sha, 0)), close


async def _tollway(ctx: Ctx) -> Any:
    atw = load_tollway("AsyncTollway")(tollway_policy(False), store=ctx.url)
    call, stats = tollway_acall(atw.acquire, ctx.key)
    return call, atw.aclose, stats


def _limits(strategy: str) -> Setup:
    async def setup(ctx: Ctx) -> Any:
        from limits import RateLimitItemPerMinute
        from limits.aio import strategies
        from limits.aio.storage import RedisStorage

        storage = RedisStorage("async+" + ctx.url, implementation="redispy", max_connections=TASKS)
        hit = getattr(strategies, f"{strategy}RateLimiter")(storage).hit
        item, key = RateLimitItemPerMinute(ONE_PER_MINUTE), ctx.key

        async def close() -> None:
            client = getattr(storage.bridge, "storage", None)
            if client is not None:
                await client.aclose()

        return (lambda: hit(item, key)), close

    return setup


def _throttled(algo: str) -> Setup:
    async def setup(ctx: Ctx) -> Any:
        from throttled.asyncio import RedisStore, Throttled, per_min

        store = RedisStore(
            server=ctx.url, options={"CONNECTION_POOL_KWARGS": {"max_connections": TASKS}}
        )
        limit = Throttled(key=ctx.key, using=algo, quota=per_min(ONE_PER_MINUTE), store=store).limit

        async def call() -> bool:
            return not (await limit()).limited

        async def close() -> None:
            return None

        return call, close

    return setup


FLOOR_SUBJECT = Subject(f"floor: redis.asyncio EVALSHA 'return 1', {TASKS} tasks", FLOOR, _floor)


def subjects() -> list[Subject]:
    return [
        Subject(f"tollway AsyncTollway (1 rate limit), {TASKS} tasks", TOLLWAY, _tollway),
        *(
            Subject(f"limits.aio[redispy].{s}", PEER, _limits(s))
            for s in ("FixedWindow", "SlidingWindowCounter")
        ),
        *(Subject(f"throttled.asyncio.{a}", PEER, _throttled(a)) for a in ("fixed_window", "gcra")),
    ]
