"""The embedded store: the same atomic step as the Redis script, in process memory.

One lock makes every step atomic across threads; a step never awaits, so it is atomic across
asyncio tasks too. Memory stays bounded without a thread per key: every counter is pushed once
on a heap by the time it may be dropped, and each step first pops what has expired.
"""

from __future__ import annotations

import heapq
import threading
import uuid
from collections.abc import Callable

from tollway.engine.rules import RATE
from tollway.engine.step import DENIED, OK, PEEK, PLAN_MISMATCH, RESERVE, STALE_WINDOW, Reply, Step
from tollway.stores.settle import Hold, SettleStep, hold_of

# How long a window's counter outlives the window (for late refunds and inspection).
RETENTION_US = 3600 * 1_000_000


class MemoryStore:
    """Counters, plan assignments and reservation holds in one process."""

    url = "memory://"

    def __init__(self, clock: Callable[[], int]) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, dict[str, int]] = {}
        self._plans: dict[str, str] = {}
        self._holds: dict[str, Hold] = {}
        # (drop-at, subject, key) for counters; (expires-at, "", hold id) for holds.
        self._expiry: list[tuple[int, str, str]] = []

    # -- the atomic step --------------------------------------------------------------------

    def execute(self, step: Step) -> Reply:
        with self._lock:
            now = self.clock()
            if self._expiry and self._expiry[0][0] <= now:
                self._sweep(now)
            subject = step.subject
            plan = self._plans.get(subject)
            if plan != step.assigned:
                return Reply(PLAN_MISMATCH, now, [], 0, plan)
            for window in step.windows:
                if window is not None and not window[0] <= now < window[1]:
                    return Reply(STALE_WINDOW, now, [])
            counters = self._counters.get(subject)
            if counters is None:
                counters = self._counters[subject] = {}
            rules, costs, keys = step.rules, step.costs, step.keys
            values = [counters.get(key, 0) for key in keys]
            after = values.copy()
            misfits = 0
            denied = False
            for i, rule in enumerate(rules):
                if rule.kind == RATE:
                    tat = values[i] if values[i] > now else now
                    new = tat + costs[i] * rule.emission_us
                    fit = new - now <= rule.capacity_us
                else:
                    new = values[i] + costs[i]
                    fit = new <= rule.hard
                if fit:
                    after[i] = new
                else:
                    misfits |= 1 << i
                    if not rule.shadow:
                        denied = True
            if step.mode == PEEK:
                return Reply(OK, now, values, misfits)
            if denied:
                return Reply(DENIED, now, values, misfits)
            expiry = self._expiry
            for i, rule in enumerate(rules):
                if (misfits >> i) & 1:
                    after[i] = values[i]
                    continue
                key = keys[i]
                if key not in counters:
                    if rule.kind == RATE:
                        heapq.heappush(expiry, (after[i], subject, key))
                    else:
                        window = step.windows[i]
                        assert window is not None
                        heapq.heappush(expiry, (window[1] + RETENTION_US, subject, key))
                counters[key] = after[i]
            if step.mode == RESERVE:
                self._hold(step, now, misfits)
            return Reply(OK, now, after, misfits)

    def _hold(self, step: Step, now: int, misfits: int) -> None:
        hold = hold_of(step, misfits, now + step.hold_ttl_us)
        self._holds[hold.id] = hold
        heapq.heappush(self._expiry, (hold.expires_us, "", hold.id))

    def _sweep(self, now: int) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, subject, key = heapq.heappop(expiry)
            if not subject:
                hold = self._holds.pop(key, None)
                if hold is not None:
                    self._refund(hold, now)
                continue
            counters = self._counters.get(subject)
            if counters is None or key not in counters:
                continue
            if key.startswith("r:") and counters[key] > now:
                heapq.heappush(expiry, (counters[key], subject, key))  # the TAT moved on
                continue
            del counters[key]
            if not counters:
                del self._counters[subject]

    def _refund(self, hold: Hold, now: int) -> None:
        self._adjust(hold, [-amount for _, _, amount in hold.entries], now)

    def _adjust(self, hold: Hold, deltas: list[int], now: int) -> None:
        counters = self._counters.setdefault(hold.subject, {})
        for (key, is_rate, _), delta in zip(hold.entries, deltas):
            if key not in counters and delta <= 0:
                continue  # the counter is gone: nothing left to give back
            value = counters.get(key, 0)
            if is_rate:
                value = max(value, now) + delta if delta > 0 else value + delta
                if value <= now:
                    counters.pop(key, None)
                    continue
                heapq.heappush(self._expiry, (value, hold.subject, key))
            else:
                value = max(0, value + delta)
                if key not in counters:
                    heapq.heappush(self._expiry, (now + RETENTION_US, hold.subject, key))
            counters[key] = value

    # -- settling reservations --------------------------------------------------------------

    def settle(self, settle: SettleStep) -> Reply:
        with self._lock:
            now = self.clock()
            if self._expiry and self._expiry[0][0] <= now:
                self._sweep(now)
            hold = self._holds.pop(settle.hold.id, None)
            live = hold is not None
            deltas = settle.deltas if live else settle.late_deltas
            self._adjust(settle.hold, deltas, now)
            counters = self._counters.get(settle.hold.subject, {})
            values = [counters.get(key, 0) for key, _, _ in settle.hold.entries]
            return Reply(OK if live else DENIED, now, values)

    # -- administration ---------------------------------------------------------------------

    def assign(self, subject: str, plan: str | None) -> None:
        with self._lock:
            if plan is None:
                self._plans.pop(subject, None)
            else:
                self._plans[subject] = plan

    def assigned(self, subject: str) -> str | None:
        with self._lock:
            return self._plans.get(subject)

    def delete(self, subject: str, keys: list[str]) -> int:
        with self._lock:
            counters = self._counters.get(subject, {})
            return sum(counters.pop(key, None) is not None for key in keys)

    def new_hold_id(self) -> str:
        return uuid.uuid4().hex

    def size(self) -> int:
        """Counters and holds held now (for tests of bounded memory)."""
        with self._lock:
            return sum(len(c) for c in self._counters.values()) + len(self._holds)

    def close(self) -> None:
        pass
