"""Billing over the admin API: a subject's invoices, one invoice, credit notes, closing.

An invoice is found by its number, so a scoped token is checked again against the invoice's
own subject once it is read (a number outside the scope answers 403, like its subject would).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from starlette.responses import Response

from tollway.admin.routes import Call, Route
from tollway.admin.web import BadRequest, json_body, json_response, query_int

__all__ = ["ROUTES"]


async def _invoices(call: Call) -> Response:
    limit = query_int(call.request, "limit", 100, 1, 1000)
    found = await call.admin.tw.billing.invoices(call.param("subject"), limit)
    return json_response({"invoices": [invoice.to_dict() for invoice in found]})


async def _invoice(call: Call) -> Response:
    invoice = await call.admin.tw.billing.invoice(call.param("number"))
    call.admin.access.authorize(call.actor, "invoices.read", invoice.subject)
    notes = await call.admin.tw.billing.credit_notes(call.param("number"))
    return json_response({**invoice.to_dict(), "credit_notes": [n.to_dict() for n in notes]})


async def _credit_note(call: Call) -> Response:
    number = call.param("number")
    billing = call.admin.tw.billing
    invoice = await billing.invoice(number)
    call.admin.access.authorize(call.actor, "credit_notes.write", invoice.subject)
    body = await json_body(call.request)
    raw, reason, refund = body.get("amount"), body.get("reason", ""), body.get("refund", False)
    if not isinstance(raw, str) or len(raw) > 40:
        raise BadRequest(400, 'amount: expected a decimal string like "5.00"')
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise BadRequest(400, f"amount: {raw!r:.40} is not a decimal") from None
    if not isinstance(reason, str) or not isinstance(refund, bool):
        raise BadRequest(400, "reason: expected a string; refund: expected true or false")
    note = await billing.credit_note(number, amount=amount, reason=reason, refund=refund)
    call.target, call.after = number, note.to_dict()
    return json_response(note.to_dict(), status=201)


async def _close(call: Call) -> Response:
    if call.admin.scope_of(call.actor) is not None:  # closing reaches every subject
        raise BadRequest(403, "a token scoped to some subjects may not close every period")
    closed = await call.admin.tw.billing.close()
    call.target = "billing"
    call.after = {
        "invoices": [i.number for i in closed.invoices],
        "credit_notes": [n.number for n in closed.credit_notes],
    }
    return json_response({**call.after, "plans_applied": closed.plans_applied})


_NOTE = {
    "type": "object",
    "required": ["amount"],
    "properties": {
        "amount": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,6})?$"},
        "reason": {"type": "string", "maxLength": 500},
        "refund": {"type": "boolean"},
    },
}
ROUTES = (
    Route(
        "GET",
        "/v1/subjects/{subject}/invoices",
        "invoices.read",
        _invoices,
        "The subject's finalized invoices, newest first",
        query=(("limit", "At most (1..1000)", {"type": "integer", "minimum": 1, "maximum": 1000}),),
    ),
    Route(
        "GET",
        "/v1/invoices/{number}",
        "invoices.read",
        _invoice,
        "One invoice and its credit notes",
    ),
    Route(
        "POST",
        "/v1/invoices/{number}/credit-notes",
        "credit_notes.write",
        _credit_note,
        "Credit part or all of an invoice: refunded, or back to the prepaid balance",
        mutates=True,
        body=_NOTE,
    ),
    Route(
        "POST",
        "/v1/billing/close",
        "invoices.write",
        _close,
        "Finalize every period whose grace is over",
        mutates=True,
    ),
)
