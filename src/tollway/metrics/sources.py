"""Reads done at scrape time (a ledger query, a provider's standing on Redis), each bounded.

Every source runs in a worker thread of its own; a scrape starts them all, then waits for
them together until one deadline. A source that did not finish in time (or failed) gives no
series that scrape, only ``tollway_metrics_source_up{source} 0``: a slow ledger makes the
scrape late by the bound at most, never by the query. A read still running is not started
again; the next scrape takes its result if it has come by then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("tollway.metrics")

Families = list[Any]
"""prometheus-client metric families (``Metric`` objects), built by the source's read."""


@dataclass(slots=True)
class Source:
    name: str
    read: Callable[[], Families]
    pool: ThreadPoolExecutor = field(init=False)
    running: Future[Families] | None = None
    seconds: float = 0.0
    failures: int = 0

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"tollway-metrics-{self.name}")

    def start(self) -> Future[Families]:
        if self.running is None:
            self.running = self.pool.submit(self._timed)
        return self.running

    def _timed(self) -> Families:
        started = time.perf_counter()
        try:
            return self.read()
        finally:
            self.seconds = time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class Outcome:
    source: Source
    families: Families | None
    """None: not in time, or failed."""


class Sources:
    """The scrape-time sources of one `Metrics`."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._sources: dict[str, Source] = {}
        self._lock = threading.Lock()

    def add(self, name: str, read: Callable[[], Families]) -> None:
        with self._lock:
            if name in self._sources:
                raise ValueError(f"source {name!r} is added already")
            self._sources[name] = Source(name, read)

    def __bool__(self) -> bool:
        return bool(self._sources)

    def read_all(self) -> Iterator[Outcome]:
        """Start every source, wait until the deadline, then each one's families (or None)."""
        with self._lock:
            sources = list(self._sources.values())
        futures = [source.start() for source in sources]
        wait_all(futures, timeout=self.timeout_s)
        for source, future in zip(sources, futures, strict=True):
            yield Outcome(source, _result(source, future))

    def close(self) -> None:
        with self._lock:
            sources, self._sources = list(self._sources.values()), {}
        for source in sources:
            source.pool.shutdown(wait=False, cancel_futures=True)


def _result(source: Source, future: Future[Families]) -> Families | None:
    if not future.done():
        return None  # still running: picked up by a later scrape
    source.running = None
    exc = future.exception()
    if exc is not None:
        source.failures += 1
        logger.warning("metrics source %s failed: %s", source.name, exc)
        return None
    return future.result()
