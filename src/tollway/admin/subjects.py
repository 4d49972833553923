"""``/v1/subjects``: find subjects, read one's standing, assign a plan, reset, grant credits.

Subjects are listed from the ledger (every subject with usage or a plan change), by prefix,
in pages of at most `PAGE_MAX`; a scoped token sees only its prefix. One subject's standing is
what `Tollway.usage` reads from the store, consuming nothing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.responses import Response

from tollway.admin.routes import Call, Route
from tollway.admin.web import (
    BadRequest,
    json_body,
    json_response,
    query_int,
    read_cursor,
    write_cursor,
)
from tollway.metering.ledger.flows import Flow, Query

__all__ = ["ROUTES", "subjects_page"]

PAGE_MAX = 500
PREFIX_MAX = 256


def subjects_page(dialect: str, prefix: str, after: str, limit: int) -> Flow[list[str]]:
    """Subjects starting with ``prefix``, after ``after``, sorted: at most ``limit``."""
    p = "?" if dialect == "sqlite" else "%s"
    like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = yield Query(
        "SELECT subject FROM (SELECT subject FROM usage_events"
        " UNION SELECT subject FROM billing_plan_changes) AS known"
        f" WHERE subject LIKE {p} ESCAPE '\\' AND subject > {p} ORDER BY subject LIMIT {limit}",
        (like, after),
    )
    return [str(row[0]) for row in rows]


async def _list(call: Call) -> Response:
    request = call.request
    prefix = request.query_params.get("prefix", "")
    if len(prefix) > PREFIX_MAX:
        raise BadRequest(400, f"prefix: expected at most {PREFIX_MAX} characters")
    scope = call.admin.scope_of(call.actor)
    if scope is not None:
        if not (prefix.startswith(scope) or scope.startswith(prefix)):
            return json_response({"subjects": [], "next": None})
        prefix = prefix if len(prefix) >= len(scope) else scope
    limit = query_int(request, "limit", 100, 1, PAGE_MAX)
    after = read_cursor(request.query_params.get("cursor")) or ""
    if not isinstance(after, str):
        raise BadRequest(400, "cursor: not a cursor of this list")
    ledger = call.admin.tw.ledger
    found = await asyncio.to_thread(
        ledger.transact, lambda: subjects_page(ledger.dialect, prefix, after, limit + 1)
    )
    more = len(found) > limit
    page = found[:limit]
    return json_response(
        {"subjects": page, "next": write_cursor(page[-1]) if more and page else None}
    )


async def _standing(call: Call) -> Response:
    subject = call.param("subject")
    usage = await call.admin.tw.usage(subject)
    data = usage.to_dict()
    data["policy_version"] = call.admin.tw.policy.version
    return json_response(data)


async def _assign(call: Call) -> Response:
    subject = call.param("subject")
    body = await json_body(call.request)
    plan = body.get("plan")
    if plan is not None and not isinstance(plan, str):
        raise BadRequest(400, f"plan: {plan!r:.60}; expected a plan name or null")
    options: dict[str, Any] = {}
    if "proration" in body:
        options["proration"] = body["proration"]
    if body.get("trial") is not None:
        options["trial"] = body["trial"] is True
    if body.get("identity") is not None:
        options["identity"] = str(body["identity"])
    if body.get("effective") is not None:
        options["effective"] = _time(body["effective"], "effective")
    tw = call.admin.tw
    call.before = {"plan": await tw.plan_of(subject)}
    await tw.assign(subject, plan, **options)
    call.after = {"plan": await tw.plan_of(subject)}
    return json_response({"subject": subject, **call.after})


async def _reset(call: Call) -> Response:
    subject = call.param("subject")
    body = await json_body(call.request, optional=True)
    limit = body.get("limit")
    if limit is not None and not isinstance(limit, str):
        raise BadRequest(400, f"limit: {limit!r:.60}; expected a limit name")
    tw = call.admin.tw
    call.before = (await tw.usage(subject)).to_dict()
    cleared = await tw.reset(subject, limit)
    call.after = {"reset": limit or "all", "cleared": cleared}
    return json_response({"subject": subject, "limit": limit, "cleared": cleared})


async def _grant(call: Call) -> Response:
    subject = call.param("subject")
    body = await json_body(call.request)
    amount = _decimal(body.get("amount"), "amount")
    call.admin.check_grant(call.actor, amount)
    tw = call.admin.tw
    expires = None if body.get("expires") is None else _time(body["expires"], "expires")
    grant = await tw.billing.grant(
        subject,
        amount,
        currency=body.get("currency"),
        expires=expires,
        id=body.get("id"),
        priority=body.get("priority", 0),
        note=str(body.get("note", ""))[:500],
    )
    balance = await tw.billing.balance(subject, grant.currency)
    call.after = {"grant": grant.id, "amount": str(amount), "balance": str(balance)}
    return json_response(
        {"subject": subject, "grant": grant.id, "currency": grant.currency,
         "balance": str(balance)},
        status=201,
    )  # fmt: skip


def _decimal(value: object, name: str) -> Decimal:
    # Money arrives as a string: a JSON number may already have lost exactness.
    if not isinstance(value, str) or len(value) > 40:
        raise BadRequest(400, f'{name}: {value!r:.60}; expected a decimal string like "10.00"')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise BadRequest(400, f"{name}: {value!r:.60}; expected a decimal string") from None
    if not amount.is_finite():
        raise BadRequest(400, f"{name}: {value!r:.60}; expected a finite amount")
    return amount


def _time(value: object, name: str) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequest(400, f"{name}: expected an RFC 3339 time like 2026-03-01T00:00:00Z")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(400, f"{name}: {value!r:.60} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise BadRequest(400, f"{name}: {value!r:.60} has no offset; expected e.g. ...Z")
    return when


_LIMIT = {
    "type": "object",
    "required": ["name", "kind", "limit", "used", "remaining", "reset_after"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string"},
        "limit": {"type": ["integer", "string"]},
        "used": {"type": ["integer", "string"]},
        "remaining": {"type": ["integer", "string"]},
        "reset_after": {"type": "number"},
    },
}
STANDING = {
    "type": "object",
    "required": ["subject", "plan", "limits"],
    "properties": {
        "subject": {"type": "string"},
        "plan": {"type": ["string", "null"]},
        "limits": {"type": "array", "items": _LIMIT},
        "policy_version": {"type": ["string", "null"]},
    },
}
SUBJECT = "/v1/subjects/{subject}"
ROUTES = (
    Route(
        "GET",
        "/v1/subjects",
        "subjects.read",
        _list,
        "Subjects with usage or a plan change, by prefix, a page at a time",
        response={
            "type": "object",
            "properties": {
                "subjects": {"type": "array", "items": {"type": "string"}},
                "next": {"type": ["string", "null"]},
            },
        },
        query=(
            ("prefix", "Subjects starting with this", {"type": "string", "maxLength": 256}),
            ("limit", "Page size (1..500)", {"type": "integer", "minimum": 1, "maximum": 500}),
            ("cursor", "The next page's cursor", {"type": "string", "maxLength": 512}),
        ),
    ),
    Route(
        "GET",
        SUBJECT,
        "subjects.read",
        _standing,
        "One subject's plan and every limit's standing",
        response=STANDING,
    ),
    Route(
        "PUT",
        SUBJECT + "/plan",
        "subjects.assign",
        _assign,
        "Put the subject on a plan (billing's proration options when [billing] is set)",
        mutates=True,
        body={
            "type": "object",
            "required": ["plan"],
            "properties": {
                "plan": {"type": ["string", "null"]},
                "proration": {"enum": ["prorate", "none", "next_period"]},
                "trial": {"type": "boolean"},
                "identity": {"type": "string", "maxLength": 256},
                "effective": {"type": "string", "format": "date-time"},
            },
        },
    ),
    Route(
        "POST",
        SUBJECT + "/reset",
        "subjects.reset",
        _reset,
        "Clear the subject's counters (one limit's, when named)",
        mutates=True,
        body={"type": "object", "properties": {"limit": {"type": "string"}}},
    ),
    Route(
        "POST",
        SUBJECT + "/credits",
        "credits.grant",
        _grant,
        "Grant prepaid credits (idempotent on id)",
        mutates=True,
        body={
            "type": "object",
            "required": ["amount"],
            "properties": {
                "amount": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,6})?$"},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "id": {"type": "string", "maxLength": 128},
                "expires": {"type": "string", "format": "date-time"},
                "priority": {"type": "integer"},
                "note": {"type": "string", "maxLength": 500},
            },
        },
    ),
)
