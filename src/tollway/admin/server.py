"""Build `tollway serve`'s application from a policy file, and run it on uvicorn."""

from __future__ import annotations

import os
from typing import Any

from tollway.admin import control, subjects
from tollway.admin.access import TokenAccess
from tollway.admin.app import Admin
from tollway.admin.store import AdminStore
from tollway.client import AsyncTollway
from tollway.policy import load

__all__ = ["build", "serve"]


def build(config: str | os.PathLike[str], store: str | None = None, **options: Any) -> Admin:
    """The admin application on the policy ``config`` (its store, or ``store``)."""
    tw = AsyncTollway(load(config), store, **options)
    ledger = tw.ledger  # opened (and migrated) before the first request
    access = TokenAccess(AdminStore(ledger, clock=tw.engine.clock), tw.policy.admin)
    return Admin(tw, access, (*subjects.ROUTES, *control.ROUTES))


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
