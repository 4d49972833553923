"""`TollwayMiddleware`: pure ASGI, for Starlette, FastAPI, Litestar, Quart and any ASGI app.

Only HTTP requests are limited; lifespan and websocket scopes pass through untouched. The
response is not buffered: the rate-limit headers are added to ``http.response.start`` and the
body streams through as the application sends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

from tollway.client import AsyncTollway, Tollway
from tollway.engine.decision import Decision
from tollway.errors import StoreError, TollwayError
from tollway.http.attempts import Attempt, KeyAttempts
from tollway.http.gate import Admission, Gate, KeyAttempt, KeyCheck, Request, Verdict
from tollway.inline import inline_tollway
from tollway.keys import ApiKeys, AsyncApiKeys
from tollway.stores.memory import MemoryStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TollwayMiddleware:
    """``app.add_middleware(TollwayMiddleware, tollway=tw)``; or, with no policy file,
    ``app.add_middleware(TollwayMiddleware, limits="5/s; 1000/hour")`` (every request, per
    client address, on the memory store; ``store="redis://..."`` to share the counts: see
    `tollway.inline`). ``api_keys`` (`AsyncApiKeys`, or `ApiKeys`) maps presented keys to
    their subjects, and failed attempts at them are limited per client address by the keys'
    policy (``[keys] failed_attempts``, see `tollway.http.attempts`); the other keyword
    arguments are the `tollway.http.gate.Gate` options (``identify``, ``trusted_proxies``,
    ``exempt``, ``overrides``, ``costs``, ``headers``, ``legacy_headers``, ``anonymous``)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tollway: AsyncTollway | Tollway | None = None,
        limits: str | None = None,
        store: str | None = None,
        api_keys: AsyncApiKeys | ApiKeys | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.tollway: AsyncTollway | Tollway = inline_tollway(tollway, limits, store, AsyncTollway)
        self.api_keys = api_keys
        if api_keys is not None:
            options.setdefault("key_attempts", KeyAttempts.of(api_keys.tollway.driver.engine))
        self.gate = Gate(self.tollway.policy, accept_keys=api_keys is not None, **options)
        # A sync Tollway (or sync API keys) on a networked store would block the event loop:
        # such calls go to a worker thread. The memory store never blocks.
        self._blocking = isinstance(self.tollway, Tollway) and not isinstance(
            self.tollway.store, MemoryStore
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate = self.gate
        matched = gate.operation(scope["method"], scope["path"])
        if matched is None:  # not limited: no Request, no store call
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        request = Request(
            scope["method"],
            scope["path"],
            scope.get("headers", ()),
            client[0] if client else None,
            scope.get("query_string", b""),
        )
        planned = gate.plan(request, matched)
        if isinstance(planned, KeyCheck):
            keyed = gate.keyed(planned, await verify_key(self.api_keys, planned.key))
            if isinstance(keyed, KeyAttempt):
                keyed = gate.attempted(keyed, await decide_attempt(self.api_keys, keyed.attempt))
            plan: Admission | Verdict = keyed
        else:
            plan = planned
        if isinstance(plan, Verdict):
            verdict = plan
        else:
            try:
                decision = await self._acquire(plan)
            except TollwayError as exc:
                verdict = gate.failure(exc)
            else:
                verdict = gate.verdict(decision)
        if not verdict.passed:
            await _respond(verdict, send)
            return
        if not verdict.headers:
            await self.app(scope, receive, send)
            return
        extra = _encoded(verdict.headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A new list: the application may reuse its own (a module-level response).
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _acquire(self, plan: Admission) -> Awaitable[Decision]:
        tw = self.tollway
        subject, operation, cost, ident = plan
        if isinstance(tw, AsyncTollway):
            return tw.acquire(subject, operation, cost, id=ident)
        if self._blocking:
            return asyncio.to_thread(partial(tw.acquire, subject, operation, cost, id=ident))
        return _ready(tw.acquire(subject, operation, cost, id=ident))


async def verify_key(keys: AsyncApiKeys | ApiKeys | None, key: str) -> str | StoreError | None:
    """The subject of ``key``, None if refused, or the `StoreError` of a store that could not
    answer; awaited on the loop with `AsyncApiKeys`, in a worker thread for sync keys on a
    networked store (they would block the loop)."""
    try:
        if isinstance(keys, AsyncApiKeys):
            return await keys.verify(key)
        if keys is None:  # pragma: no cover - asked only where keys are accepted
            return None
        if keys.blocking:
            return await asyncio.to_thread(keys.verify, key)
        return keys.verify(key)
    except StoreError as exc:
        return exc


async def decide_attempt(keys: AsyncApiKeys | ApiKeys | None, attempt: Attempt) -> Decision | None:
    """The decision of a failed-attempts step (`tollway.http.attempts`) in the keys' store, as
    `verify_key` runs there; None when the store could not answer (the limit is skipped)."""
    try:
        if isinstance(keys, AsyncApiKeys):
            return await keys.tollway.driver.decide(attempt.build)
        if keys is None:  # pragma: no cover - asked only where keys are accepted
            return None
        if keys.blocking:
            return await asyncio.to_thread(keys.tollway.driver.decide, attempt.build)
        return keys.tollway.driver.decide(attempt.build)
    except TollwayError:
        return None


async def _ready(decision: Decision) -> Decision:
    return decision


_NAMES: dict[str, bytes] = {}


def _encoded(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """ASGI header lines: lower-case latin-1 names (each encoded once) and latin-1 values."""
    out = []
    for name, value in headers:
        raw = _NAMES.get(name)
        if raw is None:
            raw = _NAMES[name] = name.lower().encode("latin-1")
        out.append((raw, value.encode("latin-1")))
    return out


async def _respond(verdict: Verdict, send: Send) -> None:
    headers = _encoded(verdict.headers)
    headers.append((b"content-length", str(len(verdict.body)).encode()))
    await send({"type": "http.response.start", "status": verdict.status, "headers": headers})
    await send({"type": "http.response.body", "body": verdict.body})


__all__ = ["TollwayMiddleware", "decide_attempt", "verify_key"]
