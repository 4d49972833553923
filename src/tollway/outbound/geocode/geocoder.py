"""`Geocoder`: addresses through a route of providers, each address paid for at most once.

For one address: the result cache first (an answer, or a "nothing found", is never bought
twice); then one caller per address at a time (single flight); then the route picks a
provider with headroom on every limit, the address is marked in flight, the provider is
called through its adapter, the answer goes into the cache, the mark is cleared and the call
is committed with what the provider said. A provider failure releases the call (it was not
billed), records the provider's health and fails over to the next provider.

A process killed during a call leaves the mark: that address is reported ``interrupted``
rather than called again, since the provider may have billed it (``retry_interrupted=True``
calls it again).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from tollway.errors import ConfigurationError, NoProviderAvailable, TollwayError
from tollway.outbound.geocode.adapters import Answer, GeocodeAdapter
from tollway.outbound.geocode.answers import MAX_ANSWER_BYTES
from tollway.outbound.geocode.cache import ResultCache
from tollway.outbound.geocode.cells import query_problem
from tollway.outbound.geocode.from_policy import adapters_from_policy
from tollway.outbound.geocode.inflight import SingleFlight
from tollway.outbound.geocode.pending import PendingCalls
from tollway.outbound.geocode.result import GeocodeResult
from tollway.outbound.routing import AlertSink, Skip
from tollway.outbound.signals import Signal

if TYPE_CHECKING:
    from tollway.client import Tollway
    from tollway.engine.decision import Decision

__all__ = ["GeocodeOutcome", "Geocoder", "Status", "adapters_from_policy"]

Status = Literal["ok", "no_match", "failed", "interrupted", "invalid"]


@dataclass(frozen=True, slots=True)
class GeocodeOutcome:
    """What became of one address."""

    query: str
    status: Status
    result: GeocodeResult | None = None
    provider: str | None = None
    """Who answered (for a cached answer: who answered back then)."""
    from_cache: bool = False
    skipped: tuple[Skip, ...] = ()
    """Providers passed over for this address, and why."""
    error: str = ""
    decision: Decision | None = field(default=None, repr=False)
    """The committed decision of the paid call (None when nothing was paid)."""


class Geocoder:
    """Geocode through ``tw.route(route)``; thread-safe (share one across worker threads).
    ``max_answer_bytes``: the largest provider answer read, for the adapters built from the
    policy (when ``adapters`` is not given)."""

    def __init__(
        self,
        tollway: Tollway,
        route: str = "geocoding",
        *,
        adapters: Mapping[str, GeocodeAdapter] | None = None,
        cache: ResultCache | str | os.PathLike[str] = ":memory:",
        on_threshold: AlertSink | None = None,
        retry_interrupted: bool = False,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.route = tollway.route(route, on_threshold=on_threshold)
        providers = self.route.providers
        self.adapters = (
            dict(adapters)
            if adapters is not None
            else adapters_from_policy(tollway.policy, providers, max_answer_bytes=max_answer_bytes)
        )
        missing = [p for p in providers if p not in self.adapters]
        if missing:
            raise ConfigurationError(
                f"adapters: no adapter for {', '.join(missing)} of route {route!r}; expected "
                "one per provider of the route"
            )
        self._owns_cache = not isinstance(cache, ResultCache)
        self.cache = cache if isinstance(cache, ResultCache) else ResultCache(cache)
        self.pending = PendingCalls(self.cache.path)
        self.namespace = route
        self.retry_interrupted = retry_interrupted
        self._flight = SingleFlight()

    def geocode(self, query: str) -> GeocodeOutcome:
        """One address. Never raises for what the providers do; bad input is ``invalid``
        (an address with a NUL byte, or too long, is never sent)."""
        problem = query_problem(query) if isinstance(query, str) else None
        if problem is not None:
            return GeocodeOutcome(query, "invalid", error=problem)
        try:
            key = self.cache.key(query)
        except TollwayError as exc:
            return GeocodeOutcome(str(query), "invalid", error=str(exc))
        hit = self.cache.get(query, self.namespace)
        if hit is not None:
            return _cached(query, hit.result, hit.provider)
        led: list[bool] = []

        def lead() -> GeocodeOutcome:
            led.append(True)
            return self._fetch(query, key)

        outcome = self._flight.do(key, lead)
        if led:
            return outcome
        # Another caller bought this answer while we waited: ours cost nothing.
        bought = outcome.status in ("ok", "no_match")
        return replace(outcome, query=query, from_cache=bought, decision=None, skipped=())

    def _fetch(self, query: str, key: str) -> GeocodeOutcome:
        hit = self.cache.get(query, self.namespace)  # another caller may just have bought it
        if hit is not None:
            return _cached(query, hit.result, hit.provider)
        interrupted = self.pending.get(self.namespace, key)
        if interrupted is not None and not self.retry_interrupted:
            return GeocodeOutcome(
                query,
                "interrupted",
                provider=interrupted.provider,
                error=f"a call to {interrupted.provider} was in flight when an earlier run "
                "stopped; it may have been billed, so it is not made again (retry_interrupted)",
            )

        def call(provider: str) -> Answer:
            adapter = self.adapters[provider]
            self.pending.mark(self.namespace, key, provider)
            try:
                answer = adapter.lookup(query)
            except BaseException:
                self.pending.clear(self.namespace, key)  # failed: not billed
                raise
            self.cache.put(
                query,
                answer.result,
                provider=provider,
                namespace=self.namespace,
                stores_results=adapter.stores_results,
            )
            self.pending.clear(self.namespace, key)
            return answer

        try:
            outcome = self.route.run(call, signal_of=_signal)
        except NoProviderAvailable as exc:
            return GeocodeOutcome(query, "failed", skipped=exc.skipped, error=str(exc))
        answer = outcome.value
        assert isinstance(answer, Answer)
        return GeocodeOutcome(
            query,
            "ok" if answer.result is not None else "no_match",
            answer.result,
            outcome.provider,
            skipped=outcome.skipped,
            decision=outcome.decision,
        )

    def close(self) -> None:
        self.pending.close()
        if self._owns_cache:
            self.cache.close()

    def __enter__(self) -> Geocoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signal(answer: Answer) -> Signal:
    return answer.signal


def _cached(query: str, result: GeocodeResult | None, provider: str) -> GeocodeOutcome:
    status: Status = "ok" if result is not None else "no_match"
    return GeocodeOutcome(query, status, result, provider, from_cache=True)
