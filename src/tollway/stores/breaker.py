"""A circuit breaker, so a dead store costs one timeout per cooldown, not one per request."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Breaker:
    """Closed until ``failures`` calls in a row fail; then open for ``cooldown_us``, after
    which one probe call is let through (half-open): success closes it, failure reopens it."""

    def __init__(self, failures: int, cooldown_us: int, clock: Callable[[], int]) -> None:
        self.failures = failures
        self.cooldown_us = cooldown_us
        self.clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._open_until = 0
        self._probing = False

    def allow(self) -> int:
        """0 when a call may go to the store; else microseconds until the next probe."""
        if self._count < self.failures:
            return 0
        with self._lock:
            now = self.clock()
            if now >= self._open_until and not self._probing:
                self._probing = True
                return 0
            return max(1, self._open_until - now)

    def success(self) -> bool:
        """Record a success; True when this closed an open breaker."""
        if self._count == 0:
            return False
        with self._lock:
            was_open = self._count >= self.failures
            self._count = 0
            self._probing = False
            return was_open

    def failure(self) -> None:
        with self._lock:
            self._count += 1
            self._probing = False
            if self._count >= self.failures:
                self._open_until = self.clock() + self.cooldown_us

    @property
    def is_open(self) -> bool:
        return self._count >= self.failures

    @property
    def state(self) -> str:
        """``closed``, ``open`` (calls refused until the cooldown ends) or ``half_open`` (the
        cooldown is over: the next call, or the one in flight, is the probe); for metrics."""
        if self._count < self.failures:
            return "closed"
        if self._probing or self.clock() >= self._open_until:
            return "half_open"
        return "open"
