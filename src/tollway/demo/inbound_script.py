"""The inbound demo's script: every call of the simulated day, from one seeded generator.

Subjects take roles in turn (light, heavy, upgrader, spender, light-2, ...); each role is a
traffic shape over the day's 24 hours (`PROFILE`), with bursts, reservations and a plan change.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tollway.clock import US
from tollway.errors import ConfigurationError

__all__ = ["HOUR", "MAX_SUBJECTS", "ROLES", "UPGRADE_AT", "Call", "script", "subject_names"]

HOUR = 3600 * US
MS = 1000
ROLES = ("light", "heavy", "upgrader", "spender")
"""Subjects take these roles in turn; the first four cover every scenario."""
MAX_SUBJECTS = 40
UPGRADE_AT = 12 * HOUR

# Share of a subject's peak traffic in each UTC hour of the day.
PROFILE = (
    0.05, 0.03, 0.02, 0.02, 0.03, 0.05, 0.10, 0.25, 0.55, 0.80, 0.95, 1.00,
    0.90, 0.95, 1.00, 0.95, 0.85, 0.70, 0.50, 0.35, 0.25, 0.15, 0.10, 0.07,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Call:
    """One scripted event: an acquire, a reservation, its commit, or a plan change."""

    at: int
    """Microseconds since the start of the day."""
    order: int
    subject: str
    action: str
    """``acquire``, ``reserve``, ``commit`` or ``assign``."""
    operation: str = ""
    units: int = 0
    """For ``commit``: the actual cost, in units."""
    plan: str = ""
    """For ``assign``: the new plan."""
    ref: int = 0
    """Links a ``commit`` to its ``reserve``."""


def subject_names(count: int) -> list[tuple[str, str]]:
    """``(name, role)`` of each subject: light, heavy, upgrader, spender, light-2, ..."""
    if not 1 <= count <= MAX_SUBJECTS:
        raise ConfigurationError(f"subjects: {count} is out of range; expected 1 to {MAX_SUBJECTS}")
    out = []
    for i in range(count):
        role = ROLES[i % len(ROLES)]
        rank = i // len(ROLES) + 1
        out.append((role if rank == 1 else f"{role}-{rank}", role))
    return out


class _Script:
    """Builds every call of the day from one seeded random generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.calls: list[Call] = []
        self._refs = 0

    def add(
        self,
        at: int,
        subject: str,
        action: str,
        operation: str = "",
        *,
        units: int = 0,
        plan: str = "",
        ref: int = 0,
    ) -> None:
        self.calls.append(Call(at, len(self.calls), subject, action, operation, units, plan, ref))

    def scaled(self, hour: int, peak: float) -> int:
        return round(PROFILE[hour] * peak * self.rng.uniform(0.7, 1.3))

    def scattered(self, subject: str, hour: int, count: int, search_share: float) -> None:
        """``count`` single calls at random instants of the hour."""
        rng = self.rng
        for _ in range(count):
            op = "search" if rng.random() < search_share else "geocode"
            self.add(hour * HOUR + rng.randrange(HOUR), subject, "acquire", op)

    def burst(self, subject: str, at: int, count: int, gap_us: int, op: str = "geocode") -> None:
        """``count`` calls ``gap_us`` apart: a client firing as fast as it can."""
        for i in range(count):
            self.add(at + i * gap_us, subject, "acquire", op)

    def light(self, subject: str) -> None:
        """A well-behaved free app: a few dozen calls an hour, never near a limit."""
        for hour in range(24):
            self.scattered(subject, hour, self.scaled(hour, 30), 0.15)

    def heavy(self, subject: str) -> None:
        """A free account running a scraper: steady batches under the rate but far over the
        hourly quota, plus bursts fired all at once."""
        rng = self.rng
        for hour in range(24):
            if hour != 2 and PROFILE[hour] < 0.5:
                continue
            start = hour * HOUR + rng.randrange(45 * 60 * US)
            self.burst(subject, start, rng.randint(150, 260), 250 * MS)  # 4/s, under 5/s
            for _ in range(rng.randint(1, 3)):
                at = hour * HOUR + rng.randrange(HOUR - 60 * US)
                self.burst(subject, at, rng.randint(15, 30), 10 * MS)

    def upgrader(self, subject: str) -> None:
        """A growing free app: busy mornings on free, moved to pro at noon, much busier after."""
        rng = self.rng
        self.burst(subject, 7 * HOUR + rng.randrange(HOUR // 2), 110, 300 * MS)
        for hour in range(12):
            self.scattered(subject, hour, self.scaled(hour, 140), 0.0)
            if hour >= 7:
                for _ in range(2):
                    at = hour * HOUR + rng.randrange(HOUR - 60 * US)
                    self.burst(subject, at, rng.randint(8, 14), 30 * MS)
        self.add(UPGRADE_AT, subject, "assign", plan="pro")
        for hour in range(12, 24):
            self.scattered(subject, hour, self.scaled(hour, 600), 0.3)
            at = hour * HOUR + rng.randrange(HOUR - 60 * US)
            self.burst(subject, at, rng.randint(80, 200), 2 * MS)

    def spender(self, subject: str) -> None:
        """A pro account: steady traffic, and ``enrich`` calls held by reservations at their
        estimate and committed at what they really cost, until the daily budget runs out."""
        rng = self.rng
        for hour in range(24):
            self.scattered(subject, hour, self.scaled(hour, 400), 0.25)
            if 7 <= hour <= 22:
                for _ in range(round(PROFILE[hour] * 6 + rng.random())):
                    at = hour * HOUR + rng.randrange(HOUR - 60 * US)
                    self._refs += 1
                    self.add(at, subject, "reserve", "enrich", ref=self._refs)
                    done = at + rng.randrange(1 * US, 8 * US)
                    self.add(
                        done, subject, "commit", "enrich", units=rng.randint(5, 20), ref=self._refs
                    )
        self.burst(subject, 16 * HOUR + rng.randrange(HOUR - 60 * US), 160, 2 * MS)


def script(seed: int, subjects: list[tuple[str, str]]) -> list[Call]:
    """Every call of the day, in the order they happen."""
    builder = _Script(seed)
    for name, role in subjects:
        getattr(builder, role)(name)
    return sorted(builder.calls, key=lambda call: (call.at, call.order))
