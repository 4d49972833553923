"""Coupons: percent first, then amounts, in redemption order, never below zero; durations."""

from __future__ import annotations

from decimal import Decimal

import pytest
from tests.billing_support import us

from tollway.billing.discounts import active, discount_lines
from tollway.billing.records import Line, LineKind, Redemption
from tollway.money import Money
from tollway.policy.model import Coupon

D = Decimal
P = (us(2026, 1, 1), us(2026, 2, 1))


def line(kind: LineKind, amount: str, meter: str | None = None, **trace: object) -> Line:
    return Line(
        kind=kind,
        description=kind,
        amount=D(amount),
        exact=D(amount),
        period_start_us=P[0],
        period_end_us=P[1],
        meter=meter,
        trace=trace,
    )


def pct(
    code: str,
    percent: str,
    applies_to: tuple[str, ...] = ("fee", "charges"),
    duration: object = "forever",
) -> Coupon:
    return Coupon(code=code, percent=D(percent), applies_to=applies_to, duration=duration)  # type: ignore[arg-type]


def off(code: str, amount: str, applies_to: tuple[str, ...] = ("fee", "charges")) -> Coupon:
    return Coupon(
        code=code, amount=Money.parse(f"{amount} USD"), applies_to=applies_to, duration="forever"
    )


def run(coupons: list[Coupon], lines: list[Line], since: int = 0) -> list[tuple[str | None, str]]:
    redemptions = [
        Redemption(subject="acct", coupon=c.code, redeemed_us=n) for n, c in enumerate(coupons)
    ]
    out = discount_lines(
        coupons={c.code: c for c in coupons},
        redemptions=redemptions,
        lines=lines,
        currency="USD",
        period=P,
        periods_since=lambda _t: since,
    )
    assert all(x.kind == "discount" and x.amount < 0 for x in out)
    return [(x.coupon, str(x.amount)) for x in out]


def test_percent_before_amount_whatever_the_redemption_order() -> None:
    lines = [line("fee", "100.00"), line("usage", "50.00", "geocode")]
    # FIVE was redeemed first, but percent coupons go first: 20% of 150 = 30, then 5 off.
    assert run([off("FIVE", "5.00"), pct("TWENTY", "20")], lines) == [
        ("TWENTY", "-30.00"),
        ("FIVE", "-5.00"),
    ]


def test_percent_rounded_once_per_line_and_stacked_on_what_is_left() -> None:
    lines = [line("fee", "0.05"), line("fee", "0.05")]
    # 50% of 0.05 = 0.025 -> 0.02 (half even) per line; then 50% of 0.03 = 0.015 -> 0.02.
    assert run([pct("A", "50"), pct("B", "50")], lines) == [("A", "-0.04"), ("B", "-0.04")]


def test_never_below_zero() -> None:
    lines = [line("fee", "3.00"), line("usage", "2.00", "geocode")]
    assert run([pct("ALL", "100"), off("TEN", "10.00")], lines) == [("ALL", "-5.00")]
    assert run([off("TEN", "10.00"), off("TWO", "2.00")], lines) == [("TEN", "-5.00")]


def test_applies_to_fee_charges_meter_and_not_credits_or_negative_lines() -> None:
    lines = [
        line("fee", "10.00"),
        line("fee", "-4.00"),
        line("usage", "20.00", "geocode"),
        line("usage", "30.00", "search"),
        line("usage", "40.00", "lookup", credits=True),
    ]
    assert run([pct("F", "10", ("fee",))], lines) == [("F", "-1.00")]
    assert run([pct("C", "10", ("charges",))], lines) == [("C", "-5.00")]
    assert run([pct("S", "10", ("search", "lookup"))], lines) == [("S", "-3.00")]


def test_amount_taken_in_line_order() -> None:
    lines = [line("usage", "2.00", "a"), line("usage", "5.00", "b")]
    assert run([off("SIX", "6.00")], lines) == [("SIX", "-6.00")]


@pytest.mark.parametrize(
    ("duration", "since", "expected"),
    [
        ("once", 0, True),
        ("once", 1, False),
        (3, 2, True),
        (3, 3, False),
        ("forever", 500, True),
        ("forever", -1, False),
    ],
)
def test_durations(duration: object, since: int, expected: bool) -> None:
    assert active(pct("X", "10", duration=duration), since) is expected
    assert bool(run([pct("X", "10", duration=duration)], [line("fee", "10.00")], since)) is expected
