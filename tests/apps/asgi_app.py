"""A Starlette app behind `TollwayMiddleware`, for ``uvicorn tests.apps.asgi_app:app``.

Environment: ``TOLLWAY_APP_POLICY`` (a policy file) and ``TOLLWAY_APP_STORE`` (a store URL;
the policy's own when unset). ``GET /v1/geocode`` is limited by the policy; ``/health`` is
exempt.
Every response names the worker process that answered it (``X-Worker-Pid``).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tollway import AsyncTollway
from tollway.asgi import TollwayMiddleware

tollway = AsyncTollway.from_file(
    os.environ["TOLLWAY_APP_POLICY"], os.environ.get("TOLLWAY_APP_STORE") or None
)


# Which worker process answered: tests check that the load was spread over several.
PID = {"X-Worker-Pid": str(os.getpid())}


async def geocode(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", headers=PID)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("up", headers=PID)


app = Starlette(
    routes=[Route("/v1/geocode", geocode), Route("/health", health)],
    middleware=[Middleware(TollwayMiddleware, tollway=tollway, exempt=["/health"])],
)
