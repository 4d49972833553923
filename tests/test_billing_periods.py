"""Billing periods: calendar (day, week, month) in a timezone, DST, anchored months."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st
from tests.billing_support import us

from tollway.billing.periods import next_period, period_at, periods_between, previous_period
from tollway.policy.model import BillingConfig

MONTH = BillingConfig()
NY = ZoneInfo("America/New_York")


def test_calendar_month_utc() -> None:
    assert period_at(MONTH, us(2026, 1, 15)) == (us(2026, 1, 1), us(2026, 2, 1))
    assert period_at(MONTH, us(2026, 2, 1)) == (us(2026, 2, 1), us(2026, 3, 1))
    assert next_period(MONTH, (us(2026, 12, 1), us(2027, 1, 1))) == (us(2027, 1, 1), us(2027, 2, 1))
    assert previous_period(MONTH, (us(2026, 1, 1), us(2026, 2, 1))) == (
        us(2025, 12, 1),
        us(2026, 1, 1),
    )


def test_week_starts_monday_and_day() -> None:
    week = BillingConfig(period="week")
    # 2026-01-15 is a Thursday; the Monday before is the 12th.
    assert period_at(week, us(2026, 1, 15, 13)) == (us(2026, 1, 12), us(2026, 1, 19))
    day = BillingConfig(period="day")
    assert period_at(day, us(2026, 1, 15, 23, 59)) == (us(2026, 1, 15), us(2026, 1, 16))


def test_dst_day_in_new_york_is_23_hours() -> None:
    day = BillingConfig(period="day", timezone="America/New_York")
    start, end = period_at(day, us(2026, 3, 8, 12, tz=NY))
    assert (start, end) == (us(2026, 3, 8, tz=NY), us(2026, 3, 9, tz=NY))
    assert end - start == 23 * 3600 * 1_000_000
    month = BillingConfig(timezone="America/New_York")
    start, end = period_at(month, us(2026, 11, 20, tz=NY))
    assert (start, end) == (us(2026, 11, 1, tz=NY), us(2026, 12, 1, tz=NY))


def test_anchored_on_the_31st_clamps() -> None:
    config = BillingConfig(anchor="subscription")
    anchor = us(2026, 1, 31, 10)
    assert period_at(config, us(2026, 2, 10), anchor) == (us(2026, 1, 31), us(2026, 2, 28))
    assert period_at(config, us(2026, 3, 1), anchor) == (us(2026, 2, 28), us(2026, 3, 31))
    assert next_period(config, (us(2026, 2, 28), us(2026, 3, 31)), anchor) == (
        us(2026, 3, 31),
        us(2026, 4, 30),
    )
    # Without anchor = "subscription" the anchor is ignored: calendar months.
    assert period_at(MONTH, us(2026, 2, 10), anchor) == (us(2026, 2, 1), us(2026, 3, 1))


def test_anchored_leap_february() -> None:
    config = BillingConfig(anchor="subscription")
    assert period_at(config, us(2028, 2, 29, 5), us(2027, 12, 30)) == (
        us(2028, 2, 29),
        us(2028, 3, 30),
    )


def test_periods_between() -> None:
    jan = (us(2026, 1, 1), us(2026, 2, 1))
    mar = (us(2026, 3, 1), us(2026, 4, 1))
    assert periods_between(MONTH, us(2026, 1, 20), jan) == 0
    assert periods_between(MONTH, us(2026, 1, 20), mar) == 2
    assert periods_between(MONTH, us(2026, 3, 20), jan) == -1


@given(
    st.integers(min_value=us(2000, 1, 1), max_value=us(2090, 1, 1)),
    st.sampled_from(["day", "week", "month"]),
)
def test_period_holds_the_instant_and_chains(t: int, kind: str) -> None:
    config = BillingConfig(period=kind, timezone="Europe/Berlin")  # type: ignore[arg-type]
    start, end = period_at(config, t)
    assert start <= t < end
    assert next_period(config, (start, end))[0] == end
    assert previous_period(config, (start, end))[1] == start


def test_anchored_across_dst_starts_at_local_midnight() -> None:
    config = BillingConfig(anchor="subscription", timezone="America/New_York")
    anchor = us(2026, 2, 20, 15, tz=NY)
    start, end = period_at(config, us(2026, 3, 10, tz=NY), anchor)
    assert (start, end) == (us(2026, 2, 20, tz=NY), us(2026, 3, 20, tz=NY))
    assert end - start == (28 * 24 - 1) * 3600 * 1_000_000  # the clocks went forward on Mar 8
