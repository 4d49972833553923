"""Calls in flight, written down before the provider is asked: the guard against paying twice.

A geocoder marks an address before it calls a provider and clears the mark once the answer
is in the result cache (or the call failed, unbilled). A process killed in between leaves
the mark: the provider may have billed that call, so the next run does not call it again on
its own; it reports the address as interrupted (``retry_interrupted`` calls it again).

The marks live in their own table of the result cache's SQLite file (WAL, a busy timeout,
one short statement per call), so every process on the machine sees them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tollway.outbound.geocode.cache import CacheError

__all__ = ["Interrupted", "PendingCalls"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tollway_pending (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    provider TEXT NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (namespace, key)
)
"""


@dataclass(frozen=True, slots=True)
class Interrupted:
    """An address whose call was in flight when its process stopped."""

    key: str
    provider: str
    started_at: float


class PendingCalls:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise CacheError(f"{self.path}: cannot keep in-flight calls there: {exc}") from None

    def _run(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise CacheError(f"{self.path}: in-flight calls: {exc}") from None

    def mark(self, namespace: str, key: str, provider: str) -> None:
        self._run(
            "INSERT OR REPLACE INTO tollway_pending VALUES (?, ?, ?, ?)",
            (namespace, key, provider, self._clock()),
        )

    def clear(self, namespace: str, key: str) -> None:
        self._run("DELETE FROM tollway_pending WHERE namespace = ? AND key = ?", (namespace, key))

    def get(self, namespace: str, key: str) -> Interrupted | None:
        rows = self._run(
            "SELECT provider, started_at FROM tollway_pending WHERE namespace = ? AND key = ?",
            (namespace, key),
        )
        if not rows:
            return None
        provider, started = rows[0]
        return Interrupted(key, str(provider), float(started))  # type: ignore[arg-type]

    def all(self, namespace: str) -> list[Interrupted]:
        rows = self._run(
            "SELECT key, provider, started_at FROM tollway_pending WHERE namespace = ? "
            "ORDER BY started_at",
            (namespace,),
        )
        return [Interrupted(str(k), str(p), float(t)) for k, p, t in rows]  # type: ignore[arg-type]

    def count(self) -> int:
        """Marks left, in every namespace."""
        (count,) = self._run("SELECT COUNT(*) FROM tollway_pending", ())[0]
        assert isinstance(count, int)
        return count

    def close(self) -> None:
        with self._lock:
            self._conn.close()
