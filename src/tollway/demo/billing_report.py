"""The billing part of ``tollway demo``, as text: from a `tollway.demo.billing.BillingDemo`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from tollway.cli.output import plural, table
from tollway.clock import utc
from tollway.demo.billing import (
    APRIL_CLOSED,
    APRIL_DAYS,
    COUPON,
    GRANTS,
    LATE_ARRIVES,
    MARCH_CLOSED,
    SUBJECTS,
)

if TYPE_CHECKING:
    from tollway.billing.invoice import Invoice
    from tollway.demo.billing_figures import BillingDemo

__all__ = ["BREAKDOWN", "render_billing"]

BREAKDOWN = ("acct_growth", "acct_prepaid")
"""The subjects whose invoices are shown line by line."""


def _at(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M")


def _month(inv: Invoice) -> str:
    return inv.period_start.strftime("%Y-%m")


def _story(demo: BillingDemo) -> list[str]:
    march = [i for i in demo.invoices if _month(i) == "2026-03"]
    april = [i for i in demo.invoices if _month(i) == "2026-04"]
    prepaid_denied = sum(
        t.denied
        for t in demo.traffic_of("acct_prepaid", month="2026-03")
        if t.operation == "lookup"
    )
    late = demo.late
    lines = [
        f"  {_at(demo.start)}  acct_trial starts a trial of pro (no fee until "
        f"{_at(demo.trial_end)})",
        f"  {_at(demo.start)}  acct_growth is on pro and redeems {COUPON}",
        f"  {_at(demo.start)}  acct_prepaid is on pro with a grant {GRANTS[0][0]} of "
        f"{GRANTS[0][1]} USD",
        f"  {_at(demo.upgrade_at)}  acct_growth upgrades to team (both fees prorated to "
        "the second)",
    ]
    if demo.ran_out_at is not None:
        lines.append(
            f"  {_at(demo.ran_out_at)}  acct_prepaid's credits run out: lookups denied until "
            f"the top-up ({prepaid_denied} in March)"
        )
    for gid, amount, when in GRANTS[1:]:
        lines.append(f"  {_at(when)}  acct_prepaid tops up: grant {gid} of {amount} USD")
    note = next(iter(demo.credit_notes), None)
    lines += [
        f"  {_at(MARCH_CLOSED)}  March closed: {plural(len(march), 'invoice')} finalized",
        f"  {_at(LATE_ARRIVES)}  a late event: {late.quantity} {late.meter} of {late.subject} "
        f"({late.plan}) that occurred {_at(utc(late.occurred_at_us))}",
    ]
    if note is not None:
        lines.append(
            f"  {_at(LATE_ARRIVES)}  {note.number} refunds {note.amount} {note.currency} of "
            f"{note.invoice_number} ({note.subject}): {note.reason}"
        )
    lines.append(
        f"  {_at(APRIL_CLOSED)}  April closed: {plural(len(april), 'invoice')} finalized "
        "(the late event: an adjustment of March)"
    )
    return lines


def _traffic(demo: BillingDemo) -> list[str]:
    rows = [
        [
            t.subject,
            t.month,
            t.plan,
            t.operation,
            str(t.calls),
            str(t.allowed),
            str(t.denied),
            str(t.units),
            f"{t.drawn:.2f}" if t.operation == "lookup" else "",
        ]
        for subject in SUBJECTS
        for t in demo.traffic_of(subject)
    ]
    headers = ["subject", "month", "plan", "operation", "calls", "allowed", "denied", "units"]
    return table([*headers, "from credits"], rows, right={4, 5, 6, 7, 8}, indent="  ")


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _refunded(demo: BillingDemo, number: str | None) -> Decimal:
    return sum(
        (n.amount for n in demo.credit_notes if n.invoice_number == number and n.refund),
        Decimal(0),
    )


def _invoices(demo: BillingDemo) -> list[str]:
    rows = []
    for inv in demo.invoices:
        refunded = _refunded(demo, inv.number)
        rows.append(
            [
                inv.number or "draft",
                inv.subject,
                _month(inv),
                str(len(inv.lines)),
                _money(inv.subtotal),
                _money(inv.discounts),
                _money(inv.credits),
                _money(inv.total),
                _money(refunded) if refunded else "",
            ]
        )
    headers = ["number", "subject", "period", "lines", "subtotal", "discounts", "credits"]
    return table([*headers, "total", "refunded"], rows, right={3, 4, 5, 6, 7, 8}, indent="  ")


def _breakdown(inv: Invoice) -> list[str]:
    rows = [
        [
            line.kind,
            line.description,
            line.period_start.strftime("%Y-%m"),
            "" if line.quantity is None else str(line.quantity),
            str(line.amount),
        ]
        for line in inv.lines
    ]
    rows.append(["total", "", "", "", str(inv.total)])
    head = f"{inv.number} ({inv.subject}, {_month(inv)}, {inv.currency}):"
    return [head, *table(["kind", "description", "of", "quantity", "amount"], rows, {3, 4}, "  ")]


def render_billing(demo: BillingDemo) -> str:
    """The demo's billing part: the month's story, the traffic, the invoices as a table, the
    lines of a few, where the HTML invoice went."""
    lines = [
        f"Billing: March 2026 and {APRIL_DAYS} days of April for "
        f"{plural(len(SUBJECTS), 'subject')} (seed {demo.seed}), memory store, fake clock,",
        "invoices in a SQLite ledger, on the policy tollway/demo/billing.toml",
        "  pro: 49.00 USD a month (arrears, a 14-day trial), geocode 0.004 USD a unit, search",
        "       2.00 USD per started 100, lookup 0.01 USD a unit paid from prepaid credits",
        "  team: 199.00 USD a month, geocode 0.002 USD a unit, search 1.00 USD per started 100",
        f"  coupon {COUPON}: 20% off plan fees for 3 months",
        "",
        *_story(demo),
        "",
        "Traffic, as the steps answered it:",
        *_traffic(demo),
        "",
        f"Invoices ({plural(len(demo.invoices), 'invoice')}, "
        f"{plural(len(demo.credit_notes), 'credit note')}):",
        *_invoices(demo),
    ]
    for subject in BREAKDOWN:
        for inv in demo.invoices:
            if inv.subject == subject:
                lines += ["", *_breakdown(inv)]
    lines += [
        "",
        f"HTML invoice {demo.html_invoice} written to {demo.html_path}",
    ]
    return "\n".join(lines)
