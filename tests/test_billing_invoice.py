"""A whole invoice to the cent (fee, four charge models, a coupon, credits and overage), its
canonical bytes and hash, finalization, credit notes, and re-rating into adjustments."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal, localcontext

import pytest
from tests.billing_support import change, credits_limit, fee, plan, policy, us

from tollway.billing import Charge
from tollway.billing.adjustments import adjust, favours_customer
from tollway.billing.invoice import (
    CreditNote,
    Invoice,
    InvoiceInputs,
    build_credit_note,
    build_invoice,
    finalize,
)
from tollway.billing.records import GrantRecord, Redemption, UsageTotal
from tollway.errors import InvoiceError
from tollway.policy.model import Coupon, Policy

D = Decimal
JAN = (us(2026, 1, 1), us(2026, 2, 1))
CHARGES = (
    Charge.parse({"meter": "lookup", "model": "unit", "unit": "0.0015"}),
    Charge.parse(
        {
            "meter": "geocode",
            "model": "graduated",
            "tiers": [
                {"up_to": 1000, "unit": "0"},
                {"up_to": 10000, "unit": "0.004"},
                {"unit": "0.002"},
            ],
        }
    ),
    Charge.parse(
        {"meter": "search", "model": "package", "size": 100, "amount": "5.00", "free": 100}
    ),
    Charge.parse(
        {
            "meter": "enrich",
            "model": "volume",
            "block": 10,
            "tiers": [{"up_to": 100, "unit": "1.00"}, {"unit": "0.50"}],
        }
    ),
    Charge.parse(
        {
            "meter": "users",
            "model": "unit",
            "unit": "2",
            "aggregation": "unique",
            "attribute": "user",
        }
    ),
)


def the_policy() -> Policy:
    pro = plan("pro", fee_=fee("49.00"), charges=CHARGES, limits=(credits_limit(("prepaid",)),))
    coupon = Coupon(code="LAUNCH20", percent=D(20), duration=3, applies_to=("fee",))
    return policy(pro, coupons=(coupon,))


def total(meter: str, quantity: int, **kw: object) -> UsageTotal:
    return UsageTotal(
        plan="pro",
        meter=meter,
        quantity=quantity,
        events=kw.pop("events", 3),
        first_event="e1",
        last_event="e9",
        **kw,
    )  # type: ignore[arg-type]


USAGE = (
    total("lookup", 1000),
    total("geocode", 12000),
    total("search", 350),
    total("enrich", 1005),
    total("users", 40, uniques={"user": 7}),
    total("prepaid", 500, amount_micros=12_345_678, drawn_micros=10_000_000),
    total("unpriced", 99),
)
GRANTS = (
    GrantRecord(
        id="g-big",
        subject="acct",
        currency="USD",
        amount_micros=10_000_000,
        granted_us=us(2025, 12, 1),
    ),
    GrantRecord(
        id="g-vip",
        subject="acct",
        currency="USD",
        amount_micros=6_000_000,
        granted_us=us(2025, 12, 2),
        priority=1,
    ),
)


def inputs(**kw: object) -> InvoiceInputs:
    base: dict[str, object] = {
        "policy": the_policy(),
        "subject": "acct",
        "period_start_us": JAN[0],
        "period_end_us": JAN[1],
        "as_of_us": JAN[1] + 3600_000_000,
        "history": (change("pro", us(2025, 12, 1)),),
        "usage": USAGE,
        "grants": GRANTS,
        "draws": ((JAN[0], 10_000_000),),
        "redemptions": (
            Redemption(subject="acct", coupon="LAUNCH20", redeemed_us=us(2025, 12, 20)),
        ),
    }
    base.update(kw)
    return InvoiceInputs(**base)  # type: ignore[arg-type]


def test_mixed_invoice_to_the_cent() -> None:
    inv = build_invoice(inputs())
    got = [(x.kind, x.meter or x.plan or x.coupon or x.grant, str(x.amount)) for x in inv.lines]
    assert got == [
        ("fee", "pro", "49.00"),
        ("usage", "enrich", "50.50"),  # 101 blocks at the second tier's 0.50
        ("usage", "geocode", "40.00"),  # 9000 x 0.004 + 2000 x 0.002
        ("usage", "lookup", "1.50"),
        ("usage", "prepaid", "12.35"),  # what the steps drew or billed as overage
        ("usage", "search", "15.00"),  # 250 past the free 100: 3 packages
        ("usage", "users", "14.00"),  # 7 distinct users
        ("discount", "LAUNCH20", "-9.80"),  # 20% of the fee only
        ("credits", "g-vip", "-6.00"),  # the higher priority first
        ("credits", "g-big", "-4.00"),
    ]
    assert inv.subtotal == D("182.35")
    assert inv.discounts == D("-9.80") and inv.credits == D("-10.00")
    assert inv.total == D("162.55") == sum(x.amount for x in inv.lines)
    assert inv.status == "draft" and inv.number is None
    usage = next(x for x in inv.lines if x.meter == "geocode")
    assert usage.trace["subject"] == "acct" and usage.trace["as_of_us"] == inv.as_of_us
    assert usage.trace["first_event"] == "e1" and usage.quantity == D(12000)


def test_coupon_duration_ends() -> None:
    april = (us(2026, 4, 1), us(2026, 5, 1))  # December, January, February: 3 periods
    inv = build_invoice(inputs(period_start_us=april[0], period_end_us=april[1], draws=()))
    assert [x for x in inv.lines if x.kind == "discount"] == []


def test_deterministic_whatever_the_decimal_context() -> None:
    one = build_invoice(inputs())
    with localcontext() as ctx:
        ctx.prec = 6
        two = build_invoice(inputs())
    assert one.canonical_json() == two.canonical_json()
    assert one.content_hash == two.content_hash


def test_canonical_json_round_trip_and_finalize() -> None:
    draft = build_invoice(inputs())
    inv = finalize(draft, "INV-2026-000001", JAN[1] + 7200_000_000)
    assert inv.status == "finalized" and inv.number == "INV-2026-000001"
    assert inv.period_start.isoformat() == "2026-01-01T00:00:00+00:00"
    data = inv.to_dict()
    assert data["total"] == "162.55" and data["period_end"] == "2026-02-01T00:00:00Z"
    back = Invoice.from_dict(data)
    assert back == inv and back.canonical_json() == inv.canonical_json()
    assert inv.canonical_json().startswith(b'{"as_of":"2026-02-01T01:00:00Z"')
    assert b" " not in inv.canonical_json().replace(b"Plan pro", b"").split(b'"description"')[0]
    with pytest.raises(InvoiceError, match="already finalized"):
        finalize(inv, "INV-2", 0)


def test_credit_notes_never_more_than_left() -> None:
    inv = finalize(build_invoice(inputs()), "INV-1", JAN[1])
    note = build_credit_note(
        inv, number="CN-1", amount=D("100.00"), reason="outage", refund=True, at_us=JAN[1]
    )
    assert CreditNote.from_dict(note.to_dict()) == note and len(note.content_hash) == 64
    with pytest.raises(InvoiceError, match=r"at most 62.55"):
        build_credit_note(
            inv, number="CN-2", amount=D("62.56"), reason="x", refund=False, at_us=1, earlier=[note]
        )
    with pytest.raises(InvoiceError, match="whole minor units"):
        build_credit_note(inv, number="CN-2", amount=D("1.005"), reason="x", refund=False, at_us=1)
    with pytest.raises(InvoiceError, match="draft"):
        build_credit_note(
            build_invoice(inputs()), number="CN-2", amount=D("1"), reason="x", refund=False, at_us=1
        )


def test_a_late_event_becomes_an_adjustment_line_with_its_trace() -> None:
    invoiced = finalize(build_invoice(inputs()), "INV-1", JAN[1] + 3600_000_000)
    later = JAN[1] + 86_400_000_000
    late = tuple(replace(t, quantity=12500) if t.meter == "geocode" else t for t in USAGE)
    rerated = build_invoice(inputs(usage=late, as_of_us=later))
    lines = adjust(invoiced, rerated)
    assert len(lines) == 1
    (line,) = lines
    assert (line.kind, line.meter, line.plan, line.amount, line.quantity) == (
        "adjustment",
        "geocode",
        "pro",
        D("1.00"),
        D(500),
    )
    assert (line.period_start_us, line.period_end_us) == JAN
    assert line.trace["after_us"] == invoiced.as_of_us and line.trace["as_of_us"] == later
    assert line.trace["invoice"] == "INV-1" and line.trace["subject"] == "acct"
    assert not favours_customer(lines)
    # On February's invoice the adjustment is a line of its own; discounts leave it alone.
    feb = build_invoice(
        inputs(
            period_start_us=JAN[1],
            period_end_us=us(2026, 3, 1),
            usage=(),
            draws=(),
            adjustments=tuple(lines),
        )
    )
    assert [x.amount for x in feb.lines if x.kind == "adjustment"] == [D("1.00")]
    assert adjust(invoiced, build_invoice(inputs(as_of_us=later))) == []


def test_a_correction_in_the_customers_favour_is_flagged_for_a_credit_note() -> None:
    invoiced = finalize(build_invoice(inputs()), "INV-1", JAN[1])
    fewer = tuple(replace(t, quantity=0) if t.meter == "lookup" else t for t in USAGE)
    lines = adjust(invoiced, build_invoice(inputs(usage=fewer)))
    assert [(x.meter, x.amount) for x in lines] == [("lookup", D("-1.50"))]
    assert favours_customer(lines)


def test_a_backdated_plan_change_adjusts_the_fee() -> None:
    pol = the_policy()
    pol = Policy(
        defaults=pol.defaults,
        plans={**pol.plans, "max": plan("max", fee_=fee("99.00"))},
        billing=pol.billing,
        coupons=pol.coupons,
    )
    invoiced = finalize(build_invoice(inputs(policy=pol, usage=(), draws=())), "INV-1", JAN[1])
    history = (change("pro", us(2025, 12, 1), 1), change("max", us(2026, 1, 1), 2))
    lines = adjust(invoiced, build_invoice(inputs(policy=pol, usage=(), draws=(), history=history)))
    assert sorted((x.trace["of"], x.plan or x.coupon, x.amount) for x in lines) == [
        ("discount", "LAUNCH20", D("-10.00")),  # 20% of 99 instead of 49
        ("fee", "max", D("99.00")),
        ("fee", "pro", D("-49.00")),
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"type": "nope"},
        {"type": "invoice"},
        {
            "type": "invoice",
            "status": "draft",
            "subject": "a",
            "currency": "USD",
            "period_start_us": "x",
            "period_end_us": 1,
            "as_of_us": 1,
            "lines": [],
        },
        ["invoice"],
    ],
)
def test_from_dict_refuses_what_is_not_an_invoice(data: object) -> None:
    with pytest.raises(InvoiceError):
        Invoice.from_dict(data)  # type: ignore[arg-type]
    with pytest.raises(InvoiceError):
        CreditNote.from_dict(data)  # type: ignore[arg-type]
