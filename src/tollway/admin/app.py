"""`tollway serve`'s application: the admin API under ``/v1``, ``/openapi.json``, ``/healthz``.

`Admin` holds the `AsyncTollway` (the same store and ledger as the services it administers)
and the `Access` (who asks, what their role may do, the audit log). Every request of the API
goes the same way: authenticate (401), check the route's action and the path's subject
against the token (403), run the handler, and for a mutation write its audit record; any
tollway error becomes a problem+json with the error's message. Responses carry a strict
Content-Security-Policy and no-store caching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from decimal import Decimal
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route as StarletteRoute

from tollway.admin.idempotency import answer_flow, check_key, claim_flow, request_hash
from tollway.admin.routes import Call, Route
from tollway.admin.web import BadRequest, json_response, problem_response, read_body, status_of
from tollway.client import AsyncTollway
from tollway.errors import PolicyError, TollwayError

__all__ = ["Access", "Admin", "SECURITY_HEADERS"]

log = logging.getLogger("tollway.admin")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Access(Protocol):
    """Who asks and what they may do (`tollway.admin.access` over the admin tokens)."""

    async def authenticate(self, request: Request) -> Any: ...

    def authorize(self, actor: Any, action: str, subject: str | None) -> None: ...

    def scope_of(self, actor: Any) -> str | None: ...

    def grant_cap(self, actor: Any) -> Decimal | None: ...

    async def audit(self, call: Call, action: str) -> None: ...


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class Admin:
    """The admin application over ``tw`` with ``access``; `asgi` is what uvicorn serves."""

    def __init__(self, tw: AsyncTollway, access: Access, routes: Iterable[Route]) -> None:
        self.tw = tw
        self.access = access
        self.routes = tuple(routes)
        self.policies: Any = None
        """`tollway.admin.policies.Policies` when the server keeps policy versions."""
        self.closing: list[Callable[[], Any]] = []
        """Run when the server stops (what `server.build` opened besides the Tollway)."""
        self._app = Starlette(routes=self._starlette_routes(), lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            close = getattr(self.access, "close", None)
            if callable(close):
                close()
            for done in self.closing:
                done()
            await self.tw.aclose()

    # -- what handlers ask of the application ------------------------------------------------

    def scope_of(self, actor: Any) -> str | None:
        return self.access.scope_of(actor)

    def check_grant(self, actor: Any, amount: Decimal) -> None:
        cap = self.access.grant_cap(actor)
        if cap is not None and amount > cap:
            raise _forbidden(f"amount: {amount} is above this role's grant limit of {cap}")

    # -- serving -------------------------------------------------------------------------------

    async def asgi(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and isinstance(raw, bytes) and raw.startswith(b"/v1/"):
            # Route on the path as sent: an encoded "/" in a subject stays inside its segment,
            # and each path parameter is decoded once, by `Call.param` (injective).
            scope = dict(scope)
            scope["path"] = raw.split(b"?", 1)[0].decode("latin-1")
        await self._app(scope, receive, send)

    def _starlette_routes(self) -> list[BaseRoute]:
        out: list[BaseRoute] = [
            StarletteRoute(route.path, self._endpoint(route), methods=[route.method])
            for route in self.routes
        ]
        out.append(StarletteRoute("/openapi.json", self._openapi, methods=["GET"]))
        out.append(StarletteRoute("/healthz", self._health, methods=["GET"]))
        return out

    def _endpoint(self, route: Route) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                actor = await self.access.authenticate(request)
                subject = Call.decoded(request, "subject")
                self.access.authorize(actor, route.action, subject)
                call = Call(request=request, admin=self, actor=actor, subject=subject)
                key = request.headers.get("idempotency-key")
                if route.mutates and key is not None:
                    response = await self._once(call, route, check_key(key))
                else:
                    response = await self._run(call, route)
            except (TollwayError, KeyError) as exc:
                response = _problem(exc)
            except Exception:
                log.exception("admin API: %s %s", route.method, route.path)
                response = problem_response(500, "an internal error; see the server's log")
            _secure(response)
            return response

        return endpoint

    async def _run(self, call: Call, route: Route) -> Response:
        response = await route.handler(call)
        if route.mutates and response.status_code < 400:
            await self.access.audit(call, route.action)
        return response

    async def _once(self, call: Call, route: Route, key: str) -> Response:
        """`_run` under an Idempotency-Key: a repeat gets the first answer, running nothing."""
        request, ledger = call.request, self.tw.ledger
        digest = request_hash(request.method, request.url.path, await read_body(request))
        token = str(getattr(call.actor, "token_id", ""))
        now = self.tw.engine.clock()
        claim = await asyncio.to_thread(
            ledger.transact, lambda: claim_flow(ledger.dialect, token, key, digest, now)
        )
        if not claim.fresh:
            replay = Response(claim.body or "", status_code=claim.status or 200)
            replay.headers["Content-Type"] = "application/json"
            replay.headers["Idempotent-Replayed"] = "true"
            return replay
        try:
            response = await self._run(call, route)
        except BaseException:
            await asyncio.to_thread(
                ledger.transact, lambda: answer_flow(ledger.dialect, token, key, 500, "")
            )
            raise
        body = bytes(response.body).decode("utf-8", "replace")
        status = response.status_code
        await asyncio.to_thread(
            ledger.transact, lambda: answer_flow(ledger.dialect, token, key, status, body)
        )
        return response

    async def _openapi(self, request: Request) -> Response:
        from tollway.admin.openapi import document

        return _secure(json_response(document(self.routes)))

    async def _health(self, request: Request) -> Response:
        return _secure(json_response({"status": "ok"}))


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _problem(exc: BaseException) -> Response:
    if isinstance(exc, KeyError):  # a lookup the error tree raises as KeyError too
        return problem_response(404, str(exc.args[0]) if exc.args else "not found")
    status = status_of(exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, PolicyError):  # every problem of an upload, each with its key path
        extra["issues"] = [{"path": i.path, "message": i.message} for i in exc.issues]
    headers = {"WWW-Authenticate": 'Bearer realm="tollway"'} if status == 401 else {}
    wait = getattr(exc, "retry_after", None)
    if status == 429 and isinstance(wait, int):
        headers["Retry-After"] = str(wait)
    detail = str(exc) if status < 500 else "an internal error; see the server's log"
    return problem_response(status, detail, headers=headers, **extra)


def _forbidden(message: str) -> TollwayError:
    return BadRequest(403, message)
