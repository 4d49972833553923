"""Coupons on an invoice: which lines they take from, in which order, for how long.

A redeemed coupon applies for its ``duration`` of periods counted from the period holding the
redemption (``once``: that period only; N: N periods; ``forever``), to the lines its
``applies_to`` names: ``fee`` (plan fee lines with a positive amount), ``charges`` (every usage
line not paid by prepaid credits), or meter names (those meters' usage lines, again not paid
by credits: a prepaid line is settled by its credits lines already).

The order is fixed, so the same coupons always give the same cents:

1. percent coupons, in redemption order: each takes its percentage of what is left of each
   eligible line (after the coupons before it), rounded once per line;
2. amount coupons, in redemption order: each takes its amount from the eligible lines in
   invoice line order, as far as what is left of them allows.

No coupon ever takes a line below zero. Each coupon that takes something gives one discount
line (negative, naming the coupon), dated over the invoice's period.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from tollway.billing.records import Line, Redemption
from tollway.billing.rounding import round_line
from tollway.policy.model import Coupon

__all__ = ["active", "discount_lines", "eligible"]

Bounds = tuple[int, int]
ZERO = Decimal(0)


def active(coupon: Coupon, periods_since: int) -> bool:
    """Whether a coupon redeemed ``periods_since`` periods ago applies (-1: not yet)."""
    if periods_since < 0:
        return False
    if coupon.duration == "forever":
        return True
    if coupon.duration == "once":
        return periods_since == 0
    return periods_since < coupon.duration


def eligible(coupon: Coupon, line: Line) -> bool:
    """Whether ``coupon`` may take from ``line``."""
    if line.amount <= 0:
        return False
    if line.kind == "fee":
        return "fee" in coupon.applies_to
    if line.kind != "usage" or line.trace.get("credits"):
        return False
    return "charges" in coupon.applies_to or line.meter in coupon.applies_to


def discount_lines(
    *,
    coupons: Mapping[str, Coupon],
    redemptions: Sequence[Redemption],
    lines: Sequence[Line],
    currency: str,
    period: Bounds,
    periods_since: Callable[[int], int],
) -> list[Line]:
    """The discount lines of an invoice whose other lines are ``lines``.
    ``periods_since(redeemed_us)`` counts periods from the redemption's to this one."""
    applied = [
        (r, coupons[r.coupon])
        for r in sorted(redemptions, key=lambda r: (r.redeemed_us, r.coupon))
        if r.coupon in coupons and active(coupons[r.coupon], periods_since(r.redeemed_us))
    ]
    left = [line.amount for line in lines]
    out: list[Line] = []
    percents = [(r, c) for r, c in applied if c.percent is not None]
    amounts = [(r, c) for r, c in applied if c.percent is None and c.amount is not None]
    for redemption, coupon in percents + amounts:
        taken = ZERO
        budget = ZERO
        if coupon.percent is None:
            assert coupon.amount is not None
            if coupon.amount.currency != currency:
                continue  # a coupon in another currency takes nothing from this invoice
            budget = coupon.amount.amount
        for n, line in enumerate(lines):
            if not eligible(coupon, line) or left[n] <= 0:
                continue
            if coupon.percent is not None:
                take = min(left[n], round_line(left[n] * coupon.percent / 100, currency))
            else:
                take = min(left[n], budget - taken)
            left[n] -= take
            taken += take
            if coupon.percent is None and taken >= budget:
                break
        if taken > 0:
            what = f"{coupon.percent}%" if coupon.percent is not None else str(coupon.amount)
            out.append(
                Line(
                    kind="discount",
                    description=f"Coupon {coupon.code} ({what} off)",
                    amount=round_line(-taken, currency),
                    exact=-taken,
                    period_start_us=period[0],
                    period_end_us=period[1],
                    coupon=coupon.code,
                    trace={"coupon": coupon.code, "redeemed_us": redemption.redeemed_us},
                )
            )
    return out
