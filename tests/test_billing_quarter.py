"""A simulated quarter (January to March 2026) for several subjects on a fake clock, through
the real facade, on SQLite and PostgreSQL ledgers: a trial, a paid month, an upgrade mid-cycle,
a late event, a downgrade at the period's end, prepaid credits running out, a coupon and a
refund. Every invoice and credit note is checked to the cent against figures worked out here
from the policy's prices (the same policy as `test_billing_facade`)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest

from processes import run_together
from test_billing_facade import amounts, at, make, policy, rows
from tollway import Tollway
from tollway.billing import render
from tollway.metering.drain import Drain
from tollway.metering.streams import connect
from tollway.testing import FakeClock

D = Decimal
DAYS = {1: 31, 2: 28, 3: 31}


def cents(value: Decimal) -> Decimal:
    return value.quantize(D("0.01"), rounding=ROUND_HALF_EVEN)


def share(fee: str, days: int, month: int) -> Decimal:
    return cents(D(fee) * days / DAYS[month])


def test_a_quarter_of_subscriptions_credits_coupons_and_refunds(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        # January: q1 on a pro trial (14 days); q2 on pro with 1.00 of credits and HALF;
        # q3 on the free plan (its usage is free: no invoice).
        tw.assign("q1", "pro", trial=True, identity="mail-q1")
        tw.assign("q2", "pro")
        tw.billing.grant("q2", D("1.00"), id="q2-topup")
        tw.billing.redeem("q2", "HALF")
        clock.set(at(2026, 1, 5))
        for _ in range(1000):
            tw.acquire("q1", "geocode")
        allowed = [tw.acquire("q2", "lookup").allowed for _ in range(120)]
        for _ in range(50):
            tw.acquire("q3", "geocode")
        tw.flush()
        clock.set(at(2026, 2, 1, 1))
        january = {i.subject: i for i in tw.billing.close().invoices}
        assert tw.plan_of("q1") == "pro"  # the trial ended Jan 15 and went on on pro

        # February: q1 upgrades to team on the 10th (team is billed in advance).
        clock.set(at(2026, 2, 5))
        for _ in range(500):
            tw.acquire("q1", "geocode")
        clock.set(at(2026, 2, 10))
        tw.assign("q1", "team")
        clock.set(at(2026, 2, 20))
        for _ in range(2000):
            tw.acquire("q1", "geocode")
        for _ in range(25):
            tw.acquire("q1", "search")
        tw.flush()
        clock.set(at(2026, 3, 1, 1))
        february = {i.subject: i for i in tw.billing.close().invoices}

        # March: a late February event for q1; a downgrade to basic at the period's end.
        clock.set(at(2026, 3, 2))
        tw.record("q1", "geocode", 1000, id="late-feb", occurred_at=at(2026, 2, 27, 12))
        tw.flush()
        clock.set(at(2026, 3, 20))
        tw.assign("q1", "basic", proration="next_period")
        assert tw.plan_of("q1") == "team"
        clock.set(at(2026, 4, 1, 1))
        closed = tw.billing.close()
        march = {i.subject: i for i in closed.invoices}
        assert tw.plan_of("q1") == "basic" and closed.plans_applied == 1
        q1_march = march["q1"]
        assert q1_march.number is not None
        refund = tw.billing.credit_note(
            q1_march.number, amount=q1_march.total, reason="refund of March", refund=True
        )
        stored = rows(tw, "SELECT number, body FROM billing_invoices ORDER BY number")
        refunds = rows(tw, "SELECT id FROM notices WHERE type = 'tollway.invoice.refunded'")

    # q2: 100 of its 120 lookups paid from the 1.00 grant, then denied (no overage).
    assert allowed.count(True) == 100 and allowed[100:] == [False] * 20
    assert amounts(january["q2"]) == [
        ("fee", "pro", D("200.00")),
        ("usage", "pro", D("1.00")),
        ("discount", None, D("-100.00")),
        ("credits", None, D("-1.00")),
    ]
    assert january["q2"].total == D("100.00")
    assert february["q2"].total == D("200.00")  # HALF was "once"
    assert [line.grant for line in january["q2"].lines if line.kind == "credits"] == ["q2-topup"]

    # q1, January: pro from the trial's end (Jan 15, 17 days) and 1000 geocodes at 0.004.
    assert amounts(january["q1"]) == [
        ("fee", "pro", share("200", 17, 1)),
        ("usage", "pro", D("4.00")),
    ]
    assert january["q1"].total == D("113.68")

    # q1, February: pro for 9 days in arrears, team for the 19 days left (nothing was billed in
    # advance for February), March's team fee in advance; usage under each plan at its price,
    # search graduated (10 free, then 0.10).
    assert amounts(february["q1"]) == [
        ("fee", "pro", share("200", 9, 2)),
        ("fee", "team", share("300", 19, 2)),
        ("fee", "team", D("300.00")),
        ("usage", "pro", D("2.00")),
        ("usage", "team", D("4.00")),
        ("usage", "team", D("1.50")),
    ]
    assert february["q1"].total == D("64.29") + D("203.57") + D("300.00") + D("7.50")

    # q1, March: paid in advance; the late event as an adjustment of February (team's price),
    # and no April fee in advance (basic is in arrears).
    assert amounts(q1_march) == [("adjustment", "team", D("2.00"))]
    adjustment = q1_march.lines[0]
    assert adjustment.period_start == at(2026, 2, 1) and adjustment.period_end == at(2026, 3, 1)
    assert february["q1"].number in adjustment.description
    assert refund.amount == D("2.00") and refund.number == "CN-2026-000001"
    assert refunds == [("cn_CN-2026-000001",)]

    # q3 has none; numbers are gapless in the order periods were closed; every stored body
    # is the invoice's canonical JSON and renders the same way twice.
    assert "q3" not in january and "q3" not in february and "q3" not in march
    numbers = [number for number, _ in stored]
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, len(numbers) + 1)]
    assert len(numbers) == 2 + 2 + 2
    every: dict[str, Any] = {
        i.number: i for month in (january, february, march) for i in month.values()
    }
    for number, body in stored:
        assert every[number].canonical_json().decode() == body
        assert render.to_html(every[number]) == render.to_html(every[number])


@pytest.fixture(params=["redis", "cluster"])
def shared_store(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_client")  # flushed
        return str(request.getfixturevalue("redis_url"))
    request.getfixturevalue("redis_cluster_client")
    return str(request.getfixturevalue("redis_cluster_url"))


def test_credits_drawn_on_redis_reach_the_invoice_grant_by_grant(
    shared_store: str, tmp_path: Path
) -> None:
    # The steps run on Redis' own clock, so the month is the real one: the fake clock starts
    # at the real now and is moved past the month's end (plus grace) to close it.
    document = policy(f"sqlite:///{tmp_path / 'ledger.db'}")
    document["store"] = {"url": shared_store}
    clock = FakeClock(datetime.now(timezone.utc))
    subject = f"acct-{uuid.uuid4().hex[:8]}"
    with Tollway(document, clock=clock) as tw:
        tw.assign(subject, "pro")
        tw.billing.grant(subject, D("0.05"), id="first", priority=5)
        tw.billing.grant(subject, D("0.10"), id="second")
        allowed = [tw.acquire(subject, "lookup").allowed for _ in range(20)]
        assert tw.billing.balance(subject) == D("0.00")
        client, cluster = connect(shared_store)
        drain = Drain(client, tw.ledger, cluster=cluster, policy=tw.policy, block_ms=0, clock=clock)
        drain.run(until_idle=True)
        drain.close()
        client.close()
        assert tw.billing.preview(subject).credits == D("-0.15")
        period_end = tw.billing.preview(subject).period_end_us
        clock.set(period_end / 1_000_000 + 3600)
        (invoice,) = tw.billing.close().invoices
    assert allowed.count(True) == 15 and allowed[15:] == [False] * 5
    credits = [(x.grant, x.amount) for x in invoice.lines if x.kind == "credits"]
    assert credits == [("first", D("-0.05")), ("second", D("-0.10"))]
    usage = [(x.meter, x.quantity, x.amount) for x in invoice.lines if x.kind == "usage"]
    assert usage == [("lookup", D(15), D("0.15"))]
    assert invoice.total == invoice.subtotal - D("0.15")


def _closer(url: str, barrier: Any, results: Any) -> None:
    try:
        clock = FakeClock(at(2026, 2, 1, 2))
        with Tollway(policy(url), clock=clock) as tw:
            assert tw.ledger is not None  # opened (and migrated) before the race
            barrier.wait()
            closed = tw.billing.close()
        results.put(sorted(str(i.number) for i in closed.invoices))
    except BaseException as exc:
        results.put(exc)


def test_racing_closers_finalize_each_period_once_with_gapless_numbers(
    billing_ledger_url: str,
) -> None:
    tw, _ = make(billing_ledger_url)
    with tw:
        for n in range(12):
            tw.assign(f"r{n:02d}", "basic")
    made = run_together(_closer, [(billing_ledger_url,)] * 4)
    numbers = sorted(number for one in made for number in one)
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 13)]
    with make(billing_ledger_url)[0] as tw:
        subjects = rows(tw, "SELECT subject, COUNT(*) FROM billing_invoices GROUP BY subject")
        taken = rows(tw, "SELECT last_seq FROM billing_numbers")
    assert sorted(subjects) == [(f"r{n:02d}", 1) for n in range(12)]
    assert taken == [(12,)]
