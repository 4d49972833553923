"""The busiest subjects in bounded memory: Space-Saving (Metwally, Agrawal and El Abbadi,
2005), with its evictions batched so that a hit costs one dict lookup in Python.

Up to ``2 * capacity`` subjects are counted. When one more arrives, the ``capacity`` highest
are kept and the rest evicted; ``floor`` becomes the highest count evicted so far, and a new
subject starts from it (its ``error``). So, as in Space-Saving, a count never underestimates
and overestimates by at most its ``error``, and a subject is evicted only when ``capacity``
others count at least as many. The work of an eviction (a sort of ``2 * capacity`` counts)
is spread over the ``capacity`` new subjects that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Tracked(Generic[V]):
    key: str
    count: int
    error: int
    """The count it started from (inherited from those evicted): an upper bound of the
    overestimate."""
    value: V


class _Entry(Generic[V]):
    __slots__ = ("count", "error", "value")

    def __init__(self, count: int, value: V) -> None:
        self.count = count
        self.error = count - 1
        self.value = value


class TopN(Generic[V]):
    """Counters keyed by subject, each with the latest value seen for it (not thread-safe:
    the observer holds its lock around it)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: {capacity!r}; expected at least 1")
        self.capacity = capacity
        self._entries: dict[str, _Entry[V]] = {}
        self.floor = 0
        self.total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def hit(self, key: str, value: V) -> None:
        self.total += 1
        entry = self._entries.get(key)
        if entry is not None:
            entry.count += 1
            entry.value = value
            return
        self._entries[key] = _Entry(self.floor + 1, value)
        if len(self._entries) > 2 * self.capacity:
            self._evict()

    def _evict(self) -> None:
        ranked = sorted(self._entries.items(), key=lambda kv: kv[1].count, reverse=True)
        kept, evicted = ranked[: self.capacity], ranked[self.capacity :]
        self.floor = max(self.floor, evicted[0][1].count)  # ranked: the first is the highest
        self._entries = dict(kept)

    def top(self, n: int) -> list[Tracked[V]]:
        """The ``n`` subjects with the highest counts, highest first (ties: by key)."""
        items = [Tracked(key, e.count, e.error, e.value) for key, e in self._entries.items()]
        items.sort(key=lambda t: (-t.count, t.key))
        return items[:n]
