"""Everything one invoice depends on, read from the ledger in one transaction.

`period_inputs` is the flow a preview, a close and a re-rating share: the subject's plan
history, its usage aggregated in SQL, its grants and draws, its redemptions, all cut at
``as_of_us`` (what the ledger held then), so building the invoice again over the same cut
gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tollway.billing.credits import change_points
from tollway.billing.invoice import Invoice, InvoiceInputs
from tollway.billing.ops import Ctx, anchor_of
from tollway.billing.records import Line, PlanChange
from tollway.billing.storage import changes, draw_sums, grants, redemptions, usage_totals
from tollway.billing.storage.documents import StoredInvoice
from tollway.billing.storage.usage import BOUNDARIES_MAX
from tollway.billing.subscriptions import segments
from tollway.metering.ledger.flows import Flow
from tollway.policy.model import Policy

__all__ = [
    "Bounds",
    "Known",
    "credit_limits",
    "parse_invoice",
    "period_inputs",
    "plan_segments",
    "unique_attributes",
]

Bounds = tuple[int, int]


def credit_limits(policy: Policy) -> dict[str | None, str]:
    """Plan -> the name of its credits limit (the draws are the events that name it)."""
    out: dict[str | None, str] = {}
    for name, plan in policy.plans.items():
        for limit in plan.limits:
            if limit.credits is not None:
                out[name] = limit.name
    return out


def unique_attributes(policy: Policy) -> dict[str, str]:
    """Meter -> the attribute its ``unique`` charges count (the first plan's, per meter)."""
    out: dict[str, str] = {}
    for plan in policy.plans.values():
        for charge in plan.charges:
            if charge.aggregation == "unique" and charge.attribute and charge.meter:
                out.setdefault(charge.meter, charge.attribute)
    return out


def plan_segments(
    policy: Policy, history: Sequence[PlanChange], period: Bounds
) -> list[tuple[int, str | None]]:
    """(start_us, plan) of the plans in force over ``period``: an event recorded without a
    plan (``tw.record``) is rated under the plan in force when it occurred."""
    if not history:
        return []
    found = segments(history, *period, policy.defaults.plan, policy.plans)
    return [(seg.start_us, seg.plan) for seg in found]


def parse_invoice(stored: StoredInvoice) -> Invoice:
    return Invoice.from_dict(json.loads(stored.body))


@dataclass(frozen=True, slots=True)
class Known:
    """What is already finalized around a period: the invoice before it (what was billed in
    advance for it) and the adjustment lines it carries (they correct earlier periods)."""

    previous: Invoice | None = None
    adjustments: tuple[Line, ...] = ()


def period_inputs(
    ctx: Ctx, subject: str, period: Bounds, as_of_us: int, known: Known = Known()
) -> Flow[InvoiceInputs]:
    d, policy, config = ctx.dialect, ctx.policy, ctx.config
    limits = credit_limits(policy)
    history = yield from changes(d, subject, until_us=as_of_us)
    usage = yield from usage_totals(
        d,
        subject,
        period[0],
        period[1],
        as_of_us,
        currency=config.currency,
        unique_attributes=unique_attributes(policy),
        credit_limits=limits,
        plan_segments=plan_segments(policy, history, period),
    )
    kept = [g for g in (yield from grants(d, subject, config.currency)) if g.granted_us <= as_of_us]
    draws: list[tuple[int, int]] = []
    if kept and limits:
        first = min(g.granted_us for g in kept)
        if first < period[1]:
            points = change_points(kept, first, period[1])
            if first < period[0]:  # draws of the period dated inside it, not before
                points = sorted({*points, period[0]})
            draws = yield from _draws(ctx, subject, points, as_of_us, limits)
    redeemed = [r for r in (yield from redemptions(d, subject)) if r.redeemed_us <= as_of_us]
    return InvoiceInputs(
        policy=policy,
        subject=subject,
        period_start_us=period[0],
        period_end_us=period[1],
        as_of_us=as_of_us,
        history=tuple(history),
        usage=tuple(usage),
        grants=tuple(kept),
        draws=tuple(draws),
        redemptions=tuple(redeemed),
        previous=known.previous,
        adjustments=known.adjustments,
        anchor_us=anchor_of(history, policy),
        config=config,
    )


def _draws(
    ctx: Ctx,
    subject: str,
    points: Sequence[int],
    as_of_us: int,
    limits: dict[str | None, str],
) -> Flow[list[tuple[int, int]]]:
    """The draws summed per interval between change points, each at its interval's start
    (in queries of at most `BOUNDARIES_MAX` boundaries)."""
    out: list[tuple[int, int]] = []
    step = BOUNDARIES_MAX - 1
    for at in range(0, len(points) - 1, step):
        chunk = list(points[at : at + step + 1])
        sums = yield from draw_sums(
            ctx.dialect,
            subject,
            ctx.config.currency,
            chunk,
            as_of_us=as_of_us,
            credit_limits=limits,
        )
        out += [(start, total) for start, total in zip(chunk, sums, strict=False) if total]
    return out
