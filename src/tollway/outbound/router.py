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
`Signal`) writes its health only when there is something to write. Both faces share
`RouteCore` and the generator flows below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from tollway.engine.decision import Decision
from tollway.engine.health import CLEAR, HealthOp
from tollway.engine.step import ACQUIRE, PEEK, provider_subject
from tollway.errors import NoProviderAvailable, StoreError
from tollway.money import micros_to_decimal
from tollway.outbound.routing import AlertSink, Outcome, RouteCore, Skip, logger
from tollway.outbound.signals import ProviderCallError, Signal
from tollway.reservation import AsyncReservation, Reservation

if TYPE_CHECKING:
    import random

    from tollway.client import AsyncTollway, Tollway

__all__ = ["AsyncCall", "AsyncRoute", "Call", "Classify", "Route"]

T = TypeVar("T")
Classify = Callable[[BaseException], "Signal | None"]
"""Maps an exception raised by a call to what it says about the provider (None: it is not
the provider's failure, so it propagates)."""


_OK = Signal.ok()


def _signal_of(exc: BaseException, classify: Classify | None) -> Signal | None:
    if classify is not None:
        return classify(exc)
    return exc.signal if isinstance(exc, ProviderCallError) else None


class _CallBase:
    _reservation: Reservation | AsyncReservation

    def __init__(self, provider: str, skipped: tuple[Skip, ...], probe: bool) -> None:
        self.provider = provider
        """The provider this call goes to."""
        self.skipped = skipped
        """The providers passed over before this one, each with its reason."""
        self.probe = probe
        """Whether this call is the half-open probe of the provider's circuit breaker."""

    @property
    def decision(self) -> Decision:
        """The reservation's decision: every limit of the provider, as held."""
        return self._reservation.decision

    @property
    def settled(self) -> bool:
        return self._reservation.settled

    def __repr__(self) -> str:
        return f"<Call {self.provider!r} skipped={[s.provider for s in self.skipped]}>"


class Call(_CallBase):
    """One call held on one provider. As a context manager: an exception releases it (and a
    `ProviderCallError` reports its signal, committing instead when the signal says the call
    may have been billed); leaving it unsettled commits the reservation."""

    def __init__(
        self,
        route: Route,
        provider: str,
        reservation: Reservation,
        skipped: tuple[Skip, ...],
        probe: bool,
    ) -> None:
        super().__init__(provider, skipped, probe)
        self._reservation: Reservation = reservation
        self._route = route

    def commit(
        self,
        cost: int | None = None,
        *,
        amount: Decimal | None = None,
        signal: Signal | None = None,
    ) -> Decision:
        """Record the actual cost (default: what was reserved) and what the provider said."""
        decision = self._reservation.commit(cost, amount=self._route._tiered(self, cost, amount))
        self.report(signal or _OK, decision)
        return decision

    def release(self, signal: Signal | None = None) -> None:
        """Give the reservation back (the call was not billed); ``signal`` says why."""
        self._reservation.release()
        if signal is not None:
            self.report(signal)

    def report(self, signal: Signal, decision: Decision | None = None) -> None:
        """Write what ``signal`` says about the provider's health (cooldown, exhaustion...)."""
        self._route._report(self.provider, signal, decision or self.decision, self.probe)

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        signal = None if exc is None else _signal_of(exc, None)
        if exc is None or (signal is not None and signal.billed):
            self.commit(signal=signal)
        else:
            self.release(signal)


class AsyncCall(_CallBase):
    """`Call`, asyncio face."""

    def __init__(
        self,
        route: AsyncRoute,
        provider: str,
        reservation: AsyncReservation,
        skipped: tuple[Skip, ...],
        probe: bool,
    ) -> None:
        super().__init__(provider, skipped, probe)
        self._reservation: AsyncReservation = reservation
        self._route = route

    async def commit(
        self,
        cost: int | None = None,
        *,
        amount: Decimal | None = None,
        signal: Signal | None = None,
    ) -> Decision:
        decision = await self._reservation.commit(
            cost, amount=self._route._tiered(self, cost, amount)
        )
        await self.report(signal or _OK, decision)
        return decision

    async def release(self, signal: Signal | None = None) -> None:
        await self._reservation.release()
        if signal is not None:
            await self.report(signal)

    async def report(self, signal: Signal, decision: Decision | None = None) -> None:
        await self._route._report(self.provider, signal, decision or self.decision, self.probe)

    async def __aenter__(self) -> AsyncCall:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        signal = None if exc is None else _signal_of(exc, None)
        if exc is None or (signal is not None and signal.billed):
            await self.commit(signal=signal)
        else:
            await self.release(signal)


def _tiered(
    core: RouteCore, call: _CallBase, cost: int | None, amount: Decimal | None
) -> Decimal | None:
    """The amount to commit: as given, else the tier price of the units, else None (the
    reservation's own price)."""
    if amount is not None or not core.providers[call.provider].tiers:
        return amount
    units = call.decision.cost if cost is None else cost
    micros = core.tier_micros(call.provider, call.decision, units)
    return None if micros is None else micros_to_decimal(micros)


class _Attempts:
    """The bookkeeping of `run`: providers tried, skips seen once each, attempts left."""

    def __init__(self, core: RouteCore, retries: int | None) -> None:
        self.core = core
        self.tried: set[str] = set()
        self.skipped: list[Skip] = []
        self._seen: set[tuple[str, str]] = set()
        self.left = len(core.providers) if retries is None else retries + 1

    def add(self, skips: Iterable[Skip]) -> None:
        for skip in skips:
            if (skip.provider, skip.reason) not in self._seen:
                self._seen.add((skip.provider, skip.reason))
                self.skipped.append(skip)

    def failed(self, provider: str, signal: Signal, exc: BaseException) -> bool:
        """Record a failed call; True if another attempt may follow."""
        self.tried.add(provider)
        detail = f"{signal.kind}: {signal.detail}" if signal.detail else f"{signal.kind}: {exc}"
        self.add([Skip(provider, "failed", signal.retry_after, detail)])
        self.core.log_skip(self.skipped[-1])
        self.left -= 1
        return self.left > 0

    def none_left(self, exc: NoProviderAvailable | None = None) -> NoProviderAvailable:
        if exc is not None:
            self.add(exc.skipped)
        return NoProviderAvailable(self.core.name, tuple(self.skipped))


# The logic of `call` and `run` is written once, as generators that yield what they need done
# (reserve on a provider, open a call, invoke the function, release, commit) and are sent the
# result; `Route` carries the steps out directly, `AsyncRoute` awaits them (httpx's
# generator-driven ``auth_flow`` is the model).
Choose = Generator[str, "Reservation | AsyncReservation", "tuple[str, Any, tuple[Skip, ...]]"]


def _choose(core: RouteCore, exclude: Iterable[str]) -> Choose:
    """Yields the providers to reserve on, in the route's order; is sent each reservation;
    returns the first allowed one with the skips before it."""
    skipped: list[Skip] = []
    excluded = set(exclude)
    for provider in core.order():
        if provider in excluded:
            continue
        reservation = yield provider
        decision = reservation.decision
        if decision.allowed:
            core.alerts(provider, decision)
            return provider, reservation, tuple(skipped)
        skip = core.skip_for(provider, decision)
        core.log_skip(skip)
        skipped.append(skip)
    raise NoProviderAvailable(core.name, tuple(skipped))


OPEN, INVOKE, RELEASE, COMMIT = "open", "invoke", "release", "commit"
Step = tuple[str, Any, Any]
RunFlow = Generator[Step, Any, Outcome]


def _run(
    core: RouteCore,
    retries: int | None,
    classify: Classify | None,
    signal_of: Callable[[Any], Signal | None] | None,
) -> RunFlow:
    """The fallback loop of `run`: yields (OPEN, exclude, _) for a call (a failure to find
    one is thrown in), (INVOKE, call, _) for ``(value, None)`` or ``(None, exception)``,
    (RELEASE, call, signal) and (COMMIT, call, signal) for the decision."""
    attempts = _Attempts(core, retries)
    while True:
        try:
            call = yield (OPEN, frozenset(attempts.tried), None)
        except NoProviderAvailable as exc:
            raise attempts.none_left(exc) from None
        attempts.add(call.skipped)
        value, error = yield (INVOKE, call, None)
        if error is None:
            signal = signal_of(value) if signal_of else None
            decision = yield (COMMIT, call, signal)
            return Outcome(value, call.provider, tuple(attempts.skipped), decision)
        signal = _signal_of(error, classify)
        yield (COMMIT if signal is not None and signal.billed else RELEASE, call, signal)
        if signal is None:
            raise error
        if not attempts.failed(call.provider, signal, error):
            raise attempts.none_left() from error


class Route:
    """A route of the policy, for threads; get one with `Tollway.route`."""

    def __init__(
        self,
        tollway: Tollway,
        name: str,
        *,
        on_threshold: AlertSink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._tw = tollway
        self.core = RouteCore(tollway.engine, name, on_threshold=on_threshold, rng=rng)

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def providers(self) -> tuple[str, ...]:
        return self.core.route.providers

    def call(
        self, cost: int | None = None, *, amount: Decimal | None = None, exclude: Iterable[str] = ()
    ) -> Call:
        """Reserve ``cost`` units (default 1) on the first provider, in the route's order,
        whose health gates and limits all have room; `NoProviderAvailable` if none has."""
        engine, flow = self._tw.engine, _choose(self.core, exclude)
        try:
            provider = next(flow)
            while True:
                reservation = self._tw._take(
                    lambda p=provider: engine.provider(p, cost, amount, ACQUIRE)  # type: ignore[misc]
                )
                provider = flow.send(reservation)
        except StopIteration as done:
            chosen, held, skipped = done.value
        if skipped:
            self._failover(chosen, held._core.step.event, skipped)
        return Call(self, chosen, held, skipped, self.core.is_probe(held.decision))

    def _failover(self, chosen: str, template: str, skipped: Iterable[Skip]) -> None:
        entry = self.core.failover(chosen, skipped, template)
        if entry is not None:
            try:
                self._tw._append(provider_subject(chosen), entry)
            except StoreError:  # a notice lost must not fail the call it describes
                logger.exception("route %s: recording a failover to %s failed", self.name, chosen)

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
        flow = _run(self.core, retries, classify, signal_of)
        reply: Any = None
        try:
            step = next(flow)
            while True:
                kind, target, signal = step
                if kind == OPEN:
                    try:
                        reply = self.call(cost, amount=amount, exclude=target)
                    except NoProviderAvailable as exc:
                        step = flow.throw(exc)
                        continue
                elif kind == INVOKE:
                    try:
                        reply = (fn(target.provider), None)
                    except Exception as exc:
                        reply = (None, exc)
                elif kind == RELEASE:
                    reply = target.release(signal)
                else:
                    reply = target.commit(signal=signal)
                step = flow.send(reply)
        except StopIteration as done:
            outcome: Outcome = done.value
        if outcome.skipped:  # passed over a provider that failed, too
            self._failover(outcome.provider, outcome.decision._step.event, outcome.skipped)
        return outcome

    def status(self) -> dict[str, Decision]:
        """Where each provider stands now (its gates and limits), consuming nothing."""
        out = {}
        for provider in self.providers:
            out[provider] = self._tw._decide(
                lambda p=provider: self._tw.engine.provider(p, None, None, PEEK)  # type: ignore[misc]
            )
        return out

    def clear(self, provider: str) -> None:
        """Open every health gate of ``provider`` (after fixing its key, say)."""
        self.core.check_provider(provider)
        self._tw.store.health(HealthOp(provider_subject(provider), CLEAR))

    def _tiered(self, call: Call, cost: int | None, amount: Decimal | None) -> Decimal | None:
        return _tiered(self.core, call, cost, amount)

    def _report(self, provider: str, signal: Signal, decision: Decision, probe: bool) -> None:
        for op in self.core.health_ops(provider, signal, decision, probe):
            try:
                self._tw.store.health(op)
            except StoreError as exc:  # health is advice; the call itself is already settled
                logger.warning(
                    "route %s: could not record %s for %s: %s", self.name, op.op, provider, exc
                )


class AsyncRoute:
    """A route of the policy, for asyncio; get one with `AsyncTollway.route`."""

    def __init__(
        self,
        tollway: AsyncTollway,
        name: str,
        *,
        on_threshold: AlertSink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._tw = tollway
        self.core = RouteCore(tollway.engine, name, on_threshold=on_threshold, rng=rng)

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def providers(self) -> tuple[str, ...]:
        return self.core.route.providers

    async def call(
        self, cost: int | None = None, *, amount: Decimal | None = None, exclude: Iterable[str] = ()
    ) -> AsyncCall:
        engine, flow = self._tw.engine, _choose(self.core, exclude)
        try:
            provider = next(flow)
            while True:
                reservation = await self._tw._take(
                    lambda p=provider: engine.provider(p, cost, amount, ACQUIRE)  # type: ignore[misc]
                )
                provider = flow.send(reservation)
        except StopIteration as done:
            chosen, held, skipped = done.value
        if skipped:
            await self._failover(chosen, held._core.step.event, skipped)
        return AsyncCall(self, chosen, held, skipped, self.core.is_probe(held.decision))

    async def _failover(self, chosen: str, template: str, skipped: Iterable[Skip]) -> None:
        entry = self.core.failover(chosen, skipped, template)
        if entry is not None:
            try:
                await self._tw._append(provider_subject(chosen), entry)
            except StoreError:  # a notice lost must not fail the call it describes
                logger.exception("route %s: recording a failover to %s failed", self.name, chosen)

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
        flow = _run(self.core, retries, classify, signal_of)
        reply: Any = None
        try:
            step = next(flow)
            while True:
                kind, target, signal = step
                if kind == OPEN:
                    try:
                        reply = await self.call(cost, amount=amount, exclude=target)
                    except NoProviderAvailable as exc:
                        step = flow.throw(exc)
                        continue
                elif kind == INVOKE:
                    try:
                        reply = (await fn(target.provider), None)
                    except Exception as exc:
                        reply = (None, exc)
                elif kind == RELEASE:
                    reply = await target.release(signal)
                else:
                    reply = await target.commit(signal=signal)
                step = flow.send(reply)
        except StopIteration as done:
            outcome: Outcome = done.value
        if outcome.skipped:  # passed over a provider that failed, too
            await self._failover(outcome.provider, outcome.decision._step.event, outcome.skipped)
        return outcome

    async def status(self) -> dict[str, Decision]:
        out = {}
        for provider in self.providers:
            out[provider] = await self._tw._decide(
                lambda p=provider: self._tw.engine.provider(p, None, None, PEEK)  # type: ignore[misc]
            )
        return out

    async def clear(self, provider: str) -> None:
        self.core.check_provider(provider)
        await self._tw.store.health(HealthOp(provider_subject(provider), CLEAR))

    def _tiered(self, call: AsyncCall, cost: int | None, amount: Decimal | None) -> Decimal | None:
        return _tiered(self.core, call, cost, amount)

    async def _report(self, provider: str, signal: Signal, decision: Decision, probe: bool) -> None:
        for op in self.core.health_ops(provider, signal, decision, probe):
            try:
                await self._tw.store.health(op)
            except StoreError as exc:
                logger.warning(
                    "route %s: could not record %s for %s: %s", self.name, op.op, provider, exc
                )
