"""Billing periods: the ``[start, end)`` microsecond bounds of the period holding an instant.

``[billing] period`` is ``day``, ``week`` (from Monday) or ``month``, cut at local midnights in
``[billing] timezone`` (DST-correct: a New York day is 23 or 25 hours long on the days the
clocks change), by the same calendar windows the limits use (`tollway.engine.windows`).

With ``anchor = "subscription"``, monthly periods start on the day of the month of the
subject's anchor (its first assignment to a plan with a fee, given as ``anchor_us``) at local
midnight, a 31st clamping to the month's last day (Jan 31, Feb 28, Mar 31...). Day and week
periods have no anchor: they are calendar periods either way.
"""

from __future__ import annotations

from datetime import datetime

from tollway.clock import US
from tollway.engine.windows import window_at, zone
from tollway.policy.model import BillingConfig

__all__ = ["anchor_day", "next_period", "period_at", "periods_between", "previous_period"]

Bounds = tuple[int, int]
MAX_PERIODS = 10_000
"""The most periods `periods_between` walks: about 27 years of days, 800 of months."""


def anchor_day(config: BillingConfig, anchor_us: int | None) -> int | None:
    """The day of the month monthly periods start on (None: the 1st, calendar periods)."""
    if config.anchor != "subscription" or anchor_us is None or config.period != "month":
        return None
    return datetime.fromtimestamp(anchor_us // US, tz=zone(config.timezone)).day


def period_at(config: BillingConfig, t_us: int, anchor_us: int | None = None) -> Bounds:
    """The period holding ``t_us``: ``start_us <= t_us < end_us``."""
    return window_at(config.period, config.timezone, anchor_day(config, anchor_us), t_us)


def next_period(config: BillingConfig, period: Bounds, anchor_us: int | None = None) -> Bounds:
    """The period right after ``period`` (it starts at ``period``'s end)."""
    return period_at(config, period[1], anchor_us)


def previous_period(config: BillingConfig, period: Bounds, anchor_us: int | None = None) -> Bounds:
    """The period right before ``period`` (it ends at ``period``'s start)."""
    return period_at(config, period[0] - 1, anchor_us)


def periods_between(
    config: BillingConfig, first_us: int, period: Bounds, anchor_us: int | None = None
) -> int:
    """How many periods from the one holding ``first_us`` to ``period``: 0 when ``period``
    holds ``first_us``, 1 for the next one...; -1 when ``period`` ends before ``first_us``.
    Walks at most `MAX_PERIODS` periods (and says `MAX_PERIODS` past that)."""
    if period[1] <= first_us:
        return -1
    current = period_at(config, first_us, anchor_us)
    for n in range(MAX_PERIODS):
        if current[0] >= period[0]:
            return n
        current = next_period(config, current, anchor_us)
    return MAX_PERIODS
