"""A FastAPI service that sells access by API key: Redis store, keys, quotas per account.

Every request to ``/v1/*`` must present a key (``Authorization: Bearer tw_...`` or
``X-API-Key``): without one it is answered 401 (``anonymous=False``). A key maps to its
owner, the subject whose limits apply: two keys of one account share that account's quota.

Run it (the secret is the pepper of the keys' hash; every process needs the same one)::

    export TOLLWAY_KEY_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    export TOLLWAY_STORE=redis://127.0.0.1:6379/0
    uvicorn --factory examples.fastapi_redis_keys:create_app

    # issue a key for account acct_1 (shown once), then call the service with it
    tollway keys create acct_1 --config examples/tollway.toml --store "$TOLLWAY_STORE"
    curl -H "Authorization: Bearer tw_..." http://127.0.0.1:8000/v1/geocode?q=Paris
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from tollway import AsyncTollway
from tollway.asgi import TollwayMiddleware
from tollway.keys import AsyncApiKeys

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {
        "geocode": {"cost": 1, "endpoints": ["GET /v1/geocode"]},
        "search": {"cost": 5, "endpoints": ["GET /v1/search"]},
    },
    "plans": {
        "free": {
            "limits": [
                {"name": "burst", "rate": "5/s", "burst": 10},
                {"name": "hourly", "quota": "100/hour"},
            ]
        }
    },
}


def create_app(
    store: str | None = None, secret: str | None = None, policy: dict[str, Any] | None = None
) -> FastAPI:
    """The app on the Redis store at ``store`` (default: ``$TOLLWAY_STORE``); ``secret``
    defaults to ``$TOLLWAY_KEY_SECRET``."""
    tw = AsyncTollway(policy or POLICY, store or os.environ["TOLLWAY_STORE"])
    keys = AsyncApiKeys(tw, secret=secret)  # verifies on the event loop, no thread

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await tw.ping()  # fail at startup, not at the first request, if Redis is away
        yield
        await tw.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.tollway, app.state.api_keys = tw, keys
    app.add_middleware(
        TollwayMiddleware, tollway=tw, api_keys=keys, anonymous=False, exempt=["/health"]
    )

    @app.get("/v1/geocode")
    async def geocode(q: str) -> dict[str, str]:
        return {"query": q, "result": "48.8566,2.3522"}

    @app.get("/v1/search")
    async def search(q: str) -> dict[str, list[str]]:
        return {"results": [q]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "up"}

    return app
