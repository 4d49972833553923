"""The logic of a route, written once as flows (`tollway.engine.requests`): choosing a
provider, a call's commit and release with what the provider's answer says of its health, and
`run`'s fallback loop. `tollway.outbound.router` drives them for threads and for asyncio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from tollway.engine import flows
from tollway.engine.decision import Decision
from tollway.engine.health import CLEAR, HealthOp
from tollway.engine.requests import Append, Flow, Health, Invoke
from tollway.engine.reservation import ReservationCore
from tollway.engine.step import ACQUIRE, PEEK, provider_subject
from tollway.errors import NoProviderAvailable, StoreError
from tollway.money import micros_to_decimal
from tollway.outbound.routing import Outcome, RouteCore, Skip, logger
from tollway.outbound.signals import ProviderCallError, Signal

__all__ = ["Chosen", "Classify", "choose", "commit", "release", "report", "run", "status"]

Classify = Callable[[BaseException], "Signal | None"]
"""Maps an exception raised by a call to what it says about the provider (None: it is not
the provider's failure, so it propagates)."""

Chosen = tuple[str, ReservationCore, tuple[Skip, ...]]
"""The provider a call went to, what it took there, and the providers passed over."""

_OK = Signal.ok()


def signal_of(exc: BaseException, classify: Classify | None) -> Signal | None:
    """What ``exc`` says about the provider (None: not the provider's failure)."""
    if classify is not None:
        return classify(exc)
    return exc.signal if isinstance(exc, ProviderCallError) else None


def choose(
    core: RouteCore, cost: int | None, amount: Decimal | None, exclude: Iterable[str] = ()
) -> Flow[Chosen]:
    """Take the call on the first provider, in the route's order, whose health gates and
    limits all have room (one step each); `NoProviderAvailable` if none has."""
    engine = core.engine
    skipped: list[Skip] = []
    excluded = set(exclude)
    for provider in core.order():
        if provider in excluded:
            continue
        held = yield from flows.hold(
            engine,
            lambda p=provider: engine.provider(p, cost, amount, ACQUIRE),  # type: ignore[misc]
            taken=True,
        )
        decision = held.decision
        if decision.allowed:
            core.alerts(provider, decision)
            if skipped:
                yield from failover(core, provider, held.step.event, skipped)
            return provider, held, tuple(skipped)
        skip = core.skip_for(provider, decision)
        core.log_skip(skip)
        skipped.append(skip)
    raise NoProviderAvailable(core.name, tuple(skipped))


def failover(core: RouteCore, chosen: str, template: str, skipped: Iterable[Skip]) -> Flow[None]:
    """Append the route's failover notice, if one is due (see `RouteCore.failover`)."""
    entry = core.failover(chosen, skipped, template)
    if entry is not None:
        try:
            yield Append(provider_subject(chosen), entry)
        except StoreError:  # a notice lost must not fail the call it describes
            logger.exception("route %s: recording a failover to %s failed", core.name, chosen)


def _amount(
    core: RouteCore, provider: str, decision: Decision, cost: int | None, amount: Decimal | None
) -> Decimal | None:
    """The amount to commit: as given, else the tier price of the units, else None (the
    reservation's own price)."""
    if amount is not None or not core.providers[provider].tiers:
        return amount
    units = decision.cost if cost is None else cost
    micros = core.tier_micros(provider, decision, units)
    return None if micros is None else micros_to_decimal(micros)


def commit(
    core: RouteCore,
    provider: str,
    held: ReservationCore,
    probe: bool,
    cost: int | None = None,
    amount: Decimal | None = None,
    signal: Signal | None = None,
) -> Flow[Decision]:
    """Record a call's actual cost (default: what it took) and what the provider said."""
    priced = _amount(core, provider, held.decision, cost, amount)
    decision = yield from flows.commit(held, cost, priced)
    yield from report(core, provider, signal or _OK, decision, probe)
    return decision


def release(
    core: RouteCore, provider: str, held: ReservationCore, probe: bool, signal: Signal | None
) -> Flow[None]:
    """Give a call back (it was not billed); ``signal`` says why."""
    yield from flows.release(held)
    if signal is not None:
        yield from report(core, provider, signal, held.decision, probe)


def settle_on_exit(
    core: RouteCore, provider: str, held: ReservationCore, probe: bool, exc: BaseException | None
) -> Flow[Any]:
    """A call left as a context manager: committed when the block ended well or the
    provider's error says the call may have been billed, else released."""
    signal = None if exc is None else signal_of(exc, None)
    if exc is None or (signal is not None and signal.billed):
        return (yield from commit(core, provider, held, probe, signal=signal))
    return (yield from release(core, provider, held, probe, signal))


def report(
    core: RouteCore, provider: str, signal: Signal, decision: Decision, probe: bool
) -> Flow[None]:
    """Write what ``signal`` says about the provider's health (cooldown, exhaustion...)."""
    for op in core.health_ops(provider, signal, decision, probe):
        try:
            yield Health(op)
        except StoreError as exc:  # health is advice; the call itself is already settled
            logger.warning(
                "route %s: could not record %s for %s: %s", core.name, op.op, provider, exc
            )


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


def run(
    core: RouteCore,
    fn: Callable[[str], Any],
    cost: int | None,
    amount: Decimal | None,
    retries: int | None,
    classify: Classify | None,
    signal_of_value: Callable[[Any], Signal | None] | None,
) -> Flow[Outcome]:
    """`Route.run`'s fallback loop: a call on the first provider that can take it, ``fn``
    invoked on it, and on a provider failure the next provider, up to ``retries`` more."""
    attempts = _Attempts(core, retries)
    while True:
        try:
            provider, held, skipped = yield from choose(core, cost, amount, attempts.tried)
        except NoProviderAvailable as exc:
            raise attempts.none_left(exc) from None
        attempts.add(skipped)
        probe = core.is_probe(held.decision)
        try:
            value = yield Invoke(fn, provider)
        except Exception as exc:
            error = exc
        else:
            signal = signal_of_value(value) if signal_of_value else None
            decision = yield from commit(core, provider, held, probe, signal=signal)
            outcome = Outcome(value, provider, tuple(attempts.skipped), decision)
            if outcome.skipped:  # passed over a provider that failed, too
                yield from failover(core, provider, held.step.event, outcome.skipped)
            return outcome
        signal = signal_of(error, classify)
        if signal is not None and signal.billed:
            yield from commit(core, provider, held, probe, signal=signal)
        else:
            yield from release(core, provider, held, probe, signal)
        if signal is None:
            raise error
        if not attempts.failed(provider, signal, error):
            raise attempts.none_left() from error


def status(core: RouteCore) -> Flow[dict[str, Decision]]:
    """Where each provider stands now (its gates and limits), consuming nothing."""
    engine = core.engine
    out = {}
    for provider in core.route.providers:
        out[provider] = yield from flows.decide(
            engine,
            lambda p=provider: engine.provider(p, None, None, PEEK),  # type: ignore[misc]
        )
    return out


def clear(core: RouteCore, provider: str) -> Flow[None]:
    """Open every health gate of ``provider`` (after fixing its key, say)."""
    core.check_provider(provider)
    yield Health(HealthOp(provider_subject(provider), CLEAR))
