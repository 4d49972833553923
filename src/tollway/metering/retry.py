"""When to try a delivery again: the delay before each attempt, with jitter that only
shortens it (see `tollway.metering.delivery`)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from tollway.errors import InvalidArgumentError

__all__ = ["DEFAULT_DELAYS", "RetrySchedule"]


DEFAULT_DELAYS: tuple[float, ...] = (
    0.0,
    5.0,
    5 * 60.0,
    30 * 60.0,
    2 * 3600.0,
    5 * 3600.0,
    10 * 3600.0,
    14 * 3600.0,
    20 * 3600.0,
    24 * 3600.0,
)
"""Standard Webhooks' example schedule: the delay before each attempt (75 h 35 min 5 s)."""


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """The delay before each attempt, in seconds: ``delays[0]`` before the first (usually 0),
    ``delays[n]`` after the n-th failure. ``jitter`` (0 to 1) draws each delay uniformly from
    ``[delay * (1 - jitter), delay]``: 0 keeps the nominal times, 1 is full jitter."""

    delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = 0.1

    def __post_init__(self) -> None:
        delays = tuple(self.delays) if isinstance(self.delays, (list, tuple)) else None
        if not delays:
            raise InvalidArgumentError(
                f"delays: {self.delays!r}; expected a non-empty sequence of seconds"
            )
        for index, delay in enumerate(delays):
            if (
                isinstance(delay, bool)
                or not isinstance(delay, (int, float))
                or not math.isfinite(delay)
                or delay < 0
            ):
                raise InvalidArgumentError(
                    f"delays[{index}]: {delay!r}; expected finite seconds >= 0"
                )
        object.__setattr__(self, "delays", tuple(float(delay) for delay in delays))
        if (
            isinstance(self.jitter, bool)
            or not isinstance(self.jitter, (int, float))
            or not 0 <= self.jitter <= 1
        ):
            raise InvalidArgumentError(
                f"jitter: {self.jitter!r}; expected a fraction from 0 (none) to 1 (full jitter)"
            )

    @classmethod
    def exponential(
        cls,
        attempts: int,
        *,
        base: float = 5.0,
        factor: float = 2.0,
        cap: float = 24 * 3600.0,
        first: float = 0.0,
        jitter: float = 1.0,
    ) -> RetrySchedule:
        """``attempts`` attempts: the first after ``first`` seconds, then ``base``,
        ``base * factor``, … each at most ``cap``; full jitter by default."""
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidArgumentError(f"attempts: {attempts!r}; expected an int >= 1")
        for name, value in (("base", base), ("cap", cap), ("first", first)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"{name}: {value!r}; expected finite seconds >= 0")
        if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
            raise InvalidArgumentError(f"factor: {factor!r}; expected a finite number >= 1")
        delays = [float(first)]
        delay = float(base)
        for _ in range(attempts - 1):
            delays.append(min(delay, cap))
            delay = min(delay * factor, cap)
        return cls(tuple(delays), jitter=jitter)

    @property
    def attempts(self) -> int:
        """How many attempts in all, the first included."""
        return len(self.delays)

    @property
    def span(self) -> float:
        """Seconds from the message's creation to its last attempt, without jitter."""
        return sum(self.delays)

    def bounds(self, index: int) -> tuple[float, float]:
        """The range the delay before attempt ``index`` (0-based) is drawn from."""
        nominal = self.delays[index]
        return nominal * (1 - self.jitter), nominal

    def delay(self, index: int, rng: Callable[[], float] = random.random) -> float:
        """The delay before attempt ``index`` (0-based), jittered with ``rng`` (in [0, 1))."""
        low, high = self.bounds(index)
        if low == high:
            return high
        draw = min(max(float(rng()), 0.0), 1.0)
        return high - (high - low) * draw
