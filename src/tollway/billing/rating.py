"""Usage lines: each (plan, meter) total of a period priced under that plan's charge.

Usage is rated under the plan recorded on its events (the plan in force at the decision), so
a period with a plan change has a usage line per plan. The quantity is the charge's
aggregation of the meter's events: ``sum`` of quantities, ``count`` of events, or ``unique``
values of an attribute; the amount is ``charge.total(quantity)``, ``minimum`` and ``maximum``
applying per charge, per plan, per period. A meter with no charge on its plan is free there:
no line (the invoice shows what is billed). A negative net quantity (corrections) rates as 0.

A meter drawn from prepaid credits (an operation under a limit of the plan with ``kind ==
"credits"``) is priced at what the steps drew or billed as overage (``amount_micros``): one
usage line at the full amount, and `credits_lines` takes back what the grants paid, grant by
grant, so only the overage is left to pay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_FLOOR, Decimal

from tollway.billing.credits import Allocation
from tollway.billing.records import Line, UsageTotal
from tollway.billing.rounding import minor_unit, round_line
from tollway.money import MICROS_PER_UNIT
from tollway.policy.charges import Charge
from tollway.policy.model import Plan

__all__ = ["charge_of", "credits_lines", "is_credits_meter", "micros", "usage_lines"]

Bounds = tuple[int, int]


def micros(value: int) -> Decimal:
    """Micro-units as an exact Decimal amount."""
    return Decimal(value) / MICROS_PER_UNIT


def is_credits_meter(plan: Plan | None, meter: str) -> bool:
    """Whether ``meter`` is paid from prepaid credits on ``plan``."""
    return plan is not None and any(
        limit.kind == "credits" and limit.applies_to(meter) for limit in plan.limits
    )


def charge_of(plan: Plan | None, meter: str) -> Charge | None:
    if plan is None:
        return None
    return next((c for c in plan.charges if c.meter == meter), None)


def _quantity(charge: Charge, total: UsageTotal) -> Decimal:
    if charge.aggregation == "count":
        return Decimal(total.events)
    if charge.aggregation == "unique":
        return Decimal(total.uniques.get(charge.attribute or "", 0))
    return Decimal(max(0, total.quantity))


def usage_lines(
    *,
    plans: Mapping[str, Plan],
    currency: str,
    subject: str,
    totals: Sequence[UsageTotal],
    default_plan: str | None,
    period: Bounds,
    as_of_us: int,
) -> list[Line]:
    """The usage lines of a period, in (plan, meter) order."""
    lines: list[Line] = []
    for total in sorted(totals, key=lambda t: (t.plan or "", t.meter)):
        name = total.plan if total.plan is not None else default_plan
        plan = plans.get(name) if name is not None else None
        trace: dict[str, object] = {
            "subject": subject,
            "meter": total.meter,
            "plan": name,
            "start_us": period[0],
            "end_us": period[1],
            "as_of_us": as_of_us,
            "events": total.events,
            "first_event": total.first_event,
            "last_event": total.last_event,
        }
        if is_credits_meter(plan, total.meter):
            exact = micros(total.amount_micros)
            quantity = Decimal(total.quantity)
            trace["credits"] = True
            trace["drawn_micros"] = total.drawn_micros
            description = f"{total.meter} ({name}), prepaid"
        else:
            charge = charge_of(plan, total.meter)
            if charge is None:
                continue
            quantity = _quantity(charge, total)
            exact = charge.total(quantity)
            description = f"{total.meter} ({name}), {charge.model}"
        lines.append(
            Line(
                kind="usage",
                description=description,
                amount=round_line(exact, currency),
                exact=exact,
                period_start_us=period[0],
                period_end_us=period[1],
                plan=name,
                meter=total.meter,
                quantity=quantity,
                trace=trace,
            )
        )
    return lines


def split_rounded(exacts: Sequence[Decimal], currency: str) -> list[Decimal]:
    """Each amount rounded so that the rounded parts sum to their rounded sum (the largest
    remainders take the leftover minor units; ties by position)."""
    step = Decimal(1).scaleb(-minor_unit(currency))
    target = round_line(sum(exacts, Decimal(0)), currency)
    floors = [(x / step).to_integral_value(rounding=ROUND_FLOOR) * step for x in exacts]
    left = int((target - sum(floors, Decimal(0))) / step)
    ranked = sorted(range(len(exacts)), key=lambda n: (floors[n] - exacts[n], n))
    out = list(floors)
    for n in ranked[: max(0, left)]:
        out[n] += step
    return [x.quantize(step) for x in out]


def credits_lines(
    *, allocation: Allocation, currency: str, drawn_micros: int, period: Bounds
) -> list[Line]:
    """Negative lines, one per grant, for what the period's credits-paid usage drew
    (``drawn_micros``): by the allocation of the grants' draws, and whatever the allocation
    does not account for in a line without a grant, so the lines always sum to the draw."""
    parts: list[tuple[str | None, int]] = list(allocation.drawn.items())
    rest = drawn_micros - allocation.total
    if rest:
        parts.append((None, rest))
    exacts = [-micros(m) for _, m in parts]
    rounded = split_rounded(exacts, currency)
    return [
        Line(
            kind="credits",
            description=f"Prepaid credits, grant {grant}" if grant else "Prepaid credits",
            amount=amount,
            exact=exact,
            period_start_us=period[0],
            period_end_us=period[1],
            grant=grant,
            trace={"grant": grant, "micros": m, "start_us": period[0], "end_us": period[1]},
        )
        for (grant, m), exact, amount in zip(parts, exacts, rounded, strict=True)
        if m
    ]
