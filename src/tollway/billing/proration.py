"""Plan fees on an invoice, prorated to the second.

A plan's ``fee`` is due per billing period, ``arrears`` (for the period just ended) or
``advance`` (for the period ahead). Every fee line is rounded once and names its plan and the
stretch of time it pays for (``period_start``/``period_end``).

- Arrears: each segment of the period (`tollway.billing.subscriptions.segments`) pays
  ``fee * seconds / period seconds`` of its plan. An upgrade from 100/month to 200/month on
  Jan 15 00:00 of a January started Jan 1 bills 100 x 14/31 = 45.16 and 200 x 17/31 = 109.68.
- Advance: the invoice of period P bills the next period P+1 in full, for the plan in force at
  P's end (prorated only from a trial's end inside P+1). It also corrects P: what was billed in
  advance for P (the invoice of P-1, ``previous``) is compared with the plans P really had;
  where they differ, a credit line gives back the unused part of what was billed (negative,
  at the rate it was billed) and a debit line bills the new plan's part. Nothing billed in
  advance (the first period of a subscription, or a trial before it): the plan's part of P is
  billed on P's own invoice, prorated from its start.
- Trials: no fee before the trial's end; from it on the plan (or its ``trial_then``) pays,
  prorated from that instant.
- ``proration = "none"``: a change does not split the fee; the plan in force before it pays
  until the period's end, and the new plan's fee starts with the next period.
- A plan without a fee, the default plan ``None``, or a plan no longer in the policy: no fee.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from tollway.billing.records import Line, PlanChange
from tollway.billing.rounding import round_line
from tollway.billing.subscriptions import Segment, segments
from tollway.errors import BillingError
from tollway.policy.model import Fee, Plan

__all__ = ["fee_lines", "fee_segments"]

Bounds = tuple[int, int]


def fee_segments(segs: Sequence[Segment]) -> list[Segment]:
    """The segments as fees see them: a ``none`` change does not split, and neighbours of the
    same plan and trial state are one segment."""
    out: list[Segment] = []
    for given in segs:
        seg = given
        if out and seg.changed and seg.proration == "none":
            seg = Segment(out[-1].plan, seg.start_us, seg.end_us, out[-1].trial)
        if out and (out[-1].plan, out[-1].trial) == (seg.plan, seg.trial):
            last = out[-1]
            out[-1] = Segment(
                last.plan, last.start_us, seg.end_us, last.trial, last.proration, last.changed
            )
        else:
            out.append(seg)
    return out


@dataclass(frozen=True, slots=True)
class _Rating:
    plans: Mapping[str, Plan]
    currency: str

    def fee(self, plan: str | None) -> Fee | None:
        spec = self.plans.get(plan) if plan is not None else None
        if spec is None or spec.fee is None:
            return None
        if spec.fee.amount.currency != self.currency:
            raise BillingError(
                f"{spec.path or 'plans.' + spec.name}.fee: {spec.fee.amount} is not in the "
                f"billing currency; expected an amount in {self.currency}"
            )
        return spec.fee

    def line(
        self, plan: str | None, exact: Decimal, bounds: Bounds, description: str, **trace: object
    ) -> Line:
        return Line(
            kind="fee",
            description=description,
            amount=round_line(exact, self.currency),
            exact=exact,
            period_start_us=bounds[0],
            period_end_us=bounds[1],
            plan=plan,
            trace={"plan": plan, "start_us": bounds[0], "end_us": bounds[1], **trace},
        )

    def share(self, fee: Fee, bounds: Bounds, period: Bounds) -> Decimal:
        """The fee of ``bounds``, a part of ``period``, to the second."""
        seconds = (bounds[1] - bounds[0]) // 1_000_000
        whole = (period[1] - period[0]) // 1_000_000
        amount = fee.amount.amount
        return amount if seconds >= whole else amount * seconds / whole


def _label(plan: str | None, bounds: Bounds, period: Bounds) -> str:
    return f"Plan {plan} fee" + ("" if bounds == period else ", prorated")


def fee_lines(
    *,
    plans: Mapping[str, Plan],
    currency: str,
    history: Sequence[PlanChange],
    default_plan: str | None,
    period: Bounds,
    next_period: Bounds,
    previous: Sequence[Line] | None = None,
) -> list[Line]:
    """The fee lines of the invoice of ``period``: its arrears fees, the corrections of what
    was billed in advance for it (``previous``: the lines of the invoice of the period before),
    and the advance fee of ``next_period``."""
    rating = _Rating(plans, currency)
    segs = fee_segments(segments(history, *period, default_plan, plans))
    lines: list[Line] = []
    advance: list[Segment] = []
    for seg in segs:
        fee = None if seg.trial else rating.fee(seg.plan)
        if fee is None:
            continue
        if fee.timing == "advance":
            advance.append(seg)
            continue
        bounds = (seg.start_us, seg.end_us)
        exact = rating.share(fee, bounds, period)
        lines.append(
            rating.line(seg.plan, exact, bounds, _label(seg.plan, bounds, period), timing="arrears")
        )
    billed = [
        line
        for line in previous or ()
        if line.kind == "fee"
        and line.trace.get("timing") == "advance"
        and period[0] <= line.period_start_us
        and line.period_end_us <= period[1]
        and line.exact > 0
    ]
    lines += _corrections(rating, period, billed, advance)
    known = [c for c in history if c.effective_us <= next_period[0]]
    for seg in fee_segments(segments(known, *next_period, default_plan, plans)):
        fee = None if seg.trial else rating.fee(seg.plan)
        if fee is None or fee.timing != "advance":
            continue
        bounds = (seg.start_us, seg.end_us)
        exact = rating.share(fee, bounds, next_period)
        label = _label(seg.plan, bounds, next_period) + ", in advance"
        lines.append(rating.line(seg.plan, exact, bounds, label, timing="advance"))
    return lines


def _corrections(
    rating: _Rating, period: Bounds, billed: Sequence[Line], actual: Sequence[Segment]
) -> list[Line]:
    """Credit and debit lines where what was billed in advance for ``period`` and the plans it
    really had differ, one line per unbroken run of a billed line or a segment."""
    cuts = sorted(
        {period[0], period[1]}
        | {t for line in billed for t in (line.period_start_us, line.period_end_us)}
        | {t for seg in actual for t in (seg.start_us, seg.end_us)}
    )
    # (index of the billed line or segment, run start, run end), per side.
    credits: list[list[int]] = []
    debits: list[list[int]] = []
    for start, end in itertools.pairwise(cuts):
        b = next(
            (n for n, x in enumerate(billed) if x.period_start_us <= start < x.period_end_us),
            None,
        )
        a = next((n for n, s in enumerate(actual) if s.start_us <= start < s.end_us), None)
        if b is not None and a is not None and billed[b].plan == actual[a].plan:
            continue
        for side, index in ((credits, b), (debits, a)):
            if index is None:
                continue
            if side and side[-1][0] == index and side[-1][2] == start:
                side[-1][2] = end
            else:
                side.append([index, start, end])
    lines: list[Line] = []
    for index, start, end in credits:
        line = billed[index]
        span = line.period_end_us - line.period_start_us
        exact = -(line.exact * (end - start) / span)
        lines.append(
            rating.line(
                line.plan,
                exact,
                (start, end),
                f"Plan {line.plan} fee, unused time billed in advance",
                timing="credit",
            )
        )
    for index, start, end in debits:
        seg = actual[index]
        fee = rating.fee(seg.plan)
        assert fee is not None  # only segments with a fee are given
        exact = rating.share(fee, (start, end), period)
        label = _label(seg.plan, (start, end), period)
        lines.append(rating.line(seg.plan, exact, (start, end), label, timing="debit"))
    return lines
