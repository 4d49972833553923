"""Time in tollway: integer microseconds since the epoch, from one source per process.

Every clock tollway takes or keeps (`Tollway(clock=...)`, the memory store, the dispatcher,
`tollway.testing.FakeClock`) is a `Clock`: a function returning microseconds. `US` turns
seconds into them; it is defined here once, for every layer.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

__all__ = ["US", "Clock", "micros", "utc"]

US = 1_000_000
"""Microseconds in a second."""

Clock = Callable[[], int]
"""Microseconds since the epoch (the store's, the system's or a test's fake)."""


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def utc(us: int) -> datetime:
    """An aware UTC datetime of microseconds since the epoch (exact: no float)."""
    return _EPOCH + timedelta(microseconds=us)


def micros(when: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact: no float); `utc`'s inverse."""
    span = when.astimezone(timezone.utc) - _EPOCH
    return (span.days * 86_400 + span.seconds) * US + span.microseconds
