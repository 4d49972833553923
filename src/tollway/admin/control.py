"""``/v1/audit`` and ``/v1/tokens``: the control plane's own records.

The audit log is read newest first, a page at a time (``before`` is the cursor: the seq of the
last record of the page before). Tokens are listed with their metadata only (never a hash);
a new token's raw value is in the creation's answer and nowhere else. Creating and revoking a
token write their own audit records (in the same transaction, `tollway.admin.tokens`).
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from tollway.admin.access import client_of, request_id_of
from tollway.admin.routes import Call, Route
from tollway.admin.store import AdminStore
from tollway.admin.web import BadRequest, json_body, json_response, query_int

__all__ = ["ROUTES"]

TTL_MAX_S = 10 * 366 * 86_400


def _store(call: Call) -> AdminStore:
    access = call.admin.access
    store = getattr(access, "store", None)
    if not isinstance(store, AdminStore):
        raise BadRequest(404, "this server keeps no admin tokens")
    return store


async def _audit(call: Call) -> Response:
    limit = query_int(call.request, "limit", 50, 1, 1000)
    raw = call.request.query_params.get("before")
    before = None if raw is None else query_int(call.request, "before", 0, 1, 2**62)
    records = await asyncio.to_thread(_store(call).audit_log, limit, before)
    page = [record.to_dict() for record in records]
    more = len(records) == limit and records and records[-1].seq > 1
    return json_response({"records": page, "next": str(records[-1].seq) if more else None})


async def _tokens(call: Call) -> Response:
    found = await asyncio.to_thread(_store(call).list_tokens)
    return json_response({"tokens": [token.to_dict() for token in found]})


async def _create(call: Call) -> Response:
    body = await json_body(call.request)
    ttl = body.get("ttl_s", call.admin.tw.policy.admin.token_ttl_s)
    if ttl is not None and (not isinstance(ttl, int) or not 0 < ttl <= TTL_MAX_S):
        raise BadRequest(400, f"ttl_s: {ttl!r:.40}; expected seconds 1..{TTL_MAX_S} or null")
    created = await asyncio.to_thread(
        lambda: _store(call).create_token(
            name=body.get("name"),  # type: ignore[arg-type]  # checked by the flow
            role=body.get("role"),  # type: ignore[arg-type]
            scope=body.get("scope"),
            ttl_s=ttl,
            actor=call.actor,
            request_id=request_id_of(call.request),
            client=client_of(call.request),
        )
    )
    return json_response({"token": created.token.to_dict(), "raw": created.raw}, status=201)


async def _revoke(call: Call) -> Response:
    token_id = call.param("token")
    info = await asyncio.to_thread(
        lambda: _store(call).revoke_token(
            token_id,
            actor=call.actor,
            request_id=request_id_of(call.request),
            client=client_of(call.request),
        )
    )
    return json_response({"token": info.to_dict()})


ROUTES = (
    Route(
        "GET",
        "/v1/audit",
        "audit.read",
        _audit,
        "The audit log, newest first",
        query=(
            (
                "limit",
                "Records per page (1..1000)",
                {"type": "integer", "minimum": 1, "maximum": 1000},
            ),
            (
                "before",
                "Records before this seq (the next page)",
                {"type": "integer", "minimum": 1},
            ),
        ),
    ),
    Route("GET", "/v1/tokens", "tokens.read", _tokens, "Admin tokens (metadata, never a hash)"),
    Route(
        "POST",
        "/v1/tokens",
        "tokens.write",
        _create,
        "Create an admin token (the raw token is in this answer only)",
        body={
            "type": "object",
            "required": ["name", "role"],
            "properties": {
                "name": {"type": "string", "maxLength": 128},
                "role": {"enum": ["viewer", "support", "billing", "operator", "admin"]},
                "scope": {"type": ["string", "null"], "maxLength": 128},
                "ttl_s": {"type": ["integer", "null"], "minimum": 1},
            },
        },
    ),
    Route("DELETE", "/v1/tokens/{token}", "tokens.write", _revoke, "Revoke an admin token"),
)
