"""The bounds of every call to one Redis store, shared by the sync and async faces: the
circuit breaker, the timeout and the deadline a step carries, and how failures read."""

from __future__ import annotations

from collections.abc import Callable

from tollway.errors import StoreError, StoreUnavailableError
from tollway.policy.model import StoreConfig
from tollway.stores.breaker import Breaker


class Guard:
    def __init__(self, url: str, config: StoreConfig, clock: Callable[[], int]) -> None:
        self.url = url
        self.timeout = config.timeout_ms / 1000
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_ms * 1000, clock)
        self.clock = clock
        self._deadline_us = config.timeout_ms * 800
        self._offset_us = 0
        """The store's clock minus ours, as last learnt from a step the store refused late."""

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
        return StoreUnavailableError(f"store {self.url} did not answer: {exc}", wait)

    @staticmethod
    def _error(exc: Exception) -> StoreError:
        return StoreError(f"the store refused a command: {exc}")

    def _deadline(self) -> int:
        """When, on the store's clock, a step sent now is no longer worth taking: before the
        client gives up on it (the timeout), with a fifth of the timeout left for the reply.
        A step that arrives later is refused by the script, so a step that timed out here
        has not been counted there, and journaling it cannot count it twice."""
        return self.clock() + self._offset_us + self._deadline_us

    def _learn(self, store_now_us: int) -> None:
        self._offset_us = store_now_us - self.clock()
