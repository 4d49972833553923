"""The busiest subjects in bounded memory: the Space-Saving algorithm (Metwally, Agrawal and
El Abbadi, 2005) over a stream summary, so each hit costs O(1) however many subjects pass.

At most ``capacity`` subjects are tracked. A hit on an untracked subject when full takes the
place of one with the smallest count and inherits that count plus one: counts overestimate by
at most that inherited part (``error``), and any subject with more than total/capacity hits
is guaranteed to be tracked. Tracking a few times more subjects than are reported keeps the
reported ones right on skewed traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(slots=True)
class Tracked(Generic[V]):
    key: str
    count: int
    error: int
    """How much of ``count`` was inherited from the subject it replaced (an upper bound)."""
    value: V


class TopN(Generic[V]):
    """Space-Saving counters keyed by subject, each with the latest value seen for it (not
    thread-safe: the observer holds its lock around it)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: {capacity!r}; expected at least 1")
        self.capacity = capacity
        self._items: dict[str, Tracked[V]] = {}
        # count -> the keys with that count (dicts as ordered sets: the oldest goes first).
        self._buckets: dict[int, dict[str, None]] = {}
        self._min = 0
        self.total = 0

    def __len__(self) -> int:
        return len(self._items)

    def hit(self, key: str, value: V) -> None:
        self.total += 1
        item = self._items.get(key)
        if item is not None:
            self._move(item, item.count + 1)
            item.value = value
            return
        if len(self._items) < self.capacity:
            item = self._items[key] = Tracked(key, 0, 0, value)
            self._min = 1
            self._move(item, 1)
            return
        # Full: replace the oldest of the least counted.
        bucket = self._buckets[self._min]
        victim = self._items.pop(next(iter(bucket)))
        item = self._items[key] = Tracked(key, victim.count, victim.count, value)
        del bucket[victim.key]
        self._put(item, victim.count)
        self._move(item, victim.count + 1)

    def _put(self, item: Tracked[V], count: int) -> None:
        item.count = count
        self._buckets.setdefault(count, {})[item.key] = None

    def _move(self, item: Tracked[V], count: int) -> None:
        old = item.count
        if old:
            bucket = self._buckets[old]
            del bucket[item.key]
            if not bucket:
                del self._buckets[old]
                if self._min == old:
                    self._min = count  # counts only grow by one: the next bucket up
        self._put(item, count)

    def top(self, n: int) -> list[Tracked[V]]:
        """The ``n`` subjects with the highest counts, highest first (ties: by key)."""
        items = sorted(self._items.values(), key=lambda t: (-t.count, t.key))
        return items[:n]
