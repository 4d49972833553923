"""`Route` and `AsyncRoute`: pick a provider with headroom, hold its limits, fail over.

::

    route = tw.route("geocoding")
    with route.call() as call:               # reserves on every limit of the first provider
        result = geocoders[call.provider](address)   # that can take it (health gates too)
        call.commit(cost=1)                  # the actual cost; release() if not billed
    outcome = route.run(lambda provider: geocoders[provider](address))

One step per provider tried (its health gates and every limit at once), and the call is
taken then: committed at what it took, it needs no second step, so the common case is one
round trip. A release gives it back (one more step); a different cost settles the difference.
A call whose process dies stays counted, as it may have been billed. A provider's answer (a
`Signal`) writes its health only when there is something to write.

The logic is `tollway.outbound.routing` (what a route decides) and `tollway.outbound.flows`
(the flows); the classes here only drive them, through the client's `Driver`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from tollway.engine.decision import Decision
from tollway.outbound import flows
from tollway.outbound.flows import Classify
from tollway.outbound.routing import AlertSink, Outcome, RouteCore
from tollway.outbound.signals import Signal

if TYPE_CHECKING:
    import random

    from tollway.driver import AsyncDriver, Driver

__all__ = ["AsyncCall", "AsyncRoute", "Call", "Classify", "Route"]

T = TypeVar("T")
D = TypeVar("D", "Driver", "AsyncDriver")
D_co = TypeVar("D_co", covariant=True)


class _Client(Protocol[D_co]):
    """A `Tollway` or an `AsyncTollway`: what a route needs of it is its driver."""

    @property
    def driver(self) -> D_co: ...


class _CallBase(Generic[D]):
    def __init__(self, driver: D, core: RouteCore, chosen: flows.Chosen) -> None:
        provider, held, skipped = chosen
        self._driver: D = driver
        self._route = core
        self._held = held
        self.provider = provider
        """The provider this call goes to."""
        self.skipped = skipped
        """The providers passed over before this one, each with its reason."""
        self.probe = core.is_probe(held.decision)
        """Whether this call is the half-open probe of the provider's circuit breaker."""

    @property
    def decision(self) -> Decision:
        """The reservation's decision: every limit of the provider, as held."""
        return self._held.decision

    @property
    def settled(self) -> bool:
        return self._held.settled

    def __repr__(self) -> str:
        return f"<Call {self.provider!r} skipped={[s.provider for s in self.skipped]}>"


class Call(_CallBase["Driver"]):
    """One call held on one provider. As a context manager: an exception releases it (and a
    `ProviderCallError` reports its signal, committing instead when the signal says the call
    may have been billed); leaving it unsettled commits the reservation."""

    def commit(
        self,
        cost: int | None = None,
        *,
        amount: Decimal | None = None,
        signal: Signal | None = None,
    ) -> Decision:
        """Record the actual cost (default: what was reserved) and what the provider said."""
        args = (self._route, self.provider, self._held, self.probe)
        return self._driver.run(flows.commit(*args, cost, amount, signal))

    def release(self, signal: Signal | None = None) -> None:
        """Give the reservation back (the call was not billed); ``signal`` says why."""
        args = (self._route, self.provider, self._held, self.probe)
        self._driver.run(flows.release(*args, signal))

    def report(self, signal: Signal, decision: Decision | None = None) -> None:
        """Write what ``signal`` says about the provider's health (cooldown, exhaustion...)."""
        args = (self._route, self.provider, signal, decision or self.decision, self.probe)
        self._driver.run(flows.report(*args))

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.settled:
            args = (self._route, self.provider, self._held, self.probe)
            self._driver.run(flows.settle_on_exit(*args, exc))


class AsyncCall(_CallBase["AsyncDriver"]):
    """`Call`, asyncio face."""

    async def commit(
        self,
        cost: int | None = None,
        *,
        amount: Decimal | None = None,
        signal: Signal | None = None,
    ) -> Decision:
        args = (self._route, self.provider, self._held, self.probe)
        return await self._driver.run(flows.commit(*args, cost, amount, signal))

    async def release(self, signal: Signal | None = None) -> None:
        args = (self._route, self.provider, self._held, self.probe)
        await self._driver.run(flows.release(*args, signal))

    async def report(self, signal: Signal, decision: Decision | None = None) -> None:
        args = (self._route, self.provider, signal, decision or self.decision, self.probe)
        await self._driver.run(flows.report(*args))

    async def __aenter__(self) -> AsyncCall:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.settled:
            args = (self._route, self.provider, self._held, self.probe)
            await self._driver.run(flows.settle_on_exit(*args, exc))


class _RouteBase(Generic[D]):
    def __init__(
        self,
        tollway: _Client[D],
        name: str,
        *,
        on_threshold: AlertSink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._driver: D = tollway.driver
        engine = self._driver.engine
        self.core = RouteCore(engine, name, on_threshold=on_threshold, rng=rng)

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def providers(self) -> tuple[str, ...]:
        return self.core.route.providers


class Route(_RouteBase["Driver"]):
    """A route of the policy, for threads; get one with `Tollway.route`."""

    def call(
        self, cost: int | None = None, *, amount: Decimal | None = None, exclude: Iterable[str] = ()
    ) -> Call:
        """Reserve ``cost`` units (default 1) on the first provider, in the route's order,
        whose health gates and limits all have room; `NoProviderAvailable` if none has."""
        chosen = self._driver.run(flows.choose(self.core, cost, amount, exclude))
        return Call(self._driver, self.core, chosen)

    def run(
        self,
        fn: Callable[[str], T],
        *,
        cost: int | None = None,
        amount: Decimal | None = None,
        retries: int | None = None,
        classify: Classify | None = None,
        signal_of: Callable[[T], Signal | None] | None = None,
    ) -> Outcome:
        """Call ``fn(provider)`` on the first provider that can take it; when it raises a
        provider failure (a `ProviderCallError`, or what ``classify`` maps to a `Signal`),
        release, record the signal, and try the next provider, up to ``retries`` more times
        (default: each provider once). Other exceptions release and propagate.
        ``signal_of(value)`` may say what a successful answer tells of the provider (say,
        how many calls it has left); the call is committed with it."""
        flow = flows.run(self.core, fn, cost, amount, retries, classify, signal_of)
        return self._driver.run(flow)

    def status(self) -> dict[str, Decision]:
        """Where each provider stands now (its gates and limits), consuming nothing."""
        return self._driver.run(flows.status(self.core))

    def clear(self, provider: str) -> None:
        """Open every health gate of ``provider`` (after fixing its key, say)."""
        self._driver.run(flows.clear(self.core, provider))


class AsyncRoute(_RouteBase["AsyncDriver"]):
    """A route of the policy, for asyncio; get one with `AsyncTollway.route`."""

    async def call(
        self, cost: int | None = None, *, amount: Decimal | None = None, exclude: Iterable[str] = ()
    ) -> AsyncCall:
        """See `Route.call`."""
        chosen = await self._driver.run(flows.choose(self.core, cost, amount, exclude))
        return AsyncCall(self._driver, self.core, chosen)

    async def run(
        self,
        fn: Callable[[str], Awaitable[T]],
        *,
        cost: int | None = None,
        amount: Decimal | None = None,
        retries: int | None = None,
        classify: Classify | None = None,
        signal_of: Callable[[T], Signal | None] | None = None,
    ) -> Outcome:
        """See `Route.run` (``fn`` is awaited)."""
        flow = flows.run(self.core, fn, cost, amount, retries, classify, signal_of)
        return await self._driver.run(flow)

    async def status(self) -> dict[str, Decision]:
        return await self._driver.run(flows.status(self.core))

    async def clear(self, provider: str) -> None:
        await self._driver.run(flows.clear(self.core, provider))
