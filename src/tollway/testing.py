"""Helpers for the tests of applications that use tollway."""

from __future__ import annotations

import threading
from datetime import datetime


class FakeClock:
    """A clock that moves only when told: pass it as ``clock=`` and never sleep in a test.

    Calling it returns microseconds since the epoch, like the clock tollway's stores read.
    """

    def __init__(self, start: float | datetime = 1_700_000_000.0) -> None:
        seconds = start.timestamp() if isinstance(start, datetime) else start
        self._us = round(seconds * 1_000_000)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._us

    def advance(self, seconds: float = 0.0, *, us: int = 0) -> None:
        with self._lock:
            self._us += round(seconds * 1_000_000) + us

    def set(self, when: float | datetime) -> None:
        seconds = when.timestamp() if isinstance(when, datetime) else when
        with self._lock:
            self._us = round(seconds * 1_000_000)

    @property
    def now(self) -> datetime:
        from datetime import timezone

        return datetime.fromtimestamp(self._us / 1_000_000, tz=timezone.utc)


__all__ = ["FakeClock"]
