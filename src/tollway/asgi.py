"""`TollwayMiddleware`: pure ASGI, for Starlette, FastAPI, Litestar, Quart and any ASGI app.

Only HTTP requests are limited; lifespan and websocket scopes pass through untouched. The
response is not buffered: the rate-limit headers are added to ``http.response.start`` and the
body streams through as the application sends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tollway.client import AsyncTollway, Tollway
from tollway.engine.decision import Decision
from tollway.errors import TollwayError
from tollway.http.gate import Gate, Plan, Request, Verdict
from tollway.stores.memory import MemoryStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TollwayMiddleware:
    """``app.add_middleware(TollwayMiddleware, tollway=tw)``; the other keyword arguments are
    the `tollway.http.gate.Gate` options (``api_keys``, ``identify``, ``trusted_proxies``,
    ``exempt``, ``overrides``, ``costs``, ``headers``, ``legacy_headers``, ``anonymous``)."""

    def __init__(self, app: ASGIApp, *, tollway: AsyncTollway | Tollway, **options: Any) -> None:
        self.app = app
        self.tollway = tollway
        self.gate = Gate(tollway.policy, **options)
        # A sync Tollway (or API keys) on a networked store would block the event loop: such
        # calls go to a worker thread. The memory store never blocks.
        self._blocking = isinstance(tollway, Tollway) and not isinstance(tollway.store, MemoryStore)
        keys = options.get("api_keys")
        self._keys_block = keys is not None and keys.blocking

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        request = Request(
            method=scope["method"],
            path=scope["path"],
            headers=scope.get("headers", []),
            client=client[0] if client else None,
            query=scope.get("query_string", b""),
        )
        if self._keys_block:
            plan = await asyncio.to_thread(self.gate.plan, request)
        else:
            plan = self.gate.plan(request)
        if isinstance(plan, Verdict):
            await self._finish(plan, scope, receive, send)
            return
        try:
            decision = await self._acquire(plan)
        except TollwayError as exc:
            await self._finish(self.gate.failure(exc), scope, receive, send)
            return
        await self._finish(self.gate.verdict(decision), scope, receive, send)

    async def _acquire(self, plan: Plan) -> Decision:
        tw = self.tollway
        if isinstance(tw, AsyncTollway):
            return await tw.acquire(plan.subject, plan.operation, plan.cost)
        if self._blocking:
            return await asyncio.to_thread(tw.acquire, plan.subject, plan.operation, plan.cost)
        return tw.acquire(plan.subject, plan.operation, plan.cost)

    async def _finish(self, verdict: Verdict, scope: Scope, receive: Receive, send: Send) -> None:
        if not verdict.passed:
            await _respond(verdict, send)
            return
        if not verdict.headers:
            await self.app(scope, receive, send)
            return
        extra = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in verdict.headers
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _respond(verdict: Verdict, send: Send) -> None:
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in verdict.headers
    ]
    headers.append((b"content-length", str(len(verdict.body)).encode()))
    await send({"type": "http.response.start", "status": verdict.status, "headers": headers})
    await send({"type": "http.response.body", "body": verdict.body})


__all__ = ["TollwayMiddleware"]
