"""Build `tollway serve`'s application from a policy file, and run it on uvicorn."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.responses import Response

from tollway.admin import (
    billing_api,
    control,
    hooks_api,
    keys_api,
    policies_api,
    providers_api,
    subjects,
)
from tollway.admin.access import TokenAccess
from tollway.admin.app import Admin
from tollway.admin.policies import Policies
from tollway.admin.routes import Call, Route
from tollway.admin.store import AdminStore
from tollway.client import AsyncTollway
from tollway.policy import load
from tollway.stores import open_store

__all__ = ["build", "serve"]


def build(config: str | os.PathLike[str], store: str | None = None, **options: Any) -> Admin:
    """The admin application on the policy ``config`` (its store, or ``store``)."""
    tw = AsyncTollway(load(config), store, **options)
    ledger = tw.ledger  # opened (and migrated) before the first request
    access = TokenAccess(AdminStore(ledger, clock=tw.engine.clock), tw.policy.admin)
    routes: tuple[Route, ...] = (
        *subjects.ROUTES,
        *control.ROUTES,
        *policies_api.ROUTES,
        *hooks_api.ROUTES,
        *keys_api.ROUTES,
        *providers_api.ROUTES,
        _metrics_route(tw),
    )
    if tw.policy.billing is not None:
        routes = (*routes, *billing_api.ROUTES)
    admin = Admin(tw, access, routes)
    # Policy versions publish to the store with sync calls (in a worker thread): the memory
    # store's sync face, or a sync client of the same Redis.
    sync = getattr(tw.store, "sync", None)
    if sync is None:
        sync = (
            open_store(None, tw.policy, tw.engine.clock)
            if store is None
            else open_store(store, tw.policy, tw.engine.clock)
        )
        admin.closing.append(sync.close)
    admin.policies = Policies(ledger, sync, tw.engine.clock)
    return admin


def _metrics_route(tw: AsyncTollway) -> Route:
    """``GET /metrics``: the store's breaker and journal, the hook outbox (Prometheus text;
    services mount `tollway.metrics.metrics_app` for their own decisions)."""
    from tollway.metrics import Metrics, render
    from tollway.metrics.app import CONTENT_TYPE

    metrics = Metrics()
    metrics.add_store(tw.store)
    metrics.add_ledger(tw.ledger)

    async def scrape(call: Call) -> Response:
        body = await asyncio.to_thread(render, metrics)
        return Response(body, media_type=CONTENT_TYPE)

    return Route(
        "GET",
        "/metrics",
        "metrics.read",
        scrape,
        "Prometheus metrics (text format)",
        response={"type": "string"},
    )


def serve(
    admin: Admin,
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    import uvicorn

    uvicorn.run(
        admin.asgi,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        log_level="warning",
        proxy_headers=False,  # the client address is the peer's, not a header's
        server_header=False,
        lifespan="on",
        interface="asgi3",
    )
