"""What the faces tell the metrics after each decision: `DecisionObserver`.

`Tollway(..., observer=obs)` calls ``obs(decision, seconds)`` after each `acquire`. The
observer only counts, in plain dicts under one lock (a prometheus-client child per call
would cost several times as much); the collectors read a snapshot at scrape time. Labels
come from the policy (plans, operations, limits: bounded); subjects are kept only in a
Space-Saving summary (`tollway.metrics.topn`), so memory stays bounded however many pass.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tollway.errors import InvalidArgumentError
from tollway.metrics.topn import TopN, Tracked

if TYPE_CHECKING:
    from tollway.engine.decision import Decision

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""Seconds: an acquire on local Redis takes about 0.1 ms, one that waits for a dead store's
timeout about its ``timeout_ms``."""

TRACK_FACTOR = 4
"""Subjects kept after an eviction per subject reported (up to twice as many are counted):
the slack that keeps the reported ones right."""

MAX_TOP = 1000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The observer's counts at one instant (copies: the scrape reads them unlocked)."""

    decisions: dict[tuple[str, str, str], int]
    """(plan, operation, outcome) -> decisions; outcome: allowed, denied or degraded."""
    denials: dict[tuple[str, str, str], int]
    """(plan, operation, limit) -> denied decisions that limit took part in."""
    degraded: dict[tuple[str, str, str], int]
    """(plan, operation, verdict) -> degraded decisions; verdict: allowed or denied."""
    buckets: tuple[int, ...]
    """Per bound of `DecisionObserver.bounds` (then +Inf): calls at or under it, not
    cumulative."""
    latency_sum: float
    top: list[Tracked[Decision]]
    seen: int
    """Decisions fed to the top-N summary (every observed one)."""


class DecisionObserver:
    """Counts decisions; ``top``: how many of the busiest subjects get series of their own."""

    def __init__(self, *, top: int = 20, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
            raise InvalidArgumentError(f"top: {top!r}; expected an integer from 0 to {MAX_TOP}")
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(b <= 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise InvalidArgumentError(
                f"buckets: {list(buckets)!r}; expected increasing positive seconds"
            )
        self.top_n = top
        self.bounds = bounds
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, str, str], int] = {}
        self._denials: dict[tuple[str, str, str], int] = {}
        self._degraded: dict[tuple[str, str, str], int] = {}
        self._buckets = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._top: TopN[Decision] = TopN(max(1, top * TRACK_FACTOR))

    def __call__(self, decision: Decision, seconds: float) -> None:
        step = decision.step  # one property read; the rest are its slots
        plan, operation = step.plan or "", step.operation
        allowed = decision.allowed
        if decision.degraded:
            outcome = "degraded"
        else:
            outcome = "allowed" if allowed else "denied"
        key = (plan, operation, outcome)
        slot = bisect_left(self.bounds, seconds)
        with self._lock:
            decisions = self._decisions
            decisions[key] = decisions.get(key, 0) + 1
            self._buckets[slot] += 1
            self._sum += seconds
            if self.top_n:
                self._top.hit(step.subject, decision)
            if allowed and outcome != "degraded":
                return
            if outcome == "degraded":
                verdict = (plan, operation, "allowed" if allowed else "denied")
                self._degraded[verdict] = self._degraded.get(verdict, 0) + 1
            else:
                for limit in decision.violated:
                    which = (plan, operation, limit)
                    self._denials[which] = self._denials.get(which, 0) + 1

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                decisions=dict(self._decisions),
                denials=dict(self._denials),
                degraded=dict(self._degraded),
                buckets=tuple(self._buckets),
                latency_sum=self._sum,
                top=self._top.top(self.top_n) if self.top_n else [],
                seen=self._top.total,
            )
