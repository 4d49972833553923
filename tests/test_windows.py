"""Calendar windows: `window_at` directly, and the same edges through `Tollway.acquire`.

Expected bounds are written out by hand in UTC (never computed with zoneinfo), so the tests do
not share the code's view of the timezone database.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tollway import Tollway
from tollway.engine.windows import window_at
from tollway.policy.model import Period
from tollway.testing import FakeClock

US = 1_000_000
HOUR = 3600 * US
DAY = 24 * HOUR


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Microseconds since the epoch of a UTC wall-clock time."""
    moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    return int(moment.timestamp()) * US


def quota_policy(quota: str, **extra: Any) -> dict[str, Any]:
    return {
        "defaults": {"plan": "free"},
        "operations": {"call": {"cost": 1}},
        "plans": {"free": {"limits": [{"name": "q", "quota": quota, **extra}]}},
    }


def clock_at(us: int) -> FakeClock:
    clock = FakeClock(0)
    clock.advance(us=us)
    assert clock() == us
    return clock


# -- window_at: UTC --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("minute", utc(2026, 1, 15, 10, 23, 45) + 500_000, utc(2026, 1, 15, 10, 23),
         utc(2026, 1, 15, 10, 24)),
        ("hour", utc(2026, 1, 15, 10, 23, 45), utc(2026, 1, 15, 10), utc(2026, 1, 15, 11)),
        ("day", utc(2026, 1, 15, 10, 23, 45), utc(2026, 1, 15), utc(2026, 1, 16)),
        # 2026-01-15 is a Thursday; ISO weeks start on Monday.
        ("week", utc(2026, 1, 15, 10, 23, 45), utc(2026, 1, 12), utc(2026, 1, 19)),
        ("week", utc(2026, 1, 12), utc(2026, 1, 12), utc(2026, 1, 19)),
        ("week", utc(2026, 1, 18, 23, 59, 59), utc(2026, 1, 12), utc(2026, 1, 19)),
        # A week across a year end: Monday 2025-12-29 to Monday 2026-01-05.
        ("week", utc(2026, 1, 1, 12), utc(2025, 12, 29), utc(2026, 1, 5)),
        ("month", utc(2026, 1, 15, 10, 23, 45), utc(2026, 1, 1), utc(2026, 2, 1)),
        ("month", utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
        ("month", utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),
    ],
)  # fmt: skip
def test_window_at_utc(period: Period, now: int, start: int, end: int) -> None:
    assert window_at(period, "UTC", None, now) == (start, end)


@pytest.mark.parametrize(
    ("period", "boundary", "before_start", "after_end"),
    [
        ("minute", utc(2026, 1, 15, 10, 24), utc(2026, 1, 15, 10, 23), utc(2026, 1, 15, 10, 25)),
        ("hour", utc(2026, 1, 15, 11), utc(2026, 1, 15, 10), utc(2026, 1, 15, 12)),
        ("day", utc(2026, 1, 16), utc(2026, 1, 15), utc(2026, 1, 17)),
        ("week", utc(2026, 1, 19), utc(2026, 1, 12), utc(2026, 1, 26)),
        ("month", utc(2026, 2, 1), utc(2026, 1, 1), utc(2026, 3, 1)),
    ],
)
def test_last_microsecond_and_first_of_next_window(
    period: Period, boundary: int, before_start: int, after_end: int
) -> None:
    assert window_at(period, "UTC", None, boundary - 1) == (before_start, boundary)
    assert window_at(period, "UTC", None, boundary) == (boundary, after_end)


# -- window_at: timezones --------------------------------------------------------------------------


def test_new_york_spring_forward_day_is_23_hours() -> None:
    # 2026-03-08: midnight is EST (UTC-5), the next midnight EDT (UTC-4).
    start, end = window_at("day", "America/New_York", None, utc(2026, 3, 8, 12))
    assert (start, end) == (utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    assert end - start == 23 * HOUR


def test_new_york_fall_back_day_is_25_hours() -> None:
    # 2026-11-01: midnight is EDT (UTC-4), the next midnight EST (UTC-5).
    start, end = window_at("day", "America/New_York", None, utc(2026, 11, 1, 12))
    assert (start, end) == (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    assert end - start == 25 * HOUR


@pytest.mark.parametrize(
    "now",
    [
        utc(2026, 11, 1, 4),  # local midnight
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, the first time
        utc(2026, 11, 1, 6, 30),  # 01:30 EST, the second time
        utc(2026, 11, 2, 5) - 1,  # the last microsecond of the local day
    ],
)
def test_every_instant_of_the_25_hour_day_is_in_the_same_window(now: int) -> None:
    assert window_at("day", "America/New_York", None, now) == (
        utc(2026, 11, 1, 4),
        utc(2026, 11, 2, 5),
    )


def test_new_york_day_edges_around_dst() -> None:
    assert window_at("day", "America/New_York", None, utc(2026, 3, 8, 5) - 1) == (
        utc(2026, 3, 7, 5),
        utc(2026, 3, 8, 5),
    )
    assert window_at("day", "America/New_York", None, utc(2026, 3, 9, 4)) == (
        utc(2026, 3, 9, 4),
        utc(2026, 3, 10, 4),
    )


def test_new_york_week_holding_spring_forward_is_167_hours() -> None:
    # Monday 2026-03-02 00:00 EST to Monday 2026-03-09 00:00 EDT.
    start, end = window_at("week", "America/New_York", None, utc(2026, 3, 8, 12))
    assert (start, end) == (utc(2026, 3, 2, 5), utc(2026, 3, 9, 4))
    assert end - start == 167 * HOUR


def test_new_york_month_starts_at_local_midnight() -> None:
    # March 2026 in New York: starts in EST, ends in EDT.
    assert window_at("month", "America/New_York", None, utc(2026, 3, 15)) == (
        utc(2026, 3, 1, 5),
        utc(2026, 4, 1, 4),
    )
    # 2026-03-01 03:00 UTC is still 2026-02-28 22:00 in New York.
    assert window_at("month", "America/New_York", None, utc(2026, 3, 1, 3)) == (
        utc(2026, 2, 1, 5),
        utc(2026, 3, 1, 5),
    )


@pytest.mark.parametrize(
    ("now", "start"),
    [
        (utc(2026, 1, 15, 10, 10), utc(2026, 1, 15, 9, 30)),
        (utc(2026, 1, 15, 10, 30) - 1, utc(2026, 1, 15, 9, 30)),
        (utc(2026, 1, 15, 10, 30), utc(2026, 1, 15, 10, 30)),
        (utc(2026, 1, 15, 10, 45), utc(2026, 1, 15, 10, 30)),
    ],
)
def test_kolkata_hours_start_at_half_past_utc(now: int, start: int) -> None:
    assert window_at("hour", "Asia/Kolkata", None, now) == (start, start + HOUR)


def test_kathmandu_hours_start_at_quarter_past_utc() -> None:
    # UTC+05:45
    assert window_at("hour", "Asia/Kathmandu", None, utc(2026, 1, 15, 10, 10)) == (
        utc(2026, 1, 15, 9, 15),
        utc(2026, 1, 15, 10, 15),
    )


def test_kolkata_day_starts_at_1830_utc() -> None:
    assert window_at("day", "Asia/Kolkata", None, utc(2026, 1, 15, 20)) == (
        utc(2026, 1, 15, 18, 30),
        utc(2026, 1, 16, 18, 30),
    )


# -- window_at: month anchors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (utc(2026, 1, 31), utc(2026, 1, 31), utc(2026, 2, 28)),
        (utc(2026, 2, 10), utc(2026, 1, 31), utc(2026, 2, 28)),
        (utc(2026, 2, 28) - 1, utc(2026, 1, 31), utc(2026, 2, 28)),
        (utc(2026, 2, 28), utc(2026, 2, 28), utc(2026, 3, 31)),
        (utc(2026, 3, 30, 23, 59, 59), utc(2026, 2, 28), utc(2026, 3, 31)),
        (utc(2026, 3, 31), utc(2026, 3, 31), utc(2026, 4, 30)),
        (utc(2026, 4, 30), utc(2026, 4, 30), utc(2026, 5, 31)),
        (utc(2026, 12, 15), utc(2026, 11, 30), utc(2026, 12, 31)),
        (utc(2026, 12, 31), utc(2026, 12, 31), utc(2027, 1, 31)),
        # Leap year: February ends on the 29th.
        (utc(2028, 2, 10), utc(2028, 1, 31), utc(2028, 2, 29)),
        (utc(2028, 2, 29), utc(2028, 2, 29), utc(2028, 3, 31)),
    ],
)
def test_month_anchor_31_clamps_to_the_last_day(now: int, start: int, end: int) -> None:
    assert window_at("month", "UTC", 31, now) == (start, end)


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (utc(2026, 1, 20), utc(2026, 1, 15), utc(2026, 2, 15)),
        (utc(2026, 1, 10), utc(2025, 12, 15), utc(2026, 1, 15)),
        (utc(2026, 1, 15) - 1, utc(2025, 12, 15), utc(2026, 1, 15)),
        (utc(2026, 1, 15), utc(2026, 1, 15), utc(2026, 2, 15)),
        (utc(2026, 2, 20), utc(2026, 2, 15), utc(2026, 3, 15)),
    ],
)
def test_month_anchor_15(now: int, start: int, end: int) -> None:
    assert window_at("month", "UTC", 15, now) == (start, end)


def test_month_anchor_1_is_the_calendar_month() -> None:
    now = utc(2026, 5, 17)
    assert window_at("month", "UTC", 1, now) == window_at("month", "UTC", None, now)


def test_month_anchor_in_a_timezone() -> None:
    # The 15th at local midnight in New York: EDT in both March and April.
    assert window_at("month", "America/New_York", 15, utc(2026, 4, 1)) == (
        utc(2026, 3, 15, 4),
        utc(2026, 4, 15, 4),
    )


# -- window_at: windows tile time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "tz",
    [
        "UTC",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Lord_Howe",  # half-hour DST
        "America/Santiago",  # DST changes at midnight
        "America/Havana",  # DST changes at midnight
        "Pacific/Chatham",  # UTC+12:45 / +13:45
    ],
)
@pytest.mark.parametrize(("period", "anchor"), [("day", None), ("week", None), ("month", 31)])
def test_windows_tile_a_whole_year_without_gaps_or_overlaps(
    tz: str, period: Period, anchor: int | None
) -> None:
    now = utc(2026, 1, 1)
    start, end = window_at(period, tz, anchor, now)
    assert start <= now < end
    while end < utc(2027, 1, 1):
        # The last microsecond belongs to this window, the next one starts the next window.
        assert window_at(period, tz, anchor, end - 1) == (start, end)
        following = window_at(period, tz, anchor, end)
        assert following[0] == end
        assert following[1] > end
        start, end = following


def test_a_skipped_calendar_day_is_no_window() -> None:
    # Samoa skipped 2011-12-30: 2011-12-29 23:59:59 (UTC-10) was followed by 2011-12-31 00:00
    # (UTC+14), both at 2011-12-30 10:00 UTC.
    assert window_at("day", "Pacific/Apia", None, utc(2011, 12, 30, 9)) == (
        utc(2011, 12, 29, 10),
        utc(2011, 12, 30, 10),
    )
    assert window_at("day", "Pacific/Apia", None, utc(2011, 12, 30, 10)) == (
        utc(2011, 12, 30, 10),
        utc(2011, 12, 31, 10),
    )


# -- through acquire -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "boundary"),
    [
        ("3/minute", utc(2026, 1, 15, 10, 24)),
        ("3/hour", utc(2026, 1, 15, 11)),
        ("3/day", utc(2026, 1, 16)),
        ("3/week", utc(2026, 1, 19)),
        ("3/month", utc(2026, 2, 1)),
    ],
)
def test_counts_reset_exactly_at_the_boundary(quota: str, boundary: int) -> None:
    clock = clock_at(boundary - 1)
    tw = Tollway(quota_policy(quota), clock=clock)
    assert [tw.acquire("a", "call").allowed for _ in range(4)] == [True, True, True, False]
    denied = tw.acquire("a", "call")
    assert denied.violated == ("q",)
    assert denied.retry_after == 0.000001
    assert denied.limit("q").reset_after == 0.000001
    assert denied.limit("q").window_end == datetime.fromtimestamp(boundary // US, timezone.utc)
    clock.advance(us=1)
    fresh = tw.acquire("a", "call")
    assert fresh.allowed
    assert fresh.limit("q").used == 1
    assert fresh.limit("q").remaining == 2
    assert fresh.limit("q").window_start == datetime.fromtimestamp(boundary // US, timezone.utc)


def test_quota_window_figures() -> None:
    clock = clock_at(utc(2026, 1, 15, 10, 15))
    tw = Tollway(quota_policy("10/hour"), clock=clock)
    state = tw.acquire("a", "call", 4).limit("q")
    assert state.kind == "quota"
    assert (state.limit, state.used, state.remaining) == (10, 4, 6)
    assert state.reset_after == 45 * 60
    assert state.window_start == datetime(2026, 1, 15, 10, tzinfo=timezone.utc)
    assert state.window_end == datetime(2026, 1, 15, 11, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("day_start", "hours"),
    [(utc(2026, 3, 8, 5), 23), (utc(2026, 11, 1, 4), 25), (utc(2026, 1, 15, 5), 24)],
)
def test_new_york_daily_quota_follows_dst(day_start: int, hours: int) -> None:
    clock = clock_at(day_start)
    tw = Tollway(quota_policy("2/day", timezone="America/New_York"), clock=clock)
    first = tw.acquire("a", "call", 2)
    assert first.allowed
    assert first.limit("q").reset_after == hours * 3600
    clock.advance(us=hours * HOUR - 1)
    denied = tw.acquire("a", "call")
    assert not denied.allowed
    assert denied.retry_after == 0.000001
    clock.advance(us=1)
    assert tw.acquire("a", "call", 2).allowed


def test_kolkata_hourly_quota_resets_at_half_past_utc() -> None:
    clock = clock_at(utc(2026, 1, 15, 10, 30) - 1)
    tw = Tollway(quota_policy("1/hour", timezone="Asia/Kolkata"), clock=clock)
    first = tw.acquire("a", "call")
    assert first.limit("q").window_start == datetime(2026, 1, 15, 9, 30, tzinfo=timezone.utc)
    assert not tw.acquire("a", "call").allowed
    clock.advance(us=1)
    second = tw.acquire("a", "call")
    assert second.allowed
    assert second.limit("q").reset_after == 3600.0


def test_quota_with_timezone_counts_per_local_day() -> None:
    """Asia/Tokyo (UTC+9) days start at 15:00 UTC; a UTC quota still counts the UTC day."""
    policy = {
        "defaults": {"plan": "free"},
        "operations": {"call": {"cost": 1}},
        "plans": {
            "free": {
                "limits": [
                    {"name": "tokyo", "quota": "2/day", "timezone": "Asia/Tokyo"},
                ]
            },
            "utc": {"limits": [{"name": "plain", "quota": "2/day"}]},
        },
    }
    clock = clock_at(utc(2026, 1, 15, 15) - 1)
    tw = Tollway(policy, clock=clock)
    tw.assign("u", "utc")
    for subject in ("t", "u"):
        assert tw.acquire(subject, "call", 2).allowed
        assert not tw.acquire(subject, "call").allowed
    clock.advance(us=1)
    tokyo = tw.acquire("t", "call", 2)
    assert tokyo.allowed
    assert tokyo.limit("tokyo").window_start == datetime(2026, 1, 15, 15, tzinfo=timezone.utc)
    assert tokyo.limit("tokyo").reset_after == 24 * 3600
    assert not tw.acquire("u", "call").allowed
    clock.advance(9 * 3600)
    assert tw.acquire("u", "call", 2).allowed


def test_defaults_timezone_applies_to_limits_without_one() -> None:
    policy = quota_policy("1/day")
    policy["defaults"]["timezone"] = "Asia/Tokyo"
    clock = clock_at(utc(2026, 1, 15, 15) - 1)
    tw = Tollway(policy, clock=clock)
    assert tw.acquire("a", "call").allowed
    assert not tw.acquire("a", "call").allowed
    clock.advance(us=1)
    assert tw.acquire("a", "call").allowed


def test_anchored_monthly_quota_resets_on_the_clamped_day() -> None:
    clock = clock_at(utc(2026, 2, 28) - 1)
    tw = Tollway(quota_policy("5/month", anchor=31), clock=clock)
    last = tw.acquire("a", "call", 5)
    assert last.limit("q").window_start == datetime(2026, 1, 31, tzinfo=timezone.utc)
    assert last.limit("q").window_end == datetime(2026, 2, 28, tzinfo=timezone.utc)
    assert not tw.acquire("a", "call").allowed
    clock.advance(us=1)
    march = tw.acquire("a", "call", 5)
    assert march.allowed
    assert march.limit("q").window_end == datetime(2026, 3, 31, tzinfo=timezone.utc)
    assert march.limit("q").reset_after == 31 * 24 * 3600
    clock.set(datetime(2026, 3, 31, tzinfo=timezone.utc) - timedelta(microseconds=1))
    assert not tw.acquire("a", "call").allowed
    clock.advance(us=1)
    april = tw.acquire("a", "call", 5)
    assert april.allowed
    assert april.limit("q").window_end == datetime(2026, 4, 30, tzinfo=timezone.utc)


def test_leap_february_window_through_acquire() -> None:
    clock = clock_at(utc(2028, 2, 29) - 1)
    tw = Tollway(quota_policy("1/month", anchor=31), clock=clock)
    assert tw.acquire("a", "call").limit("q").window_end == datetime(
        2028, 2, 29, tzinfo=timezone.utc
    )
    clock.advance(us=1)
    leap = tw.acquire("a", "call")
    assert leap.allowed
    assert leap.limit("q").window_start == datetime(2028, 2, 29, tzinfo=timezone.utc)
    assert leap.limit("q").window_end == datetime(2028, 3, 31, tzinfo=timezone.utc)


def test_iso_week_quota_resets_on_monday() -> None:
    # Sunday 2026-01-18 23:59:59.999999 UTC, then Monday.
    clock = clock_at(utc(2026, 1, 19) - 1)
    tw = Tollway(quota_policy("1/week"), clock=clock)
    sunday = tw.acquire("a", "call")
    assert sunday.limit("q").window_start == datetime(2026, 1, 12, tzinfo=timezone.utc)
    assert not tw.acquire("a", "call").allowed
    clock.advance(us=1)
    assert tw.acquire("a", "call").allowed
    clock.advance(6 * 24 * 3600)
    assert not tw.acquire("a", "call").allowed


def test_clock_moving_back_uses_the_earlier_window() -> None:
    clock = clock_at(utc(2026, 1, 15, 10, 30))
    tw = Tollway(quota_policy("2/hour"), clock=clock)
    assert tw.acquire("a", "call", 2).allowed
    clock.set(datetime(2026, 1, 15, 11, 30, tzinfo=timezone.utc))
    assert tw.acquire("a", "call", 2).allowed
    clock.set(datetime(2026, 1, 15, 10, 45, tzinfo=timezone.utc))
    back = tw.acquire("a", "call")
    assert back.limit("q").window_start == datetime(2026, 1, 15, 10, tzinfo=timezone.utc)
