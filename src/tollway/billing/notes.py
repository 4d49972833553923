"""Finalized documents: credit notes, and reading invoices back with the events of a line.

A credit note credits part or all of a finalized invoice (never more than its total less the
notes before it; the ledger checks the cap in the transaction that stores it), numbered from
its own gapless sequence. A refund is told as ``tollway.invoice.refunded`` for the payment
platform; otherwise the amount goes back to the prepaid balance as a grant whose id is the
note's number (in the ledger in the same transaction, then in the store).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal

from tollway.billing.inputs import parse_invoice, plan_segments
from tollway.billing.invoice import CreditNote, Invoice, build_credit_note, rfc3339
from tollway.billing.notify import notice_flow
from tollway.billing.ops import Ctx, Op, in_ledger, in_store, scope, year_of
from tollway.billing.records import GrantRecord, Line
from tollway.billing.storage import (
    add_grant,
    changes,
    credit_notes,
    invoice,
    invoices,
    store_credit_note,
)
from tollway.billing.storage import trace as trace_flow
from tollway.billing.storage.documents import CreditNoteDraft
from tollway.engine import flows
from tollway.errors import InvoiceError
from tollway.events import INVOICE_REFUNDED
from tollway.metering.ledger.events import UsageEvent
from tollway.metering.ledger.flows import Flow

__all__ = ["credit_note", "issue_credit_note", "list_credit_notes", "list_invoices", "one", "trace"]


def one(ctx: Ctx, number: str) -> Op[Invoice]:
    """The invoice ``number``; `InvoiceError` when the ledger has none."""
    if not isinstance(number, str) or not 0 < len(number) <= 128:
        raise InvoiceError(f"number: {number!r:.80} is not an invoice number")
    stored = yield from in_ledger(lambda: invoice(ctx.dialect, number))
    if stored is None:
        raise InvoiceError(f"invoice {number!r} is not in the ledger")
    return parse_invoice(stored)


def list_invoices(ctx: Ctx, subject: str, limit: int = 100) -> Op[list[Invoice]]:
    """The subject's finalized invoices, newest first."""
    ctx.engine.check_subject(subject)
    stored = yield from in_ledger(lambda: invoices(ctx.dialect, subject, limit))
    return [parse_invoice(s) for s in stored]


def list_credit_notes(ctx: Ctx, number: str) -> Op[list[CreditNote]]:
    """The credit notes of invoice ``number``, oldest first."""
    stored = yield from in_ledger(lambda: credit_notes(ctx.dialect, number))
    return [CreditNote.from_dict(json.loads(s.body)) for s in stored]


def credit_note(
    ctx: Ctx, number: str, amount: Decimal, *, reason: str = "", refund: bool = False
) -> Op[CreditNote]:
    found = yield from one(ctx, number)
    note: CreditNote = yield from issue_credit_note(ctx, found, amount, reason, refund)
    return note


def issue_credit_note(
    ctx: Ctx,
    of: Invoice,
    amount: Decimal,
    reason: str,
    refund: bool,
    lines: Sequence[Line] = (),
) -> Op[CreditNote]:
    if not isinstance(reason, str):
        raise InvoiceError(f"reason: {reason!r:.40} is not a str")
    if not isinstance(refund, bool):
        raise InvoiceError(f"refund: {refund!r:.40} is not True or False")
    now = ctx.now()
    note: CreditNote = yield from in_ledger(
        lambda: _store_note(ctx, of, amount, reason, refund, lines, now)
    )
    if not note.refund:
        micros = int(note.amount.scaleb(6))
        yield from in_store(flows.grant(note.subject, note.currency, note.number, micros))
    return note


def _store_note(
    ctx: Ctx,
    of: Invoice,
    amount: Decimal,
    reason: str,
    refund: bool,
    lines: Sequence[Line],
    now: int,
) -> Flow[CreditNote]:
    assert of.number is not None
    d = ctx.dialect
    earlier = [
        CreditNote.from_dict(json.loads(s.body)) for s in (yield from credit_notes(d, of.number))
    ]
    made: list[CreditNote] = []

    def make(number: str) -> CreditNoteDraft:
        note = build_credit_note(
            of,
            number=number,
            amount=amount,
            reason=reason,
            refund=refund,
            at_us=now,
            earlier=earlier,
            lines=lines,
        )
        made.append(note)
        return CreditNoteDraft(
            amount_micros=int(note.amount.scaleb(6)),
            reason=note.reason,
            refund=note.refund,
            created_at_us=now,
            body=note.canonical_json().decode("utf-8"),
        )

    yield from store_credit_note(
        d,
        invoice_number=of.number,
        scope=scope(ctx, "credit_note"),
        year=year_of(ctx, now),
        numbering=ctx.config.credit_note_numbering,
        make=make,
    )
    note = made[-1]
    if note.refund:
        yield from notice_flow(
            d,
            ctx.policy.hooks,
            id=f"cn_{note.number}",
            type=INVOICE_REFUNDED,
            subject=note.subject,
            at_us=now,
            data={
                "credit_note": note.number,
                "invoice": note.invoice_number,
                "subject": note.subject,
                "currency": note.currency,
                "amount": str(note.amount),
                "reason": note.reason,
                "created": rfc3339(now),
            },
        )
    else:
        yield from add_grant(
            d,
            GrantRecord(
                id=note.number,
                subject=note.subject,
                currency=note.currency,
                amount_micros=int(note.amount.scaleb(6)),
                granted_us=now,
                source=note.number,
                note=note.reason[:200],
            ),
        )
    return note


def trace(
    ctx: Ctx, number: str, line: int, *, cursor: str | None = None, limit: int = 100
) -> Op[list[UsageEvent]]:
    """The usage events behind line ``line`` (0-based) of invoice ``number``: a page of at
    most ``limit`` in id order, after ``cursor``. Lines that rate no events give []."""
    found = yield from one(ctx, number)
    if not isinstance(line, int) or not 0 <= line < len(found.lines):
        raise InvoiceError(
            f"line: {line!r} is not a line of invoice {number}; expected 0..{len(found.lines) - 1}"
        )
    of = found.lines[line]
    info = of.trace
    meter = info.get("meter") or of.meter
    if of.kind not in ("usage", "adjustment") or not isinstance(meter, str):
        return []
    start, end = _int(info, "start_us", of.period_start_us), _int(info, "end_us", of.period_end_us)
    as_of = _int(info, "as_of_us", found.as_of_us)
    after = info.get("after_us")
    plan = info.get("plan", of.plan)

    def read() -> Flow[list[UsageEvent]]:
        history = yield from changes(ctx.dialect, found.subject, until_us=as_of)
        events = yield from trace_flow(
            ctx.dialect,
            found.subject,
            meter,
            plan if isinstance(plan, str) else None,
            start,
            end,
            as_of,
            after_us=after if isinstance(after, int) else None,
            cursor=cursor,
            limit=limit,
            plan_segments=plan_segments(ctx.policy, history, (start, end)),
        )
        return events

    events: list[UsageEvent] = yield from in_ledger(read)
    return events


def _int(info: Mapping[str, object], key: str, default: int) -> int:
    value = info.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvoiceError(f"line trace: {key} is {value!r:.40}; expected microseconds")
    return value
