"""`tollway demo --part billing`: March 2026 and April's first days rated into invoices; every
figure is recomputed here from the policy's prices and the traffic the steps answered."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest

from tollway.billing.invoice import Invoice
from tollway.billing.records import Line
from tollway.cli.main import main
from tollway.demo.billing import (
    APRIL_DAYS,
    COUPON,
    GRANTS,
    LATE,
    REFUND,
    START,
    SUBJECTS,
    UPGRADE_AT,
    BillingDemo,
    billing_policy,
    html_name,
    run_billing_demo,
)
from tollway.demo.billing_report import render_billing
from tollway.policy import load
from tollway.policy.model import Policy

APRIL = datetime(2026, 4, 1, tzinfo=START.tzinfo)
MAY = datetime(2026, 5, 1, tzinfo=START.tzinfo)
CENT = Decimal("0.01")


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load(billing_policy("sqlite:///unused.db"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> BillingDemo:
    return run_billing_demo(1, tmp_path_factory.mktemp("html") / "invoice.html")


def fee(policy: Policy, plan: str) -> Decimal:
    plan_fee = policy.plans[plan].fee
    assert plan_fee is not None
    return plan_fee.amount.amount


def share(
    amount: Decimal, start: datetime, end: datetime, month: tuple[datetime, datetime]
) -> Decimal:
    """``amount`` for ``[start, end)`` of the month, prorated to the second (unrounded)."""
    seconds = Decimal(int((end - start).total_seconds()))
    return amount * seconds / Decimal(int((month[1] - month[0]).total_seconds()))


def lines(inv: Invoice, kind: str) -> list[Line]:
    return [line for line in inv.lines if line.kind == kind]


def usage_price(policy: Policy, plan: str, meter: str, units: int) -> Decimal:
    charge = next(c for c in policy.plans[plan].charges if c.meter == meter)
    if charge.model == "unit":
        return cents(charge.unit * units)
    assert charge.model == "package"
    return charge.package_amount * math.ceil(units / charge.size)


# ------------------------------------------------------------------------------ the figures


def test_one_invoice_per_subject_and_month_and_each_total_is_its_lines(demo: BillingDemo) -> None:
    assert len(demo.invoices) == 2 * len(SUBJECTS)
    months = {(i.subject, i.period_start, i.period_end) for i in demo.invoices}
    assert months == {(s, a, b) for s in SUBJECTS for a, b in ((START, APRIL), (APRIL, MAY))}
    numbers = [i.number for i in demo.invoices]
    assert numbers == [f"INV-2026-{n:04d}" for n in range(1, 7)]  # gapless, March first
    for inv in demo.invoices:
        assert inv.status == "finalized"
        assert inv.total == sum((line.amount for line in inv.lines), Decimal(0))


def test_the_upgrade_splits_march_fees_to_the_second_and_the_coupon_takes_20pct(
    demo: BillingDemo, policy: Policy
) -> None:
    march = (START, APRIL)
    inv = demo.invoice_of("acct_growth", "2026-03")
    pro = cents(share(fee(policy, "pro"), START, UPGRADE_AT, march))
    team = cents(share(fee(policy, "team"), UPGRADE_AT, APRIL, march))
    assert [(line.plan, line.amount) for line in lines(inv, "fee")] == [
        ("pro", pro),
        ("team", team),
    ]
    assert (pro, team) == (Decimal("24.50"), Decimal("99.50"))  # 15.5 of 31 days each
    percent = Decimal(policy.coupons[COUPON].percent) / 100
    (discount,) = lines(inv, "discount")
    assert discount.coupon == COUPON
    assert discount.amount == -(cents(pro * percent) + cents(team * percent))
    april = demo.invoice_of("acct_growth", "2026-04")
    (april_fee,) = lines(april, "fee")
    assert (april_fee.plan, april_fee.amount) == ("team", fee(policy, "team"))
    (april_discount,) = lines(april, "discount")  # the coupon's second month of three
    assert april_discount.amount == -cents(fee(policy, "team") * percent)


def test_the_trial_bills_no_fee_until_it_ends_then_the_rest_of_march(
    demo: BillingDemo, policy: Policy
) -> None:
    assert demo.trial_end == datetime(2026, 3, 15, tzinfo=START.tzinfo)
    (march_fee,) = lines(demo.invoice_of("acct_trial", "2026-03"), "fee")
    expected = cents(share(fee(policy, "pro"), demo.trial_end, APRIL, (START, APRIL)))
    assert march_fee.amount == expected == Decimal("26.87")  # 49.00 x 17/31
    (april_fee,) = lines(demo.invoice_of("acct_trial", "2026-04"), "fee")
    assert april_fee.amount == fee(policy, "pro")


def test_usage_lines_are_the_allowed_units_at_their_plan_prices(
    demo: BillingDemo, policy: Policy
) -> None:
    checked = 0
    for traffic in demo.traffic:
        if traffic.operation == "lookup":
            continue
        inv = demo.invoice_of(traffic.subject, traffic.month)
        (line,) = [
            line
            for line in lines(inv, "usage")
            if (line.plan, line.meter) == (traffic.plan, traffic.operation)
        ]
        assert line.quantity == traffic.units
        assert line.amount == usage_price(policy, traffic.plan, traffic.operation, traffic.units)
        checked += 1
    assert checked == 12  # growth has both plans in March
    inv = demo.invoice_of("acct_growth", "2026-03")
    assert {line.plan for line in lines(inv, "usage")} == {"pro", "team"}


def test_prepaid_credits_pay_the_lookups_grant_by_grant_and_deny_when_short(
    demo: BillingDemo, policy: Policy
) -> None:
    price = policy.operations["lookup"].price
    assert price is not None
    granted = {gid: amount for gid, amount, _ in GRANTS}
    assert {g.id: Decimal(g.amount_micros) / 10**6 for g in demo.grants} == granted
    march = demo.traffic_of("acct_prepaid", month="2026-03")
    (march_lookups,) = [t for t in march if t.operation == "lookup"]
    assert march_lookups.drawn == price.amount * march_lookups.units
    assert march_lookups.allowed + march_lookups.denied == march_lookups.calls
    inv = demo.invoice_of("acct_prepaid", "2026-03")
    (usage,) = [line for line in lines(inv, "usage") if line.meter == "lookup"]
    assert usage.amount == march_lookups.drawn
    credits = {line.grant: line.amount for line in lines(inv, "credits")}
    # the starter grant is drawn first (the older), fully; the top-up pays the rest
    assert credits == {
        "starter": -granted["starter"],
        "topup": -(usage.amount - granted["starter"]),
    }
    assert inv.credits == -usage.amount  # credits pay the lookups; only the fee and geocode left
    # the grant ran out before the top-up: lookups were denied (overage = false)
    assert demo.ran_out_at is not None
    assert START < demo.ran_out_at < GRANTS[1][2]
    assert march_lookups.denied > 0
    (april_lookups,) = [
        t for t in demo.traffic_of("acct_prepaid", month="2026-04") if t.operation == "lookup"
    ]
    april = demo.invoice_of("acct_prepaid", "2026-04")
    # a grant drawn in two periods names itself on both invoices
    assert [(line.grant, line.amount) for line in lines(april, "credits")] == [
        ("topup", -april_lookups.drawn)
    ]
    drawn = march_lookups.drawn + april_lookups.drawn
    assert dict(demo.balances)["acct_prepaid"] == sum(granted.values()) - drawn
    assert demo.denied == march_lookups.denied + april_lookups.denied


def test_the_late_event_is_an_adjustment_of_march_on_april_invoice(
    demo: BillingDemo, policy: Policy
) -> None:
    subject, meter, quantity, occurred = LATE
    assert demo.late.occurred_at_us == int(occurred.timestamp()) * 10**6
    assert demo.late.recorded_at_us > int(APRIL.timestamp()) * 10**6  # after March's close
    march = demo.invoice_of(subject, "2026-03")
    assert march.as_of_us < demo.late.recorded_at_us
    april = demo.invoice_of(subject, "2026-04")
    (adjustment,) = lines(april, "adjustment")
    assert (adjustment.period_start, adjustment.period_end) == (START, APRIL)
    assert (adjustment.plan, adjustment.meter, adjustment.quantity) == ("team", meter, quantity)
    team_march = next(t for t in demo.traffic_of(subject, month="2026-03", plan="team"))
    assert adjustment.amount == usage_price(
        policy, "team", meter, team_march.units + quantity
    ) - usage_price(policy, "team", meter, team_march.units)
    assert adjustment.amount == Decimal("1.50")
    assert march.number is not None and march.number in adjustment.description
    assert adjustment.trace["invoice"] == march.number
    assert adjustment.trace["after_us"] == march.as_of_us - 1  # from March's cut on, included
    # March's invoice itself never changed; the other invoices carry no adjustment
    assert all(not lines(i, "adjustment") for i in demo.invoices if i is not april)


def test_the_refund_is_a_credit_note_on_the_trial_march_invoice(demo: BillingDemo) -> None:
    subject, amount, reason = REFUND
    (note,) = demo.credit_notes
    march = demo.invoice_of(subject, "2026-03")
    assert (note.invoice_number, note.subject, note.amount) == (march.number, subject, amount)
    assert (note.refund, note.reason, note.currency) == (True, reason, "USD")
    assert note.number == "CN-2026-0001"
    assert dict(demo.balances)[subject] == 0  # refunded, not given back as credits


def test_the_html_invoice_is_written_with_its_number(demo: BillingDemo) -> None:
    html = demo.html_path.read_text("utf-8")
    april = demo.invoice_of("acct_growth", "2026-04")
    assert demo.html_invoice == april.number
    assert f"Invoice {april.number}" in html and april.content_hash in html
    assert "Adjustment: usage geocode (team)" in html and str(april.total) in html
    assert html_name("INV-2026-0004") == Path("tollway-invoice-INV-2026-0004.html")


def test_same_seed_same_invoices_to_the_byte(demo: BillingDemo, tmp_path: Path) -> None:
    again = run_billing_demo(1, tmp_path / "again.html")
    assert [i.canonical_json() for i in again.invoices] == [
        i.canonical_json() for i in demo.invoices
    ]
    assert again.traffic == demo.traffic and again.credit_notes == demo.credit_notes
    assert (tmp_path / "again.html").read_bytes() == demo.html_path.read_bytes()
    other = run_billing_demo(2, tmp_path / "other.html")
    assert other.traffic != demo.traffic
    assert [i.total for i in other.invoices] != [i.total for i in demo.invoices]


def test_the_report_shows_the_story_the_table_and_the_lines(demo: BillingDemo) -> None:
    out = render_billing(demo)
    assert out.startswith(f"Billing: March 2026 and {APRIL_DAYS} days of April for 3 subjects")
    header = next(line for line in out.splitlines() if line.lstrip().startswith("number "))
    assert header.split() == [
        "number", "subject", "period", "lines", "subtotal", "discounts", "credits", "total",
        "refunded",
    ]  # fmt: skip
    for inv in demo.invoices:
        row = next(
            line.split() for line in out.splitlines() if line.strip().startswith(str(inv.number))
        )
        assert row[:4] == [
            inv.number,
            inv.subject,
            inv.period_start.strftime("%Y-%m"),
            str(len(inv.lines)),
        ]
        assert row[7] == f"{inv.total:.2f}"
    assert "acct_growth upgrades to team" in out and "starts a trial of pro" in out
    assert "CN-2026-0001 refunds 10.00 USD of INV-2026-0003 (acct_trial)" in out
    assert "Adjustment: usage geocode (team), invoice INV-2026-0001  2026-03" in out
    assert "acct_prepaid's credits run out: lookups denied until the top-up (" in out
    assert out.rstrip().endswith(f"written to {demo.html_path}")


# ----------------------------------------------------------------------------------- the CLI


def test_the_cli_part_writes_the_html_to_the_current_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--part", "billing"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Billing: ") and "Metering:" not in out
    written = tmp_path / "tollway-invoice-INV-2026-0004.html"
    assert "INV-2026-0004" in written.read_text("utf-8")
    assert out.rstrip().endswith("written to tollway-invoice-INV-2026-0004.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == [written.name]  # the ledger is gone


def test_the_cli_part_runs_in_a_subprocess_with_html(tmp_path: Path) -> None:
    target = tmp_path / "march.html"
    done = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "demo", "--part", "billing", "--html", str(target)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"HTML invoice INV-2026-0004 written to {target}" in done.stdout
    assert "INV-2026-0004" in target.read_text("utf-8")


@pytest.mark.parametrize("where", ["missing/invoice.html", "."])
def test_an_html_file_that_cannot_be_written_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--part", "billing", "--html", where]) == 2
    assert "--html" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
