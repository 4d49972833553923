"""`CachedLookup`: a `ResultCache` in front of a fetch function, with in-flight de-duplication
(`tollway.outbound.geocode.inflight`): among the threads, or the tasks, of one process asking
for the same address at once, only one fetches, and its answer is stored on the way."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from tollway.errors import InvalidArgumentError
from tollway.outbound.geocode.cache import ResultCache, check_namespace, check_ttl
from tollway.outbound.geocode.inflight import AsyncSingleFlight, SingleFlight
from tollway.outbound.geocode.result import GeocodeResult

__all__ = ["CachedLookup", "Fetched", "LookupResult"]

Fetched = tuple[GeocodeResult | None, str, bool]
"""What a fetch function returns: ``(result or None for no match, provider, stores_results)``."""


class LookupResult(NamedTuple):
    """What `CachedLookup` answers: the result (None: no match) and where it came from."""

    result: GeocodeResult | None
    from_cache: bool
    """True when no fetch was made for it (this call, or one it waited for)."""


def _check_fetched(fetched: object) -> Fetched:
    if not (isinstance(fetched, tuple) and len(fetched) == 3):
        raise InvalidArgumentError(
            f"fetch returned {fetched!r}; expected a tuple (result or None, provider, "
            "stores_results)"
        )
    return fetched  # put() checks each field


class CachedLookup:
    """A `ResultCache` in front of a fetch function, with in-flight de-duplication.

    ``lookup(query, fetch)``: a cache hit makes no fetch; on a miss the fetch runs once per
    normalized key however many threads ask at once (the others wait for it), and its answer
    is stored (unless the provider forbids it). ``alookup`` is the same for asyncio tasks;
    the two do not share their in-flight calls. ``fetch`` receives the query as the caller
    wrote it and returns ``(result or None, provider, stores_results)``.
    """

    def __init__(
        self, cache: ResultCache, *, namespace: str = "", ttl_s: float | None = None
    ) -> None:
        if not isinstance(cache, ResultCache):
            raise InvalidArgumentError(f"cache: {cache!r}; expected a ResultCache")
        self.cache = cache
        self.namespace = check_namespace(namespace)
        self.ttl_s = check_ttl(ttl_s)
        self.flight = SingleFlight()
        self.async_flight = AsyncSingleFlight()
        self._lock = threading.Lock()
        self._fetches = 0

    @property
    def fetches(self) -> int:
        """How many times a fetch function was called (each one may have been paid for)."""
        return self._fetches

    def _counted(self) -> None:
        with self._lock:
            self._fetches += 1

    def _store(self, query: str, fetched: object) -> LookupResult:
        result, provider, stores = _check_fetched(fetched)
        self.cache.put(
            query,
            result,
            provider=provider,
            namespace=self.namespace,
            stores_results=stores,
            ttl_s=self.ttl_s,
        )
        return LookupResult(result, False)

    def _recheck(self, key: str) -> LookupResult | None:
        # Between our miss and our turn to lead, another thread (or process) may have
        # fetched and stored it.
        hit = self.cache.read(key, self.namespace)
        return None if hit is None else LookupResult(hit.result, True)

    def lookup(self, query: str, fetch: Callable[[str], Fetched]) -> LookupResult:
        """The cached answer for ``query``, or ``fetch(query)``'s, stored on the way."""
        key = self.cache.key(query)
        hit = self.cache.get(query, self.namespace)
        if hit is not None:
            return LookupResult(hit.result, True)

        def run() -> LookupResult:
            again = self._recheck(key)
            if again is not None:
                return again
            self._counted()
            return self._store(query, fetch(query))

        return self.flight.do((self.namespace, key), run)

    async def alookup(self, query: str, fetch: Callable[[str], Awaitable[Fetched]]) -> LookupResult:
        """`lookup` for asyncio; the SQLite calls run in a worker thread (a busy file must not
        stall the event loop)."""
        key = self.cache.key(query)
        hit = await asyncio.to_thread(self.cache.get, query, self.namespace)
        if hit is not None:
            return LookupResult(hit.result, True)

        async def run() -> LookupResult:
            again = await asyncio.to_thread(self._recheck, key)
            if again is not None:
                return again
            self._counted()
            fetched: Any = await fetch(query)
            return await asyncio.to_thread(self._store, query, fetched)

        return await self.async_flight.do((self.namespace, key), run)
