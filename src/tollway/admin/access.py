"""Who may call the admin API: admin tokens, their roles, the server's own rate, the audit log.

`TokenAccess` is the `tollway.admin.app.Access` of `tollway serve`: a ``Bearer`` admin token
(`tollway.admin.tokens`, checked in the ledger), its role against the route's action and its
scope against the path's subject (`tollway.admin.roles`), and every mutation's audit record
(`tollway.admin.audit`). The API limits itself with tollway: ``[admin] rate`` per token and per
client address, on a memory store of its own, before the ledger is asked anything.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from starlette.requests import Request

from tollway.admin import roles
from tollway.admin.roles import Principal
from tollway.admin.routes import Call
from tollway.admin.store import AdminStore
from tollway.admin.web import BadRequest
from tollway.client import Tollway
from tollway.errors import UnauthorizedError
from tollway.policy.model import AdminConfig

__all__ = ["TokenAccess", "request_id_of"]

TOKEN_HEADER_MAX = 512
"""The longest Authorization header read (a token is about 60 characters)."""
REQUEST_ID_MAX = 128


def request_id_of(request: Request) -> str:
    value = request.headers.get("x-request-id", "")
    return value[:REQUEST_ID_MAX] if value.isprintable() else ""


def client_of(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


class TokenAccess:
    """Admin tokens in the policy's ledger, with the ``[admin]`` settings."""

    def __init__(self, store: AdminStore, config: AdminConfig) -> None:
        self.store = store
        self.config = config
        rate = config.rate.text
        self._gate = Tollway(
            {
                "store": {"url": "memory://"},
                "defaults": {"plan": "admin"},
                "operations": {"call": {}},
                "plans": {"admin": {"limits": [{"name": "admin_rate", "rate": rate}]}},
            },
            clock=store.clock,
        )

    def _pace(self, who: str) -> None:
        decision = self._gate.acquire(who, "call")
        if not decision.allowed:
            wait = max(1, int(decision.retry_after or 1))
            raise _TooMany(f"the admin API's rate ({self.config.rate.text}) is used up", wait)

    async def authenticate(self, request: Request) -> Principal:
        self._pace("ip:" + client_of(request))
        header = request.headers.get("authorization", "")
        if len(header) > TOKEN_HEADER_MAX or not header.startswith("Bearer "):
            raise UnauthorizedError(
                "Authorization: expected 'Bearer <admin token>' (tollway admin token create)",
                "malformed",
            )
        principal = await asyncio.to_thread(self.store.authenticate, header[7:].strip())
        self._pace("token:" + principal.token_id)
        return principal

    def authorize(self, actor: Any, action: str, subject: str | None) -> None:
        roles.require(actor, action, subject)

    def scope_of(self, actor: Any) -> str | None:
        scope = getattr(actor, "scope", None)
        return scope if isinstance(scope, str) else None

    def grant_cap(self, actor: Any) -> Decimal | None:
        if getattr(actor, "role", None) == "support":
            return self.config.support_grant_max.amount
        return None

    async def audit(self, call: Call, action: str) -> None:
        target = call.target or call.subject or call.request.url.path
        await asyncio.to_thread(
            self.store.audit,
            call.actor,
            action,
            target,
            before=call.before,
            after=call.after,
            request_id=request_id_of(call.request),
            client=client_of(call.request),
        )

    def close(self) -> None:
        self._gate.close()


class _TooMany(BadRequest):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(429, message)
        self.retry_after = retry_after
