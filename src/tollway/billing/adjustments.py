"""Re-rating: what a finalized invoice would say now, as adjustment lines for the next one.

A finalized invoice never changes. When a period is rated again (late events recorded within
the ledger's lateness window, a backdated plan change), `adjust` compares the two, per
(kind, plan, meter, grant, coupon) of their lines, and returns the differences as
``adjustment`` lines: each names the period it corrects and how to find the events it comes
from (trace: subject, meter, plan, the period, ``after_us`` = the old invoice's cut-off,
``as_of_us`` = the new one, the invoice number). Adjustment lines already on either invoice
(they correct earlier periods) are left out. The differences are of the rounded amounts, so
the adjusted cents add up with what was billed. When the net is in the customer's favour
(`favours_customer`), the facade issues a credit note for it instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from tollway.billing.invoice import Invoice
from tollway.billing.records import Line

__all__ = ["adjust", "favours_customer", "net"]

Key = tuple[str, str, str, str, str]
ZERO = Decimal(0)


def _key(line: Line) -> Key:
    return (line.kind, line.plan or "", line.meter or "", line.grant or "", line.coupon or "")


def _totals(invoice: Invoice) -> dict[Key, tuple[Decimal, Decimal, Decimal]]:
    out: dict[Key, tuple[Decimal, Decimal, Decimal]] = {}
    for line in invoice.lines:
        if line.kind == "adjustment":
            continue
        amount, exact, quantity = out.get(_key(line), (ZERO, ZERO, ZERO))
        out[_key(line)] = (
            amount + line.amount,
            exact + line.exact,
            quantity + (line.quantity or ZERO),
        )
    return out


def adjust(invoiced: Invoice, rerated: Invoice) -> list[Line]:
    """The adjustment lines that take ``invoiced`` to ``rerated`` (the same period, rated
    again), in key order; none when nothing changed."""
    if (invoiced.subject, invoiced.period_start_us, invoiced.period_end_us) != (
        rerated.subject,
        rerated.period_start_us,
        rerated.period_end_us,
    ):
        raise ValueError("rerated: not the same subject and period as the invoice")
    old, new = _totals(invoiced), _totals(rerated)
    lines: list[Line] = []
    for key in sorted(set(old) | set(new)):
        a_old, e_old, q_old = old.get(key, (ZERO, ZERO, ZERO))
        a_new, e_new, q_new = new.get(key, (ZERO, ZERO, ZERO))
        if a_new == a_old and q_new == q_old:
            continue
        kind, plan, meter, grant, coupon = key
        what = " ".join(x for x in (kind, meter, f"({plan})" if plan else "", grant, coupon) if x)
        lines.append(
            Line(
                kind="adjustment",
                description=f"Adjustment: {what}, invoice {invoiced.number or 'draft'}",
                amount=a_new - a_old,
                exact=e_new - e_old,
                period_start_us=invoiced.period_start_us,
                period_end_us=invoiced.period_end_us,
                plan=plan or None,
                meter=meter or None,
                quantity=(q_new - q_old) if kind == "usage" else None,
                grant=grant or None,
                coupon=coupon or None,
                trace={
                    "of": kind,
                    "invoice": invoiced.number,
                    "subject": invoiced.subject,
                    "meter": meter or None,
                    "plan": plan or None,
                    "start_us": invoiced.period_start_us,
                    "end_us": invoiced.period_end_us,
                    "after_us": invoiced.as_of_us,
                    "as_of_us": rerated.as_of_us,
                },
            )
        )
    return lines


def net(lines: Sequence[Line]) -> Decimal:
    return sum((line.amount for line in lines), ZERO)


def favours_customer(lines: Sequence[Line]) -> bool:
    """Whether the adjustments net to a credit: the facade issues a credit note for them."""
    return net(lines) < 0
