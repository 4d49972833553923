"""Limits compiled for the store: integer parameters, key suffixes and a cached window.

A `Rule` is one limit as the store evaluates it for one operation. Rules are built once per
policy, so the hot path never parses, looks up a timezone or divides a period again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tollway.engine.windows import window_at
from tollway.money import MAX_MICROS
from tollway.policy.model import Limit, Operation, Period, Plan, Policy, Provider, Quota

MAX_COUNT = MAX_MICROS
RATE = 0
WINDOW = 1
GATE = 2
"""A health gate of a provider: its value is a time (us) before which the step is refused.
It never consumes; a gate with a probe time lets one step through once its time has passed
and holds the others back for the probe time (a circuit breaker's half-open probe)."""
CREDITS = 3
"""A prepaid balance (``{ credits = "USD" }``): the field ``c:CUR`` holds the subject's live
balance in micro-units, shared by every credits rule of that currency; a step draws its money
from it, and does not fit when the balance cannot cover it (see `tollway.engine.credits`)."""


class Rule:
    """One limit as the store evaluates it: GCRA (``RATE``) or a calendar counter (``WINDOW``)."""

    __slots__ = (
        "_marks",
        "_window",
        "anchor",
        "capacity_us",
        "closed",
        "currency",
        "emission_us",
        "field",
        "fragment",
        "hard",
        "kind",
        "kind_name",
        "limit",
        "money",
        "name",
        "operation",
        "overage",
        "period",
        "probe_us",
        "reads",
        "shadow",
        "soft",
        "start_field",
        "thresholds",
        "timezone",
    )

    def __init__(self, limit: Limit, operation: str | None) -> None:
        self.limit: Limit | None = limit
        self.kind_name: str = limit.kind
        """``rate``, ``quota``, ``budget`` (or ``gate``)."""
        self.currency = limit.currency
        self.name = limit.name
        self.operation = operation
        self.shadow = limit.shadow
        self.closed = limit.on_error == "closed"
        self.money = limit.budget is not None or limit.credits is not None
        self.overage = limit.overage
        """A credits rule that lets a step it cannot cover pass (nothing drawn)."""
        if limit.credits is not None:
            # One balance per subject and currency, whatever the limit's name.
            self.field = f"c:{limit.credits}"
        else:
            letter = {"rate": "r", "quota": "q", "budget": "b"}[limit.kind]
            self.field = f"{letter}:{limit.name}" + (f":{operation}" if operation else "")
        """The rule's field in the subject's state."""
        self.start_field = self.field + "@"
        """Where a window rule keeps the start of the window its count belongs to."""
        self.timezone = limit.timezone
        self.anchor = limit.anchor
        self.emission_us = self.capacity_us = self.soft = self.hard = self.probe_us = 0
        self.period: Period | None = limit.period
        self.thresholds: tuple[int, ...] = ()
        # One tuple, replaced whole, so a thread never reads a start and an end of two windows.
        self._window: tuple[int, int, str] = (0, 0, "")
        if limit.credits is not None:
            self.kind = CREDITS
        elif limit.rate is not None:
            self.kind = RATE
            self.emission_us = limit.rate.emission_us
            self.capacity_us = (limit.burst or limit.rate.count) * self.emission_us
        else:
            self.kind = WINDOW
            if limit.quota is not None:
                self.soft = limit.quota.count
            else:
                assert limit.budget is not None
                self.soft = limit.budget.amount.micros
            self.hard = self.soft + (limit.grace.extra(self.soft) if limit.grace else 0)
            # A threshold is crossed by the step that moves the count from below to at-or-above.
            self.thresholds = tuple(max(1, math.ceil(t * self.soft)) for t in limit.thresholds)
        shadow = 8 if self.shadow else 0
        # The rule as the Redis script reads it: 6 items of a JSON array (see lua/step.lua);
        # a window's start and end are filled in by `window`.
        if self.kind == RATE:
            self.fragment = f'{shadow},"{self.field}",{self.emission_us},{self.capacity_us},0,0'
            self._marks = ""
        elif self.kind == CREDITS:
            # Overage never denies: in the store it is a non-enforcing rule, like a shadow.
            soft = 8 if self.shadow or self.overage else 0
            self.fragment = f'{4 + soft},"{self.field}","{limit.name}",0,0,0'
            self._marks = ""
        else:
            kind = (2 if self.money else 1) + shadow
            self.fragment = f'{kind},"{self.field}",{self.hard}'
            self._marks = f"[{','.join(map(str, self.thresholds))}]" if self.thresholds else "0"
        self.reads: tuple[str, ...] = (
            (self.field,)
            if self.kind == RATE
            else (self.field, self.field + "^")
            if self.kind == CREDITS
            else (self.field, self.field + "@")
        )
        """The hash fields the step script reads for this rule."""

    @classmethod
    def gate(cls, name: str, probe_us: int = 0) -> Rule:
        """A health gate (see `GATE`) kept in the field ``g:NAME``."""
        rule = cls.__new__(cls)
        rule.limit = None
        rule.kind_name = "gate"
        rule.currency = None
        rule.name = name
        rule.operation = None
        rule.shadow = rule.closed = rule.money = rule.overage = False
        rule.kind = GATE
        rule.field = f"g:{name}"
        rule.start_field = rule.field + "@"
        rule.timezone = "UTC"
        rule.anchor = None
        rule.period = None
        rule.thresholds = ()
        rule._window = (0, 0, "")
        rule._marks = ""
        rule.emission_us = rule.capacity_us = rule.soft = rule.hard = 0
        rule.probe_us = probe_us
        rule.fragment = f'3,"{rule.field}",{probe_us},0,0,0'
        rule.reads = (rule.field,)
        return rule

    @property
    def enforcing(self) -> bool:
        """Whether a step it does not fit is denied (not a shadow, not a credits overage)."""
        return not (self.shadow or self.overage)

    @property
    def burst(self) -> int:
        return self.capacity_us // self.emission_us if self.kind == RATE else 0

    def window(self, now_us: int) -> tuple[int, int, str]:
        """The window holding ``now_us`` as ``(start, end, fragment)``, the fragment being the
        rule's part of the Redis script's argument; cached until the window ends."""
        window = self._window
        if window[0] <= now_us < window[1]:
            return window
        assert self.period is not None
        start, end = window_at(self.period, self.timezone, self.anchor, now_us)
        window = (start, end, f"{self.fragment},{start},{end},{self._marks}")
        self._window = window
        return window

    def __repr__(self) -> str:
        return f"Rule({self.field!r})"


Window = tuple[int, int, str]
Span = tuple[int, int, list[Window | None], str]
"""(valid from, valid until, per-rule windows, the Redis script's rule argument)."""
ALWAYS = 1 << 62
"""The end of time, for checks without windows."""


class Check:
    """Every rule one (plan, operation) pair must pass, and how to price its budget rules.

    Built once per policy. It caches what every step at the default cost shares: the per-rule
    costs, and the current windows with the Redis script's rule argument, until one ends.
    """

    __slots__ = (
        "_windows",
        "credits",
        "currency",
        "default_cost",
        "default_costs",
        "default_micros",
        "fixed_windows",
        "has_money",
        "has_window",
        "marks",
        "operation",
        "plan",
        "price_micros",
        "reads",
        "rules",
        "static_packed",
        "version",
    )

    def __init__(
        self,
        plan: str,
        operation: str,
        rules: tuple[Rule, ...],
        default_cost: int,
        price_micros: int | None,
        currency: str | None = None,
    ) -> None:
        self.plan = plan
        self.operation = operation
        self.rules = rules
        self.default_cost = default_cost
        self.price_micros = price_micros
        self.version = ""
        """The version of the policy it was compiled from (what decisions report)."""
        self.has_money = any(rule.money for rule in rules)
        self.currency = currency or next((r.currency for r in rules if r.currency), None)
        """The currency of its price or budgets (what its usage events' amounts are in)."""
        self.has_window = any(rule.kind == WINDOW for rule in rules)
        self.credits = next((i for i, r in enumerate(rules) if r.kind == CREDITS), -1)
        """The index of its credits rule (-1: none); a plan has at most one."""
        self.marks = any(rule.thresholds for rule in rules)
        """Whether any rule has thresholds to report."""
        self.default_micros: int | None = (
            default_cost * price_micros if price_micros is not None else None
        )
        """The money of one call at the default cost (None: no price)."""
        self.default_costs: list[int] | None = self.costs(default_cost, self.default_micros)
        """Per-rule costs at the default cost; None when a budget applies and there is no price
        (the caller must give an amount). Shared by steps: never mutated."""
        # The rules' part of the step script's JSON argument: ",rule,rule..." (see redis_codec).
        self.static_packed = "".join("," + rule.fragment for rule in rules)
        self.reads: tuple[str, ...] = (
            "plan",
            "hx",
            "exp",
            *(field for rule in rules for field in rule.reads),
        )
        """The hash fields the Redis step script reads, in its order."""
        self.fixed_windows: list[tuple[int, int, str] | None] = [None] * len(rules)
        """The windows of a check with rate limits only: none. Shared: never mutated."""
        # (valid from, valid until, windows, packed rules) for the windows holding "now".
        self._windows: Span = (0, 0, self.fixed_windows, self.static_packed)
        if not self.has_window:
            self._windows = (0, ALWAYS, self.fixed_windows, self.static_packed)

    def costs(self, units: int, micros: int | None) -> list[int] | None:
        if not self.has_money:
            return [units] * len(self.rules)
        if micros is None:
            return None
        return [micros if rule.money else units for rule in self.rules]

    def windows(self, now_us: int) -> Span:
        """The rules' windows at ``now_us`` and the script's rule argument for them."""
        cached = self._windows
        if cached[0] <= now_us < cached[1]:
            return cached
        windows = [rule.window(now_us) if rule.kind == WINDOW else None for rule in self.rules]
        lo = max(w[0] for w in windows if w is not None)
        hi = min(w[1] for w in windows if w is not None)
        packed = "".join(
            "," + (rule.fragment if w is None else w[2])
            for rule, w in zip(self.rules, windows, strict=True)
        )
        self._windows = cached = (lo, hi, windows, packed)
        return cached


def _rules_for(limits: tuple[Limit, ...], operation: str) -> tuple[Rule, ...]:
    return tuple(
        Rule(limit, operation if limit.per == "operation" else None)
        for limit in limits
        if limit.applies_to(operation)
    )


def _check(name: str, limits: tuple[Limit, ...], operation: Operation) -> Check:
    price = operation.price
    return Check(
        name,
        operation.name,
        _rules_for(limits, operation.name),
        operation.cost,
        price.micros if price is not None else None,
        price.currency if price is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Compiled:
    """The policy's checks, built once: ``checks[plan][operation]``, plus usage views."""

    checks: Mapping[str, Mapping[str, Check]]
    usage: Mapping[str, Check]
    """Per plan: one rule per distinct counter (per-operation limits once per operation)."""
    providers: Mapping[str, Check]


def _usage_rules(plan: Plan, operations: tuple[str, ...]) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for limit in plan.limits:
        if limit.per == "operation":
            rules.extend(Rule(limit, op) for op in operations if limit.applies_to(op))
        else:
            rules.append(Rule(limit, None))
    return tuple(rules)


GATES = ("blocked", "exhausted", "cooldown", "breaker")
"""A provider's health gates, first in each of its checks (see `GATE`): refused by its key or
terms, out of quota until its reset, told to slow down, and its circuit breaker."""
PROVIDER_OPERATION = "call"


TIER_COUNTER = "month_units"
"""The shadow counter of a provider with tiered prices: its units this month, which say the
tier of the next one."""


def _tier_counter(provider: Provider) -> Limit:
    return Limit(
        name=TIER_COUNTER,
        kind="quota",
        path=f"providers.{provider.name}.price",
        quota=Quota(count=MAX_COUNT, period="month", text=f"{MAX_COUNT}/month"),
        timezone=provider.timezone,
        shadow=True,
    )


def _provider_check(provider: Provider) -> Check:
    price = provider.price.micros if provider.price is not None else None
    probe_us = provider.health.probe_ms * 1000
    gates = tuple(Rule.gate(name, probe_us if name == "breaker" else 0) for name in GATES)
    limits = provider.limits + ((_tier_counter(provider),) if provider.tiers else ())
    rules = gates + _rules_for(limits, PROVIDER_OPERATION)
    currency = provider.price.currency if provider.price is not None else None
    return Check(provider.name, PROVIDER_OPERATION, rules, 1, price, currency)


def plan_checks(
    plan: str, limits: tuple[Limit, ...], policy: Policy
) -> tuple[dict[str, Check], Check]:
    """The checks of one plan's ``limits`` (a subject's, with its overrides): per operation,
    and its usage view, as `compile_policy` builds them for a plan of ``policy``."""
    operations = tuple(policy.operations)
    checks = {op.name: _check(plan, limits, op) for op in policy.operations.values()}
    usage_rules: list[Rule] = []
    for limit in limits:
        if limit.per == "operation":
            usage_rules.extend(Rule(limit, op) for op in operations if limit.applies_to(op))
        else:
            usage_rules.append(Rule(limit, None))
    usage = Check(plan, "", tuple(usage_rules), 0, None)
    for check in (*checks.values(), usage):
        check.version = policy.version
    return checks, usage


def compile_policy(policy: Policy) -> Compiled:
    operations = tuple(policy.operations)
    checks = {
        plan.name: {
            op.name: _check(plan.name, plan.limits, op) for op in policy.operations.values()
        }
        for plan in policy.plans.values()
    }
    usage = {
        plan.name: Check(plan.name, "", _usage_rules(plan, operations), 0, None)
        for plan in policy.plans.values()
    }
    providers = {name: _provider_check(p) for name, p in policy.providers.items()}
    for check in _every_check(checks, usage, providers):
        check.version = policy.version
    return Compiled(checks=checks, usage=usage, providers=providers)


def _every_check(
    checks: Mapping[str, Mapping[str, Check]],
    usage: Mapping[str, Check],
    providers: Mapping[str, Check],
) -> list[Check]:
    return [
        *(check for by_op in checks.values() for check in by_op.values()),
        *usage.values(),
        *providers.values(),
    ]
