"""The apps under test: one minimal Starlette app, wrapped per variant.

uvicorn builds it with ``--factory bench.http.apps:create_app``; the variant comes from the
environment (``BENCH_HTTP_VARIANT``, and ``BENCH_HTTP_REDIS_URL`` for the Redis variants), so
every variant runs in its own server process from the same module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PATH = "/v1/geocode"
BODY = {"lat": 48.8566, "lon": 2.3522}

# Equivalent limits for both libraries, huge so nothing is ever denied at benchmark speeds:
# a rate of 10**6 per second and a quota of 10**9 per hour, counted per client address.
# tollway caps a rate at one unit per microsecond; its burst keeps the bucket from emptying.
SLOWAPI_LIMITS = "1000000/second;1000000000/hour"
TOLLWAY_LIMITS: list[dict[str, Any]] = [
    {"name": "burst", "rate": "1000000/s", "burst": 10_000_000},
    {"name": "hourly", "quota": "1000000000/hour"},
]
# A store failure must show as a non-2xx response (on_error closed), never as a fast
# fail-open 200; the timeout is generous because the benchmark measures throughput, not
# failure handling (slowapi's Redis client has no timeout at all).
TOLLWAY_STORE: dict[str, Any] = {"timeout_ms": 1000, "on_error": "closed"}

VARIANTS = {
    # name: (description, default?)
    "bare": ("Starlette, no middleware", True),
    "tollway-memory": ("TollwayMiddleware, AsyncTollway store=memory://", True),
    "tollway-redis": ("TollwayMiddleware, AsyncTollway store=redis://", True),
    "slowapi-redis": ("slowapi @limiter.limit on the route, storage_uri=redis://", True),
    "slowapi-memory": ("slowapi @limiter.limit on the route, storage_uri=memory://", True),
    # Extra variants, only with --variants:
    "tollway-memory-noheaders": ("TollwayMiddleware headers='none', memory://", False),
    "tollway-redis-noheaders": ("TollwayMiddleware headers='none', redis://", False),
    "slowapi-redis-asgi": ("slowapi SlowAPIASGIMiddleware + default_limits, redis://", False),
    "slowapi-redis-mw": ("slowapi SlowAPIMiddleware (BaseHTTPMiddleware), redis://", False),
}


def tollway_policy() -> dict[str, Any]:
    return {
        "store": dict(TOLLWAY_STORE),
        "defaults": {"plan": "bench"},
        "operations": {"geocode": {"cost": 1, "price": "0 USD", "endpoints": [f"GET {PATH}"]}},
        "plans": {"bench": {"limits": [dict(limit) for limit in TOLLWAY_LIMITS]}},
    }


async def geocode(request: Request) -> JSONResponse:
    return JSONResponse(BODY)


def _bare(routes_endpoint: Any = geocode, **kwargs: Any) -> Starlette:
    return Starlette(routes=[Route(PATH, routes_endpoint, methods=["GET"])], **kwargs)


def _tollway(store: str, **options: Any) -> Starlette:
    from tollway import AsyncTollway
    from tollway.asgi import TollwayMiddleware

    tw = AsyncTollway(tollway_policy(), store=store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await tw.aclose()

    app = _bare(lifespan=lifespan)
    # mypy rejects this documented call (tollway.asgi's type aliases vs Starlette's
    # _MiddlewareFactory protocol); it runs fine.
    app.add_middleware(TollwayMiddleware, tollway=tw, **options)  # type: ignore[arg-type]
    return app


def _slowapi(storage: str, mode: str) -> Starlette:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    if mode == "decorator":
        limiter = Limiter(key_func=get_remote_address, storage_uri=storage)
        app = _bare(limiter.limit(SLOWAPI_LIMITS)(geocode))
    else:
        limiter = Limiter(
            key_func=get_remote_address, storage_uri=storage, default_limits=[SLOWAPI_LIMITS]
        )
        app = _bare()
        if mode == "asgi":
            from slowapi.middleware import SlowAPIASGIMiddleware

            app.add_middleware(SlowAPIASGIMiddleware)
        else:
            from slowapi.middleware import SlowAPIMiddleware

            app.add_middleware(SlowAPIMiddleware)
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return app


def create_app() -> Starlette:
    variant = os.environ.get("BENCH_HTTP_VARIANT", "bare")
    redis_url = os.environ.get("BENCH_HTTP_REDIS_URL", "")
    if variant not in VARIANTS:
        raise SystemExit(f"BENCH_HTTP_VARIANT: unknown variant {variant!r}")
    if variant.endswith("redis") or "-redis-" in variant:
        if not redis_url:
            raise SystemExit(f"{variant} needs BENCH_HTTP_REDIS_URL")
        store = redis_url
    else:
        store = "memory://"
    if variant == "bare":
        return _bare()
    if variant.startswith("tollway"):
        options = {"headers": "none"} if variant.endswith("noheaders") else {}
        return _tollway(store, **options)
    mode = {"slowapi-redis-asgi": "asgi", "slowapi-redis-mw": "middleware"}.get(
        variant, "decorator"
    )
    return _slowapi(store, mode)
