"""The bounds of every call to one Redis store, shared by the sync and async faces: the
circuit breaker, the timeout and the deadline a step carries, and how failures read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway.errors import StoreError, StoreUnavailableError
from tollway.policy.model import StoreConfig
from tollway.stores.breaker import Breaker

OFFSET_PERIOD_US = 10_000_000
"""How long the best sample of the store's clock offset stands (see `Guard._sample_clock`)."""


class Guard:
    def __init__(self, url: str, config: StoreConfig, clock: Callable[[], int]) -> None:
        self.url = url
        self.timeout = config.timeout_ms / 1000
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_ms * 1000, clock)
        self.clock = clock
        self._deadline_us = config.timeout_ms * 800
        self._timed = False
        """Whether the offset was read from the store's TIME (the first command does)."""
        self._offset_by = 0
        self._offset_us = 0
        """The store's clock minus ours: read from its TIME when the first command is sent,
        and from every step's reply after that (see `_learn`)."""

    def _blocked(self) -> None:
        wait = self.breaker.allow()
        if wait:
            raise StoreUnavailableError(
                f"store {self.url} is unavailable (circuit open); next try in {wait / 1e6:.3f} s",
                wait / 1e6,
            )

    def _failed(self, exc: BaseException) -> StoreUnavailableError:
        self.breaker.failure()
        wait = self.breaker.cooldown_us / 1e6 if self.breaker.is_open else self.timeout
        sent = not _refused(exc)
        return StoreUnavailableError(f"store {self.url} did not answer: {exc}", wait, sent=sent)

    @staticmethod
    def _error(exc: Exception) -> StoreError:
        return StoreError(f"the store refused a command: {exc}")

    def _deadline(self) -> int:
        """When, on the store's clock, a step sent now is no longer worth taking: before the
        client gives up on it (the timeout), with a fifth of the timeout left for the reply.
        A step that arrives later is refused by the script, so a step that timed out here
        has not been counted there, and journaling it cannot count it twice."""
        return self.clock() + self._offset_us + self._deadline_us

    def _read_clock(self, time_reply: Any) -> None:
        """The offset from the store's TIME (``[seconds, microseconds]``), read at connect:
        a client clock ahead of the store's would otherwise push every deadline late."""
        seconds, micros = time_reply
        self._timed = True
        self._learn(int(seconds) * 1_000_000 + int(micros))

    def _sample_clock(self, store_now_us: int) -> None:
        """Keep the offset fresh from the time in a step's reply. Each sample errs early by
        its reply's trip, so the highest of a period is the best; a new period starts every
        `OFFSET_PERIOD_US`, so a clock stepped back is followed."""
        now = self.clock()
        sample = store_now_us - now
        if sample > self._offset_us or now > self._offset_by:
            self._offset_us = sample
            self._offset_by = now + OFFSET_PERIOD_US

    def _learn(self, store_now_us: int) -> None:
        """Learn the offset from a time the store read before answering: it errs towards
        the store's past by the reply's trip, so deadlines err early, never late."""
        now = self.clock()
        self._offset_us = store_now_us - now
        self._offset_by = now + OFFSET_PERIOD_US


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection refused (the client wraps the socket's error): then
    nothing was sent. Anything else may have come after sending, so its step is in doubt."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
