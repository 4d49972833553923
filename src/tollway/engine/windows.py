"""Calendar windows in a timezone: where the window holding an instant starts and ends.

Instants are integer microseconds since the Unix epoch. Minute and hour windows follow the
local wall clock's offset (so an hour in Asia/Kolkata starts at :30 UTC); day, week and month
windows run from one local midnight to another, so a New York day is 23 or 25 hours long on
the days daylight saving time changes.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from tollway.clock import US
from tollway.policy.model import Period

_UTC = timezone.utc


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _midnight_us(day: date, tz: ZoneInfo) -> int:
    # fold=0 picks the first of two repeated midnights, and a skipped midnight maps forward.
    local = datetime(day.year, day.month, day.day, tzinfo=tz)
    return int(local.timestamp()) * US


def _month_start(year: int, month: int, anchor: int) -> date:
    """The anchor day of a month, clamped to the month's last day (31 -> Feb 28)."""
    if month == 12:
        last = 31
    else:
        last = (date(year, month + 1, 1) - timedelta(days=1)).day
    return date(year, month, min(anchor, last))


def _add_months(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def window_at(period: Period, tz_name: str, anchor: int | None, now_us: int) -> tuple[int, int]:
    """The ``[start, end)`` microsecond bounds of the window holding ``now_us``."""
    tz = zone(tz_name)
    if period in ("minute", "hour"):
        size = 60 * US if period == "minute" else 3600 * US
        instant = datetime.fromtimestamp(now_us // US, tz=_UTC).astimezone(tz)
        offset = instant.utcoffset()
        offset_us = int(offset.total_seconds()) * US if offset is not None else 0
        start = now_us - (now_us + offset_us) % size
        return start, start + size
    # Local midnights fall on whole seconds, so the floored second has the same local date.
    local_day = datetime.fromtimestamp(now_us // US, tz=tz).date()
    if period == "day":
        start_day, end_day = local_day, local_day + timedelta(days=1)
    elif period == "week":
        start_day = local_day - timedelta(days=local_day.weekday())
        end_day = start_day + timedelta(days=7)
    else:
        day = anchor or 1
        this = _month_start(local_day.year, local_day.month, day)
        if local_day >= this:
            start_day = this
            end_day = _month_start(*_add_months(local_day.year, local_day.month, 1), day)
        else:
            start_day = _month_start(*_add_months(local_day.year, local_day.month, -1), day)
            end_day = this
    start, end = _midnight_us(start_day, tz), _midnight_us(end_day, tz)
    # A local midnight computed from a date can sit a DST hour away from the instant's own
    # view of the day; step to the neighbouring window so the result always holds now_us.
    if now_us < start:
        return window_at(period, tz_name, anchor, start - 1)
    if now_us >= end:
        return window_at(period, tz_name, anchor, end)
    return start, end
