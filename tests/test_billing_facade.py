"""`tw.billing` end to end: a real `Tollway` (memory store, fake clock) on a real SQLite or
PostgreSQL ledger. Subscriptions and proration, trials, prepaid credits, coupons, closing with
gapless numbers and hook events, credit notes, re-rating, tracing, and refused input that
writes nothing."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tollway import AsyncTollway, Tollway
from tollway.billing import render
from tollway.errors import (
    BillingError,
    CouponError,
    GrantConflictError,
    InvalidArgumentError,
    InvoiceError,
    TrialUsedError,
    UnknownPlanError,
)
from tollway.metering.ledger.flows import Flow, Query
from tollway.testing import FakeClock

D = Decimal
UTC = timezone.utc


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def policy(billing_ledger_url: str, **billing: Any) -> dict[str, Any]:
    return {
        "defaults": {"plan": "free"},
        "store": {"url": "memory://"},
        "ledger": {"url": billing_ledger_url, "flush_ms": 60_000, "lateness_s": 10 * 86_400},
        "operations": {"lookup": {"price": "0.01 USD"}, "geocode": {}, "search": {}},
        "billing": {"currency": "USD", "period": "month", "invoice_grace": "1h", **billing},
        "plans": {
            "free": {"limits": [{"name": "hourly", "quota": "100000/hour"}]},
            "basic": {"fee": {"amount": "100.00 USD"}},
            "pro": {
                "fee": {"amount": "200.00 USD"},
                "trial_days": 14,
                "limits": [{"name": "wallet", "credits": "USD", "operations": ["lookup"]}],
                "charges": [{"meter": "geocode", "model": "unit", "unit": "0.004"}],
            },
            "team": {
                "fee": {"amount": "300.00 USD", "timing": "advance"},
                "trial_days": 7,
                "trial_then": "basic",
                "charges": [
                    {"meter": "geocode", "model": "unit", "unit": "0.002"},
                    {
                        "meter": "search",
                        "model": "graduated",
                        "tiers": [{"up_to": 10, "unit": "0"}, {"unit": "0.10"}],
                    },
                ],
            },
        },
        "coupons": {
            "HALF": {"percent": 50, "duration": "once", "applies_to": ["fee"]},
            "ONE": {"amount": "1.00 USD", "max_redemptions": 1},
        },
    }


JAN_1 = at(2026, 1, 1)


def make(
    billing_ledger_url: str, start: datetime = JAN_1, **billing: Any
) -> tuple[Tollway, FakeClock]:
    clock = FakeClock(start)
    return Tollway(policy(billing_ledger_url, **billing), clock=clock), clock


def rows(tw: Tollway, sql: str) -> list[tuple[Any, ...]]:
    def flow() -> Flow[list[tuple[Any, ...]]]:
        found = yield Query(sql, ())
        return [tuple(row) for row in found]

    return tw.ledger.transact(flow)


def amounts(invoice: Any) -> list[tuple[str, str | None, Decimal]]:
    return [(line.kind, line.plan, line.amount) for line in invoice.lines]


# -- subscriptions and proration --------------------------------------------------------------


def test_an_upgrade_on_the_15th_prorates_to_the_second(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("a", "basic")
        clock.set(at(2026, 1, 15))
        tw.assign("a", "pro", proration="prorate")
        assert tw.plan_of("a") == "pro"
        clock.set(at(2026, 2, 1, 0, 59, 59))
        assert tw.billing.close().invoices == ()  # the grace is not over yet
        clock.set(at(2026, 2, 1, 1))
        (invoice,) = tw.billing.close().invoices
    # 100 x 14/31 and 200 x 17/31, rounded half-even once per line.
    assert amounts(invoice) == [("fee", "basic", D("45.16")), ("fee", "pro", D("109.68"))]
    assert invoice.total == D("154.84") and invoice.number == "INV-2026-000001"
    assert invoice.period_start == at(2026, 1, 1) and invoice.period_end == at(2026, 2, 1)


def test_none_keeps_the_old_fee_and_next_period_waits_for_the_end(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("a", "basic")
        tw.assign("b", "basic")
        clock.set(at(2026, 1, 10))
        tw.assign("a", "pro", proration="none")
        tw.assign("b", "pro", proration="next_period")
        assert (tw.plan_of("a"), tw.plan_of("b")) == ("pro", "basic")
        clock.set(at(2026, 2, 1, 2))
        closed = tw.billing.close()
        assert closed.plans_applied == 1 and tw.plan_of("b") == "pro"
        by = {i.subject: i for i in closed.invoices}
        clock.set(at(2026, 3, 1, 2))
        later = {i.subject: i for i in tw.billing.close().invoices}
    assert amounts(by["a"]) == [("fee", "basic", D("100.00"))]
    assert amounts(by["b"]) == [("fee", "basic", D("100.00"))]
    assert amounts(later["a"]) == [("fee", "pro", D("200.00"))]
    assert amounts(later["b"]) == [("fee", "pro", D("200.00"))]


def test_every_change_is_a_subscription_event_in_the_same_transaction(
    billing_ledger_url: str,
) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("a", "basic")
        clock.advance(3600)
        tw.assign("a", "pro", trial=True)
        found = rows(tw, "SELECT id, type, data FROM notices ORDER BY id")
        history = rows(tw, "SELECT seq, plan, kind FROM billing_plan_changes ORDER BY seq")
    assert [(r[0], r[1]) for r in found] == [
        ("sub_a_1", "tollway.subscription.updated"),
        ("sub_a_2", "tollway.subscription.updated"),
    ]
    second = json.loads(found[1][2])
    assert second["plan"] == "pro" and second["previous_plan"] == "basic"
    assert second["change"] == "trial" and second["trial_end"] == "2026-01-15T01:00:00Z"
    assert history == [(1, "basic", "assign"), (2, "pro", "trial")]


def test_a_backdated_change_is_bounded_by_the_lateness_window(billing_ledger_url: str) -> None:
    tw, _ = make(billing_ledger_url, start=at(2026, 1, 20))
    with tw:
        with pytest.raises(BillingError, match="older than \\[ledger\\] lateness_s"):
            tw.assign("a", "pro", effective=at(2026, 1, 1))
        with pytest.raises(BillingError, match="in the future"):
            tw.assign("a", "pro", effective=at(2026, 1, 21))
        with pytest.raises(BillingError, match="aware datetime"):
            tw.assign("a", "pro", effective=datetime(2026, 1, 19))
        with pytest.raises(UnknownPlanError):
            tw.assign("a", "gold")
        with pytest.raises(BillingError, match="proration"):
            tw.assign("a", "pro", proration="sometimes")  # type: ignore[arg-type]
        assert rows(tw, "SELECT COUNT(*) FROM billing_plan_changes") == [(0,)]
        assert rows(tw, "SELECT COUNT(*) FROM notices") == [(0,)]
        assert tw.plan_of("a") == "free"


# -- trials ------------------------------------------------------------------------------------


def test_a_trial_bills_no_fee_then_continues_on_trial_then(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("t", "team", trial=True, identity="card-7")
        assert tw.plan_of("t") == "team"
        clock.set(at(2026, 1, 8, 0, 0, 1))
        closed = tw.billing.close()  # the trial ended Jan 8: basic from then on
        assert closed.plans_applied == 1 and tw.plan_of("t") == "basic"
        clock.set(at(2026, 2, 1, 2))
        (invoice,) = tw.billing.close().invoices
        with pytest.raises(TrialUsedError, match="one trial per identity"):
            tw.assign("other", "team", trial=True, identity="card-7")
        with pytest.raises(TrialUsedError):
            tw.assign("t", "pro", trial=True)  # one trial per subject, whatever the plan
        with pytest.raises(BillingError, match="no trial_days"):
            tw.assign("x", "basic", trial=True)
        kinds = rows(tw, "SELECT subject, kind, plan FROM billing_plan_changes ORDER BY seq")
    # basic (arrears) from Jan 8 00:00: 100 x 24/31.
    assert amounts(invoice) == [("fee", "basic", D("77.42"))]
    assert kinds == [("t", "trial", "team"), ("t", "trial_end", "basic")]


# -- prepaid credits ---------------------------------------------------------------------------


def test_grants_are_idempotent_drawn_in_the_step_and_expire(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("p", "pro")
        first = tw.billing.grant("p", D("0.02"), id="g1", expires=at(2026, 1, 2))
        again = tw.billing.grant("p", D("0.02"), id="g1", expires=at(2026, 1, 2))
        assert first == again and tw.billing.balance("p") == D("0.02")
        with pytest.raises(GrantConflictError, match="other terms"):
            tw.billing.grant("p", D("0.03"), id="g1")
        tw.billing.grant("p", D("0.01"), id="g2")
        assert tw.acquire("p", "lookup").drawn == 10_000  # g1 first: it expires soonest
        clock.set(at(2026, 1, 2))
        assert tw.billing.balance("p") == D("0.01")  # g1's last cent expired
        assert tw.acquire("p", "lookup").allowed
        denied = tw.acquire("p", "lookup")
        assert not denied.allowed and denied.violated == ("wallet",)
        tw.flush()
        clock.set(at(2026, 2, 1, 2))
        (invoice,) = tw.billing.close().invoices
    credits = [(line.grant, line.amount) for line in invoice.lines if line.kind == "credits"]
    assert credits == [("g1", D("-0.01")), ("g2", D("-0.01"))]
    usage = [line for line in invoice.lines if line.kind == "usage"]
    assert [(u.meter, u.quantity, u.amount) for u in usage] == [("lookup", D(2), D("0.02"))]
    assert invoice.total == D("200.00")


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        (0.5, "float"),
        (D("0"), "not positive"),
        (D("-1"), "negative"),
        (D("0.0000001"), "6 decimal places"),
    ],
)
def test_bad_grants_write_nothing(billing_ledger_url: str, amount: Any, words: str) -> None:
    tw, _ = make(billing_ledger_url)
    with tw:
        with pytest.raises((BillingError, InvalidArgumentError), match=words):
            tw.billing.grant("p", amount, id="bad")
        with pytest.raises(BillingError, match="not in the future"):
            tw.billing.grant("p", D("1"), expires=at(2025, 1, 1))
        with pytest.raises(BillingError, match="currency"):
            tw.billing.grant("p", D("1"), currency="usd")
        assert rows(tw, "SELECT COUNT(*) FROM billing_grants") == [(0,)]
        assert tw.billing.balance("p") == D("0.00")


# -- coupons -----------------------------------------------------------------------------------


def test_a_coupon_is_redeemed_once_and_discounts_its_targets(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("c", "pro")
        tw.billing.redeem("c", "HALF")
        with pytest.raises(CouponError, match="redeemed it already"):
            tw.billing.redeem("c", "HALF")
        tw.billing.redeem("c", "ONE")
        with pytest.raises(CouponError, match="max_redemptions"):
            tw.billing.redeem("d", "ONE")
        with pytest.raises(CouponError, match="not in the policy"):
            tw.billing.redeem("c", "NOPE")
        for _ in range(250):
            tw.acquire("c", "geocode")
        tw.flush()
        clock.set(at(2026, 2, 1, 2))
        (invoice,) = tw.billing.close().invoices
        clock.set(at(2026, 3, 1, 2))
        (march,) = tw.billing.close().invoices
    # fee 200 - 50% (fee only, once), usage 250 x 0.004 = 1.00, then 1.00 off.
    assert invoice.subtotal == D("201.00") and invoice.discounts == D("-101.00")
    assert invoice.total == D("100.00")
    assert march.total == D("200.00")  # HALF was once; ONE was "once" by default


# -- closing, numbering, immutability ----------------------------------------------------------


def test_close_numbers_gaplessly_once_and_tells_the_hooks(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        for name in ("a", "b", "c"):
            tw.assign(name, "basic")
        tw.assign("idle", None)  # the default plan, no fee, no usage: no invoice
        clock.set(at(2026, 3, 1, 2))
        closed = tw.billing.close()
        assert tw.billing.close().invoices == ()
        numbers = [i.number for i in closed.invoices]
        stored = rows(tw, "SELECT number, body, content_hash FROM billing_invoices")
        told = rows(tw, "SELECT id FROM notices WHERE type = 'tollway.invoice.finalized'")
        again = {i.number: i for i in tw.billing.invoices("a")}
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 7)]
    assert sorted(r[0] for r in told) == sorted(f"inv_{n}" for n in numbers)
    for number, body, digest in stored:
        invoice = tw_invoice = again.get(number)
        if invoice is not None:
            assert tw_invoice.canonical_json().decode() == body
            assert invoice.content_hash == digest
            assert render.to_json(invoice) == render.to_json(invoice)
    assert [i.period_start for i in again.values()] == [at(2026, 2, 1), at(2026, 1, 1)]


def test_preview_is_the_open_periods_draft_and_writes_nothing(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("a", "team")  # advance: this period from now, and the next in full
        clock.set(at(2026, 1, 16, 12))
        draft = tw.billing.preview("a")
        assert rows(tw, "SELECT COUNT(*) FROM billing_invoices") == [(0,)]
    assert draft.status == "draft" and draft.number is None
    assert [line.amount for line in draft.lines] == [D("300.00"), D("300.00")]


def test_a_policy_without_billing_refuses_clearly(tmp_path: Path) -> None:
    document = policy(f"sqlite:///{tmp_path / 'l.db'}")
    del document["billing"], document["coupons"]
    for plan in document["plans"].values():
        plan.pop("fee", None), plan.pop("charges", None), plan.pop("trial_days", None)
        plan.pop("trial_then", None)
    with Tollway(document) as tw:
        with pytest.raises(BillingError, match="no \\[billing\\] section"):
            tw.billing.close()
        with pytest.raises(BillingError, match="proration: billing options need"):
            tw.assign("a", "pro", proration="none")
        tw.assign("a", "pro")
        assert tw.plan_of("a") == "pro"


# -- credit notes ------------------------------------------------------------------------------


def test_credit_notes_are_capped_refunded_or_given_back(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("a", "basic")
        clock.set(at(2026, 2, 1, 2))
        (invoice,) = tw.billing.close().invoices
        assert invoice.number is not None
        refund = tw.billing.credit_note(
            invoice.number, amount=D("30.00"), reason="outage", refund=True
        )
        back = tw.billing.credit_note(invoice.number, amount=D("20.00"), reason="goodwill")
        with pytest.raises(InvoiceError, match=r"at most 50\.00"):
            tw.billing.credit_note(invoice.number, amount=D("50.01"), reason="too much")
        with pytest.raises(InvoiceError, match="minor units"):
            tw.billing.credit_note(invoice.number, amount=D("0.001"))
        with pytest.raises(InvoiceError, match="not in the ledger"):
            tw.billing.credit_note("INV-2026-999999", amount=D("1.00"))
        notes = tw.billing.credit_notes(invoice.number)
        told = rows(tw, "SELECT id, data FROM notices WHERE type = 'tollway.invoice.refunded'")
        balance = tw.billing.balance("a")
        counts = rows(tw, "SELECT COUNT(*) FROM billing_credit_notes")
    assert (refund.number, back.number) == ("CN-2026-000001", "CN-2026-000002")
    assert [n.amount for n in notes] == [D("30.00"), D("20.00")]
    assert [r[0] for r in told] == ["cn_CN-2026-000001"]
    assert json.loads(told[0][1])["amount"] == "30.00"
    assert balance == D("20.00")  # the note that was not refunded went to the balance
    assert counts == [(2,)]


# -- re-rating ---------------------------------------------------------------------------------


def test_a_late_event_goes_on_the_next_invoice_naming_its_period(billing_ledger_url: str) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("a", "pro")
        for _ in range(100):
            tw.acquire("a", "geocode")
        tw.flush()
        clock.set(at(2026, 2, 1, 2))
        (january,) = tw.billing.close().invoices
        # Recorded at the very microsecond of the close: after its cut, so not lost.
        late = tw.record("a", "geocode", 500, id="late-1", occurred_at=at(2026, 1, 31, 23))
        tw.flush()
        clock.set(at(2026, 3, 1, 2))
        (february,) = tw.billing.close().invoices
        assert february.number is not None
        (line,) = [i for i, x in enumerate(february.lines) if x.kind == "adjustment"]
        events = tw.billing.trace(february.number, line)
        unchanged = tw.billing.invoice(january.number or "")
    assert [(x.kind, x.amount) for x in january.lines] == [
        ("fee", D("200.00")),
        ("usage", D("0.40")),
    ]
    adjustment = february.lines[line]
    assert adjustment.amount == D("2.00") and adjustment.quantity == D(500)
    assert adjustment.period_start == at(2026, 1, 1) and adjustment.period_end == at(2026, 2, 1)
    assert january.number in adjustment.description
    assert [e.id for e in events] == [late.id]
    assert unchanged.canonical_json() == january.canonical_json()
    assert february.total == D("202.00")


def test_a_backdated_downgrade_in_the_customers_favour_is_a_credit_note(
    billing_ledger_url: str,
) -> None:
    tw, clock = make(billing_ledger_url)
    with tw:
        tw.assign("a", "pro")
        clock.set(at(2026, 2, 1, 2))
        (january,) = tw.billing.close().invoices
        # Back to Jan 25: the customer was on basic for the last 7 days.
        tw.assign("a", "basic", effective=at(2026, 1, 25))
        clock.set(at(2026, 3, 1, 2))
        closed = tw.billing.close()
        balance = tw.billing.balance("a")
    (february,) = closed.invoices
    (note,) = closed.credit_notes
    # 200 x 24/31 + 100 x 7/31 = 154.84 + 22.58 = 177.42; 200 billed: 22.58 back.
    assert note.invoice_number == january.number and note.amount == D("22.58")
    assert not note.refund and balance == D("22.58")
    assert all(line.kind == "adjustment" for line in note.lines)
    assert [x.kind for x in february.lines] == ["fee"] and february.total == D("100.00")


# -- the async face ----------------------------------------------------------------------------


async def test_the_async_face_bills_the_same(billing_ledger_url: str) -> None:
    clock = FakeClock(at(2026, 1, 1))
    async with AsyncTollway(policy(billing_ledger_url), clock=clock) as tw:
        await tw.assign("a", "basic")
        clock.set(at(2026, 1, 15))
        await tw.assign("a", "pro")
        await tw.billing.grant("a", D("5.00"), id="g")
        assert await tw.billing.balance("a") == D("5.00")
        await tw.billing.redeem("a", "HALF")
        clock.set(at(2026, 2, 1, 2))
        (invoice,) = (await tw.billing.close()).invoices
        assert (await tw.billing.invoices("a"))[0] == invoice
        assert invoice.number is not None
        note = await tw.billing.credit_note(invoice.number, amount=D("1.00"), refund=True)
    assert [line.amount for line in invoice.lines][:2] == [D("45.16"), D("109.68")]
    assert invoice.discounts == D("-77.42") and note.amount == D("1.00")


# -- hook events reach a real webhook receiver ------------------------------------------------


def test_billing_events_reach_a_signed_webhook(
    billing_ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import standardwebhooks

    from test_webhooks import Receiver
    from tollway.metering.hooks import Dispatcher
    from tollway.metering.webhooks import generate_secret

    secret = generate_secret()
    monkeypatch.setenv("BILLING_HOOK_SECRET", secret)
    receiver = Receiver().start()
    document = policy(billing_ledger_url, period="day", invoice_grace="1s")
    document["hooks"] = [
        {
            "name": "billing",
            "url": receiver.url,
            "secret_env": "BILLING_HOOK_SECRET",
            "events": [
                "tollway.subscription.updated",
                "tollway.invoice.finalized",
                "tollway.invoice.refunded",
            ],
        }
    ]
    # Webhook timestamps are checked against real time: the day billed is yesterday, closed now.
    now = datetime.now(UTC)
    clock = FakeClock(now - timedelta(hours=26))
    try:
        with Tollway(document, clock=clock) as tw:
            tw.assign("hooked", "basic")
            clock.set(now)
            invoices = tw.billing.close().invoices
            number = invoices[0].number
            assert number is not None
            tw.billing.credit_note(number, amount=D("1.00"), reason="outage", refund=True)
            with Dispatcher(tw.ledger, tw.policy.hooks) as dispatcher:
                deadline = time.monotonic() + 20
                while len(receiver.requests) < 2 + len(invoices) and time.monotonic() < deadline:
                    dispatcher.run_once()
                    time.sleep(0.05)  # polls the receiver, with a deadline
    finally:
        receiver.stop()
    payloads = [
        standardwebhooks.Webhook(secret).verify(r.body, r.headers) for r in receiver.requests
    ]
    types = sorted(p["type"] for p in payloads)
    assert types == sorted(
        ["tollway.subscription.updated", "tollway.invoice.refunded"]
        + ["tollway.invoice.finalized"] * len(invoices)
    )
    finalized = [p for p in payloads if p["type"] == "tollway.invoice.finalized"]
    assert {p["data"]["number"] for p in finalized} == {i.number for i in invoices}
    refunded = next(p for p in payloads if p["type"] == "tollway.invoice.refunded")
    assert refunded["data"]["invoice"] == number and refunded["data"]["amount"] == "1.00"
