"""What a route decides, without I/O: the order to try providers in, why one was skipped, and
which health writes a provider's answer calls for. `tollway.outbound.router` adds the store
calls, once for threads and once for asyncio.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

from tollway.clock import US
from tollway.engine.core import Engine
from tollway.engine.decision import Crossing, Decision
from tollway.engine.health import CLOSE, ERROR, EXTEND, FLOOR, HealthOp
from tollway.engine.rules import GATES, TIER_COUNTER, WINDOW, Check
from tollway.engine.step import provider_subject
from tollway.engine.windows import window_at
from tollway.errors import UnknownLimitError, UnknownNameError
from tollway.outbound.signals import Signal
from tollway.policy.model import Provider, RouteSpec

__all__ = ["Outcome", "RouteCore", "Skip", "ThresholdAlert"]

BREAKER_INDEX = GATES.index("breaker")
"""The gates come first in every provider check, in `GATES` order."""

logger = logging.getLogger("tollway.outbound")

MINUTE_US = 60 * US
DEFAULT_COOLDOWN_S = 1.0
"""A 429 without ``Retry-After`` cools the provider down this long."""
BLOCKED_US = 365 * 86_400 * US
"""A provider that refuses the key stays skipped until `Route.clear`."""


@dataclass(frozen=True, slots=True)
class Skip:
    """A provider the route passed over, and why."""

    provider: str
    reason: str
    """A health gate (``cooldown``, ``exhausted``, ``blocked``, ``breaker``), the name of the
    limit that had no room (``daily``, ``budget``...), ``failed`` (the call was made and
    failed), or ``unavailable`` (the store could not be asked and the limit fails closed)."""
    retry_after: float | None = None
    """Seconds until it could take the call (None: unknown, or never at this cost)."""
    detail: str = ""

    def __str__(self) -> str:
        wait = f", for {self.retry_after:.3f} s" if self.retry_after else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.provider}: {self.reason}{wait}{detail}"


@dataclass(frozen=True, slots=True)
class ThresholdAlert:
    """A provider limit reached a threshold; raised once per threshold and window across
    every process sharing the store."""

    route: str
    provider: str
    limit: str
    threshold: Decimal
    used: int | Decimal

    @classmethod
    def of(cls, route: str, provider: str, crossing: Crossing) -> ThresholdAlert:
        return cls(route, provider, crossing.limit, crossing.threshold, crossing.used)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `Route.run` returns: the function's value, the provider that gave it, and every
    provider passed over on the way (skipped, or tried and failed)."""

    value: object
    provider: str
    skipped: tuple[Skip, ...]
    decision: Decision
    """The committed decision of the call that succeeded."""

    @property
    def failovers(self) -> int:
        return len(self.skipped)


AlertSink = Callable[[ThresholdAlert], None]


class RouteCore:
    """The logic of one route; shared by `Route` and `AsyncRoute`."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        on_threshold: AlertSink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        policy = engine.policy
        route = policy.routes.get(name)
        if route is None:
            raise UnknownNameError(
                f"route: {name!r} is not declared in the policy; known routes: "
                f"{', '.join(sorted(policy.routes)) or 'none'}"
            )
        self.engine = engine
        self.route: RouteSpec = route
        self.name = name
        self.providers: dict[str, Provider] = {p: policy.providers[p] for p in route.providers}
        self.checks: dict[str, Check] = {p: engine.compiled.providers[p] for p in route.providers}
        self.on_threshold = on_threshold
        self._rng = rng or random.Random()
        self._failovers: set[str] = set()
        self._cheapest = sorted(route.providers, key=self._price)

    def check_provider(self, provider: str) -> None:
        if provider not in self.providers:
            raise UnknownNameError(
                f"provider: {provider!r} is not on route {self.name!r}; its providers: "
                f"{', '.join(self.route.providers) or 'none'}"
            )

    # -- which provider to try --------------------------------------------------------------

    def _price(self, provider: str) -> int:
        price = self.providers[provider].price
        return price.micros if price is not None else 0

    def order(self) -> list[str]:
        """The providers in the order this call tries them."""
        strategy = self.route.strategy
        if strategy == "cheapest":
            return list(self._cheapest)
        if strategy == "weighted":
            return self._weighted()
        return list(self.route.providers)

    def _weighted(self) -> list[str]:
        # A weighted draw without replacement (Efraimidis-Spirakis keys): each provider comes
        # first in proportion to its weight; weight 0 only after every weighted one.
        keyed = []
        for name in self.route.providers:
            weight = self.providers[name].weight
            key = self._rng.random() ** (1.0 / weight) if weight > 0 else -1.0
            keyed.append((key, name))
        keyed.sort(reverse=True)
        return [name for _, name in keyed]

    # -- reading a reservation --------------------------------------------------------------

    @staticmethod
    def skip_for(provider: str, decision: Decision) -> Skip:
        """Why the reservation on ``provider`` was refused: its first closed gate, else the
        limits that had no room."""
        if decision.degraded:
            return Skip(provider, "unavailable", decision.retry_after, decision.reason or "")
        violated = decision.violated
        gates = [name for name in violated if name in GATES]
        reason = gates[0] if gates else ", ".join(violated) or "denied"
        return Skip(provider, reason, decision.retry_after)

    @staticmethod
    def is_probe(decision: Decision) -> bool:
        """Whether this call took the breaker's half-open probe: its gate now holds a time
        ahead (read from the raw figures; building every limit's state costs more)."""
        if decision.degraded or not decision.allowed:
            return False
        return bool(decision.values[BREAKER_INDEX] > decision.now_us)

    def alerts(self, provider: str, decision: Decision) -> None:
        """Hand the thresholds this reservation crossed to ``on_threshold``."""
        if self.on_threshold is None or not decision.crossed:
            return
        for crossing in decision.crossings:
            alert = ThresholdAlert.of(self.name, provider, crossing)
            try:
                self.on_threshold(alert)
            except Exception:  # an alert sink must not break the call that raised it
                logger.exception("route %s: on_threshold failed for %s", self.name, alert)

    def failover(
        self, chosen: str, skipped: Iterable[Skip], template: str
    ) -> dict[str, str] | None:
        """The ``tollway.provider.failover`` entry for a call given to ``chosen`` after
        passing over others (see `tollway.metering.entries`), or None: no events, nothing
        passed over, or already sent by this process this minute for this route and provider
        (the id, per minute, makes other processes' copies duplicates in the ledger)."""
        passed = [(skip.provider, skip.reason) for skip in skipped if skip.provider != chosen]
        if not passed or not template:
            return None
        now = self.now_us()
        ident = f"fo-{self.name}-{chosen}-{now // MINUTE_US}"
        if ident in self._failovers:
            return None
        if len(self._failovers) >= 1024:
            self._failovers.clear()
        self._failovers.add(ident)
        return {
            "k": "f",
            "t": str(now),
            "d": template,
            "n": ident,
            "r": self.name,
            "p": json.dumps(passed, separators=(",", ":"), ensure_ascii=False),
        }

    # -- what an answer means for the provider ----------------------------------------------

    def health_ops(
        self, provider: str, signal: Signal, decision: Decision | None, probe: bool
    ) -> list[HealthOp]:
        """The health writes ``signal`` calls for (often none: a plain success writes
        nothing, so the common call stays at two round trips)."""
        kind = signal.kind
        if kind == "ok" and not probe and signal.remaining is None:
            return []  # the common case: nothing to write
        subject = provider_subject(provider)
        health = self.providers[provider].health
        ops: list[HealthOp] = []
        if kind == "error":
            ops.append(
                HealthOp(
                    subject,
                    ERROR,
                    threshold=health.breaker_errors,
                    window_us=health.breaker_window_ms * 1000,
                    open_us=health.breaker_open_ms * 1000,
                    force=probe,
                )
            )
            return ops
        if probe:  # the provider answered: it is up again, whatever it said
            ops.append(HealthOp(subject, CLOSE))
        if kind == "throttled":
            wait = DEFAULT_COOLDOWN_S if signal.retry_after is None else signal.retry_after
            ops.append(HealthOp(subject, EXTEND, "g:cooldown", for_us=round(wait * US)))
        elif kind == "exhausted":
            until = self.exhausted_until(provider, signal)
            ops.append(HealthOp(subject, EXTEND, "g:exhausted", until_us=until))
        elif kind == "blocked":
            ops.append(HealthOp(subject, EXTEND, "g:blocked", for_us=BLOCKED_US))
        elif signal.remaining is not None:
            floor = self._floor(provider, signal, decision)
            if floor is not None:
                ops.append(floor)
        return ops

    def now_us(self) -> int:
        return self.engine.clock() + self.engine.offset_us

    def exhausted_until(self, provider: str, signal: Signal) -> int:
        """When an exhausted provider may be tried again: when it says it resets, else the
        end of its shortest quota or budget window, else its next local midnight."""
        now = self.now_us()
        if signal.reset_at is not None and signal.reset_at * US > now:
            return round(signal.reset_at * US)
        ends = [rule.window(now)[1] for rule in self.checks[provider].rules if rule.kind == WINDOW]
        if ends:
            return min(ends)
        return window_at("day", self.providers[provider].timezone, None, now)[1]

    def _floor(self, provider: str, signal: Signal, decision: Decision | None) -> HealthOp | None:
        """Raise the provider's quota counter when it says fewer calls are left than the
        counter does. Written only when the reservation's own figures show a difference."""
        assert signal.remaining is not None
        if decision is None or decision.degraded:
            return None
        check = self.checks[provider]
        candidates = []
        for i, rule in enumerate(check.rules):
            if rule.kind != WINDOW or rule.money or rule.shadow:
                continue
            window = rule.window(decision.now_us)
            # Match the provider's window by its reset when it gives one, else the shortest.
            distance = (
                abs(window[1] - signal.reset_at * US)
                if signal.reset_at is not None
                else window[1] - window[0]
            )
            candidates.append((distance, i, rule, window))
        if not candidates:
            return None
        _, i, rule, window = min(candidates, key=lambda c: (c[0], c[1]))
        state = decision.limits[i]
        used = int(state.used)
        floor = rule.soft - signal.remaining
        if floor <= used:
            return None
        return HealthOp(
            provider_subject(provider),
            FLOOR,
            rule.field,
            start_us=window[0],
            end_us=window[1],
            hard=rule.soft,
            remaining=signal.remaining,
        )

    def tier_micros(self, provider: str, decision: Decision, units: int) -> int | None:
        """What ``units`` of a reservation cost under the provider's tiered prices: the
        month's counter after the reservation gives each unit its place in the month. None
        when the provider has no tiers, or the decision has no figures (the reservation then
        commits at the dearest tier it held)."""
        tiers = self.providers[provider].tiers
        if not tiers or decision.degraded:
            return None
        try:
            counted = int(decision.limit(TIER_COUNTER).used)
        except UnknownLimitError:
            return None
        first = counted - decision.cost + 1  # this reservation's first unit of the month
        last = first + units - 1
        micros, floor = 0, 0
        for tier in tiers:
            top = tier.upto if tier.upto is not None else last
            inside = min(last, top) - max(first, floor + 1) + 1
            if inside > 0:
                micros += inside * tier.micros
            floor = top
        return micros

    def log_skip(self, skip: Skip) -> None:
        logger.info("route %s: skipped %s", self.name, skip)
