"""Plan fees: the issue's proration example, arrears and advance, trials, none/next_period."""

from __future__ import annotations

import itertools
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from tests.billing_support import change, fee, plan, policy, us

from tollway.billing.invoice import InvoiceInputs, build_invoice
from tollway.billing.proration import fee_lines
from tollway.billing.records import Line
from tollway.billing.subscriptions import Segment, plan_at, segments

D = Decimal
JAN = (us(2026, 1, 1), us(2026, 2, 1))
FEB = (us(2026, 2, 1), us(2026, 3, 1))
MAR = (us(2026, 3, 1), us(2026, 4, 1))
JAN15 = us(2026, 1, 15)


def lines_of(pol, history, period=JAN, nxt=FEB, previous=None) -> list[Line]:  # type: ignore[no-untyped-def]
    return fee_lines(
        plans=pol.plans,
        currency="USD",
        history=history,
        default_plan="free",
        period=period,
        next_period=nxt,
        previous=previous,
    )


def short(lines: list[Line]) -> list[tuple[str | None, str, int, int]]:
    return [(x.plan, str(x.amount), x.period_start_us, x.period_end_us) for x in lines]


def test_the_issues_example_arrears_upgrade_on_jan_15() -> None:
    pol = policy(plan("basic", fee_=fee("100")), plan("plus", fee_=fee("200")))
    history = [change("basic", us(2025, 12, 1), 1), change("plus", JAN15, 2)]
    assert short(lines_of(pol, history)) == [
        ("basic", "45.16", JAN[0], JAN15),
        ("plus", "109.68", JAN15, JAN[1]),
    ]


def test_arrears_whole_period_and_no_fee_on_free() -> None:
    pol = policy(plan("basic", fee_=fee("100")))
    assert short(lines_of(pol, [change("basic", us(2025, 6, 1))])) == [("basic", "100.00", *JAN)]
    assert lines_of(pol, []) == []


def test_segments_carry_in_and_changes_at_the_same_instant() -> None:
    history = [change("a", us(2025, 1, 1), 1), change("b", JAN15, 2), change("c", JAN15, 3)]
    assert segments(history, *JAN, "free") == [
        Segment("a", JAN[0], JAN15),
        Segment("c", JAN15, JAN[1], changed=True),
    ]
    assert plan_at(history, JAN15 - 1, "free") == ("a", False)
    assert segments([], *JAN, "free") == [Segment("free", *JAN)]


def test_advance_first_period_prorated_then_next_in_full() -> None:
    pol = policy(plan("pro", fee_=fee("31", "advance")))
    history = [change("pro", JAN15)]
    lines = lines_of(pol, history)
    assert short(lines) == [("pro", "17.00", JAN15, JAN[1]), ("pro", "31.00", *FEB)]
    # February: what January's invoice billed for February stands; March in advance.
    feb = lines_of(pol, history, FEB, MAR, previous=lines)
    assert short(feb) == [("pro", "31.00", *MAR)]


def test_advance_upgrade_mid_period_credits_unused_and_debits_new() -> None:
    pol = policy(plan("basic", fee_=fee("31", "advance")), plan("plus", fee_=fee("62", "advance")))
    history = [change("basic", us(2025, 12, 1), 1)]
    dec = lines_of(pol, history, (us(2025, 12, 1), JAN[0]), JAN)
    jan = lines_of(pol, history, previous=dec)
    assert short(jan) == [("basic", "31.00", *FEB)]  # December billed January already
    feb15 = us(2026, 2, 15)
    history.append(change("plus", feb15, 2))
    feb = lines_of(pol, history, FEB, MAR, previous=jan)
    # February has 28 days: 14 left from the 15th.
    assert short(feb) == [
        ("basic", "-15.50", feb15, FEB[1]),
        ("plus", "31.00", feb15, FEB[1]),
        ("plus", "62.00", *MAR),
    ]
    assert [x.trace["timing"] for x in feb] == ["credit", "debit", "advance"]


def test_advance_cancel_credits_the_rest() -> None:
    pol = policy(plan("pro", fee_=fee("28", "advance")))
    previous = lines_of(pol, [change("pro", us(2025, 12, 1))])[1:]  # February's advance
    feb8 = us(2026, 2, 8)
    history = [change("pro", us(2025, 12, 1), 1), change(None, feb8, 2, kind="cancel")]
    assert short(lines_of(pol, history, FEB, MAR, previous=previous)) == [
        ("pro", "-21.00", feb8, FEB[1])
    ]


def test_trial_mid_period_no_fee_until_its_end_then_trial_then() -> None:
    pol = policy(
        plan("trial", fee_=fee("100"), trial_then="pro", trial_days=14),
        plan("pro", fee_=fee("310")),
    )
    start, end = us(2026, 1, 5), us(2026, 1, 19)
    history = [change("trial", start, kind="trial", trial_end_us=end)]
    assert segments(history, *JAN, "free", pol.plans) == [
        Segment("free", JAN[0], start),
        Segment("trial", start, end, trial=True, changed=True),
        Segment("pro", end, JAN[1]),
    ]
    # pro from Jan 19 to Feb 1: 13 days of 31 at 310.
    assert short(lines_of(pol, history)) == [("pro", "130.00", end, JAN[1])]


def test_trial_overridden_by_a_later_change() -> None:
    pol = policy(plan("pro", fee_=fee("31"), trial_then="max"), plan("max", fee_=fee("93")))
    history = [
        change("pro", us(2026, 1, 1), 1, kind="trial", trial_end_us=us(2026, 1, 20)),
        change("pro", us(2026, 1, 10), 2),  # paid early: the trial ends, no trial_then
    ]
    assert short(lines_of(pol, history)) == [("pro", "22.00", us(2026, 1, 10), JAN[1])]


def test_advance_trial_ending_next_period_is_prorated_from_its_end() -> None:
    pol = policy(plan("pro", fee_=fee("28", "advance")))
    end = us(2026, 2, 15)
    history = [change("pro", us(2026, 1, 20), kind="trial", trial_end_us=end)]
    assert short(lines_of(pol, history)) == [("pro", "14.00", end, FEB[1])]


def test_none_does_not_split_the_fee() -> None:
    pol = policy(plan("basic", fee_=fee("100")), plan("plus", fee_=fee("200")))
    history = [change("basic", us(2025, 1, 1), 1), change("plus", JAN15, 2, proration="none")]
    assert short(lines_of(pol, history)) == [("basic", "100.00", *JAN)]
    assert short(lines_of(pol, history, FEB, MAR)) == [("plus", "200.00", *FEB)]


def test_next_period_change_recorded_at_the_period_end() -> None:
    pol = policy(
        plan("basic", fee_=fee("100", "advance")), plan("plus", fee_=fee("200", "advance"))
    )
    history = [
        change("basic", us(2025, 1, 1), 1),
        change("plus", JAN[1], 2, proration="next_period", kind="scheduled"),
    ]
    # January stays basic; February is billed in advance at plus.
    assert short(lines_of(pol, history, previous=[])) == [
        ("basic", "100.00", *JAN),
        ("plus", "200.00", *FEB),
    ]


def test_build_invoice_fee_total_is_the_sum_of_rounded_lines() -> None:
    pol = policy(plan("basic", fee_=fee("100")), plan("plus", fee_=fee("200")))
    history = (change("basic", us(2025, 12, 1), 1), change("plus", JAN15, 2))
    inv = build_invoice(
        InvoiceInputs(
            policy=pol,
            subject="acct",
            period_start_us=JAN[0],
            period_end_us=JAN[1],
            as_of_us=JAN[1],
            history=history,
        )
    )
    assert inv.total == D("154.84") == sum(x.amount for x in inv.lines)


@given(st.lists(st.integers(JAN[0] // 1_000_000 + 1, JAN[1] // 1_000_000 - 1), max_size=6))
def test_arrears_shares_of_one_fee_add_up_to_the_fee(changes_s: list[int]) -> None:
    # Plans a and b cost the same: however often the subject switches, the shares of the
    # period add up to one fee.
    pol = policy(plan("a", fee_=fee("100")), plan("b", fee_=fee("100")))
    history = [change("a", us(2025, 1, 1), 0)]
    history += [
        change("ab"[n % 2 - 1], t * 1_000_000, n + 1) for n, t in enumerate(sorted(changes_s))
    ]
    lines = lines_of(pol, history)
    # A share is a division (exact to 28 digits); the rounded lines are within half a cent each.
    assert abs(sum(x.exact for x in lines) - D(100)) < D("1e-20")
    assert abs(sum(x.amount for x in lines) - D(100)) <= D("0.005") * len(lines)
    assert all(b.period_start_us == a.period_end_us for a, b in itertools.pairwise(lines))
