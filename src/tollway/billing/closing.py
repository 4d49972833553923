"""Closing periods: finalize every period whose grace is over, with gapless numbers, and carry
what changed in finalized periods onto the next invoice (or a credit note).

`close` runs, in this order:

1. Plans due: each subject's plan in force now (from its history: a ``next_period`` change, a
   trial's end) is put in the store, and a trial that ended gets its ``trial_end`` change and
   ``tollway.subscription.updated`` event.
2. Per subject (every subject with a change, a grant or an event), each period after its last
   invoice that ended at least ``invoice_grace`` ago: its finalized invoices of the lateness
   window are re-rated first when a late event or a backdated change reached them, then the
   period is rated as of now and finalized, numbered, stored with its content hash, and told
   as ``tollway.invoice.finalized``, in one ledger transaction. Re-rating differences go on
   it as adjustment lines; when they are in the customer's favour, a credit note on the
   corrected invoice gives them back to the prepaid balance instead.

A period with nothing to bill (no fee, no usage, no adjustment) gets no invoice. Closing twice
finalizes nothing twice: a period has one invoice, and a racing closer's attempt is refused
by the ledger and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from tollway.billing.adjustments import adjust, favours_customer, net
from tollway.billing.inputs import Known, parse_invoice, period_inputs
from tollway.billing.invoice import CreditNote, Invoice, build_invoice, finalize, rfc3339
from tollway.billing.notes import issue_credit_note
from tollway.billing.notify import notice_flow
from tollway.billing.ops import (
    Ctx,
    Op,
    anchor_of,
    in_ledger,
    in_store,
    notify_change,
    scope,
    year_of,
)
from tollway.billing.periods import next_period, period_at
from tollway.billing.records import Line, PlanChange
from tollway.billing.storage import (
    append_change,
    changed_since,
    changes,
    credit_notes,
    first_activity,
    invoices,
    store_invoice,
    subjects_with_history,
)
from tollway.billing.storage.documents import InvoiceDraft
from tollway.billing.subscriptions import plan_at
from tollway.clock import US
from tollway.engine import flows
from tollway.errors import InvoiceError
from tollway.events import INVOICE_FINALIZED
from tollway.metering.ledger.flows import Flow, Query

__all__ = ["Closed", "apply_due", "close", "preview"]

MAX_PERIODS = 120
"""The most periods one close finalizes per subject (ten years of months)."""
RERATE_MAX = 24
"""The most finalized invoices of a subject one close looks at again."""
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7330480721592010344))"


@dataclass(frozen=True, slots=True)
class Closed:
    """What one `close` did."""

    invoices: tuple[Invoice, ...] = ()
    """Finalized now, in subject then period order."""
    credit_notes: tuple[CreditNote, ...] = ()
    """Issued for re-rating differences in the customers' favour."""
    plans_applied: int = 0
    """Subjects whose plan in the store changed (scheduled changes, trials that ended)."""


def preview(ctx: Ctx, subject: str) -> Op[Invoice]:
    """The open period's draft, as of now (nothing is written)."""
    ctx.engine.check_subject(subject)
    now = ctx.now()

    def read() -> Flow[Invoice]:
        history = yield from changes(ctx.dialect, subject, until_us=now)
        period = period_at(ctx.config, now, anchor_of(history, ctx.policy))
        stored = [parse_invoice(s) for s in (yield from invoices(ctx.dialect, subject, 2))]
        before = next((i for i in stored if i.period_end_us == period[0]), None)
        inputs = yield from period_inputs(ctx, subject, period, now, Known(previous=before))
        return build_invoice(inputs)

    draft: Invoice = yield from in_ledger(read)
    return draft


def close(ctx: Ctx) -> Op[Closed]:
    ctx.require_billing()
    now = ctx.now()
    applied = yield from apply_due(ctx, now)
    firsts: dict[str, int] = yield from in_ledger(lambda: first_activity(ctx.dialect))
    finalized: list[Invoice] = []
    notes: list[CreditNote] = []
    for subject, first in firsts.items():
        made, given = yield from _close_subject(ctx, subject, first, now)
        finalized += made
        notes += given
    return Closed(tuple(finalized), tuple(notes), applied)


# -- plans due ---------------------------------------------------------------------------------


def apply_due(ctx: Ctx, now: int) -> Op[int]:
    """Put every subject's plan in force now into the store; record the trials that ended."""
    policy = ctx.policy
    subjects = yield from in_ledger(lambda: subjects_with_history(ctx.dialect))
    moved = 0
    for subject in subjects:
        history: list[PlanChange] = yield from in_ledger(partial(_end_trials, ctx, subject, now))
        want = plan_at(history, now, policy.defaults.plan, policy.plans)[0]
        if want is not None and want not in policy.plans:
            continue  # a plan the policy no longer has: left as it is
        have = yield from in_store(flows.plan_of(ctx.engine, subject))
        if have != want:
            yield from in_store(flows.assign(ctx.engine, subject, want))
            moved += 1
    return moved


def _end_trials(ctx: Ctx, subject: str, now: int) -> Flow[list[PlanChange]]:
    """The subject's history, with a ``trial_end`` change for a trial that ended by ``now``
    and is not followed by a later change (its event is told once, when recorded)."""
    policy = ctx.policy
    history = yield from changes(ctx.dialect, subject)
    last = max(history, key=lambda c: (c.effective_us, c.seq), default=None)
    if last is None or last.kind != "trial" or last.trial_end_us is None:
        return history
    if last.trial_end_us > now:
        return history
    spec = policy.plans.get(last.plan) if last.plan is not None else None
    then = spec.trial_then if spec is not None and spec.trial_then else last.plan
    change = yield from append_change(
        ctx.dialect,
        subject,
        then,
        effective_us=last.trial_end_us,
        recorded_us=now,
        kind="trial_end",
    )
    yield from notify_change(ctx, change, last.plan)
    return [*history, change]


# -- one subject -------------------------------------------------------------------------------


def _close_subject(
    ctx: Ctx, subject: str, first: int, now: int
) -> Op[tuple[list[Invoice], list[CreditNote]]]:
    config, d = ctx.config, ctx.dialect
    grace = config.invoice_grace_s * US
    # The cut: what the ledger holds up to now, included. Something recorded at that very
    # microsecond after this close read is found by the next re-rating, whose lower bound
    # is inclusive (see `_rerated`), so nothing falls between two cuts.
    cut = now
    stored = yield from in_ledger(lambda: invoices(d, subject, 1000))
    done = [parse_invoice(s) for s in stored]  # newest first
    history = yield from in_ledger(lambda: changes(d, subject, until_us=now))
    anchor = anchor_of(history, ctx.policy)
    if done:
        period = next_period(config, (done[0].period_start_us, done[0].period_end_us), anchor)
    else:
        period = period_at(config, first, anchor)
    made: list[Invoice] = []
    notes: list[CreditNote] = []
    for _ in range(MAX_PERIODS):
        if period[1] + grace > now:
            break
        adjustments, due = yield from _rerate(ctx, subject, done, cut)
        for corrected, lines in due:
            note = yield from issue_credit_note(
                ctx,
                corrected,
                -net(lines),
                reason=f"Re-rating of invoice {corrected.number}",
                refund=False,
                lines=lines,
            )
            notes.append(note)
        previous = done[0] if done and done[0].period_end_us == period[0] else None
        inputs = yield from in_ledger(
            partial(period_inputs, ctx, subject, period, cut, Known(previous, tuple(adjustments)))
        )
        draft = build_invoice(inputs)
        if draft.lines:
            try:
                invoice = yield from in_ledger(partial(_finalize, ctx, draft, now))
            except InvoiceError:
                break  # another closer finalized it first: the rest is theirs too
            made.append(invoice)
            done.insert(0, invoice)
        period = next_period(config, period, anchor)
    return made, notes


def _finalize(ctx: Ctx, draft: Invoice, now: int) -> Flow[Invoice]:
    """Number, store and tell one invoice, in one transaction."""
    d = ctx.dialect
    if d == "postgres":  # one closer at a time per subject: the second sees the first's invoice
        yield Query(_LOCK, (draft.subject,))
    made: list[Invoice] = []

    def make(number: str) -> InvoiceDraft:
        invoice = finalize(draft, number, now)
        made.append(invoice)
        return InvoiceDraft(
            subject=invoice.subject,
            period_start_us=invoice.period_start_us,
            period_end_us=invoice.period_end_us,
            currency=invoice.currency,
            total_micros=int(invoice.total.scaleb(6)),
            finalized_at_us=now,
            as_of_us=invoice.as_of_us,
            body=invoice.canonical_json().decode("utf-8"),
        )

    stored = yield from store_invoice(
        d,
        scope=scope(ctx, "invoice"),
        year=year_of(ctx, now),
        numbering=ctx.config.numbering,
        make=make,
    )
    invoice = made[-1]
    yield from notice_flow(
        d,
        ctx.policy.hooks,
        id=f"inv_{stored.number}",
        type=INVOICE_FINALIZED,
        subject=invoice.subject,
        at_us=now,
        data=_told(invoice, stored.content_hash),
    )
    return invoice


def _told(invoice: Invoice, content_hash: str) -> dict[str, Any]:
    return {
        "number": invoice.number,
        "subject": invoice.subject,
        "currency": invoice.currency,
        "period_start": rfc3339(invoice.period_start_us),
        "period_end": rfc3339(invoice.period_end_us),
        "subtotal": str(invoice.subtotal),
        "discounts": str(invoice.discounts),
        "credits": str(invoice.credits),
        "total": str(invoice.total),
        "lines": len(invoice.lines),
        "content_hash": content_hash,
    }


# -- re-rating ---------------------------------------------------------------------------------


def _rerate(
    ctx: Ctx, subject: str, done: Sequence[Invoice], cut: int
) -> Op[tuple[list[Line], list[tuple[Invoice, list[Line]]]]]:
    """Adjustment lines for the next invoice, and (invoice, lines) to credit, from the
    finalized invoices a late event or a backdated change reached since they were rated."""
    if not done:
        return [], []
    lateness = ctx.policy.ledger.lateness_s * US
    horizon = done[0].as_of_us - lateness
    carried: list[Line] = []
    credited: list[tuple[Invoice, list[Line]]] = []
    for invoice in reversed(done[:RERATE_MAX]):  # oldest first
        if invoice.period_end_us <= horizon:
            continue
        lines, notes = yield from in_ledger(partial(_rerated, ctx, invoice, done, cut))
        if not lines:
            continue
        room = invoice.total - sum((n.amount for n in notes), net([]))
        if favours_customer(lines) and -net(lines) <= room:
            credited.append((invoice, lines))
        else:
            carried += lines
    return carried, credited


def _rerated(
    ctx: Ctx, invoice: Invoice, done: Sequence[Invoice], cut: int
) -> Flow[tuple[list[Line], list[CreditNote]]]:
    """The adjustments that take what was billed for ``invoice``'s period (the invoice, and
    the adjustments of it since) to what its records say now ([] when nothing reached it),
    and the invoice's credit notes."""
    assert invoice.number is not None
    stored_notes = yield from credit_notes(ctx.dialect, invoice.number)
    notes = [CreditNote.from_dict(json.loads(s.body)) for s in stored_notes]
    billed_as_of = _billed_as_of(invoice, done, notes)
    period = (invoice.period_start_us, invoice.period_end_us)
    changed = yield from changed_since(ctx.dialect, invoice.subject, *period, billed_as_of, cut)
    if not changed:
        return [], notes
    known = Known(
        previous=next((i for i in done if i.period_end_us == period[0]), None),
        adjustments=tuple(line for line in invoice.lines if line.kind == "adjustment"),
    )
    baseline = invoice
    if billed_as_of != invoice.as_of_us:
        again = yield from period_inputs(ctx, invoice.subject, period, billed_as_of, known)
        baseline = replace(
            build_invoice(again), number=invoice.number, status="finalized", as_of_us=billed_as_of
        )
    rerated = build_invoice((yield from period_inputs(ctx, invoice.subject, period, cut, known)))
    # The adjustment lines trace the events recorded from the billed cut on, included.
    return adjust(replace(baseline, as_of_us=billed_as_of - 1), rerated), notes


def _billed_as_of(invoice: Invoice, done: Sequence[Invoice], notes: Sequence[CreditNote]) -> int:
    """The cut of the last rating of ``invoice``'s period that was billed: its own, or that of
    the latest adjustment of it (on a later invoice, or in a credit note)."""
    cut = invoice.as_of_us
    lines = [line for other in done for line in other.lines] + [
        line for note in notes for line in note.lines
    ]
    for line in lines:
        if line.kind == "adjustment" and line.trace.get("invoice") == invoice.number:
            as_of = line.trace.get("as_of_us")
            if isinstance(as_of, int) and as_of > cut:
                cut = as_of
    return cut
