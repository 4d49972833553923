"""The rating benchmark's month: a policy, 1,000 subjects and their usage events, generated
deterministically (`bench.rating` loads and rates them).

January 2026: events occur in ``[START, CUT)`` and are recorded 250 ms later, so every one is
in the ledger at ``AS_OF`` (the clock of the run and of the previews). Plans: ``free`` (the
default, no history), ``pro`` (a fee in advance, prepaid credits on ``lookup``, graduated /
package / volume charges) and ``team`` (a fee in arrears, credits with overage on ``lookup``,
unit charges and a unique count of users). 40 % of subjects are free, 40 % pro, 20 % team; a
tenth of the free subjects move to pro on January 15 (one plan change in the period), every
other paying subject has one change, on December 1. Paying subjects hold a 100 USD grant from
December 1 (no expiry) and a tenth of pro subjects redeemed ``LAUNCH20``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tollway.billing.records import GrantRecord, PlanChange, Redemption
from tollway.billing.storage import add_grant, append_change, redeem
from tollway.billing.storage.sql import Dialect
from tollway.metering.ledger import UsageEvent
from tollway.metering.ledger.flows import Flow


def _us(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=timezone.utc).timestamp()) * 10**6


START = _us(2026, 1, 1)
END = _us(2026, 2, 1)
CUT = _us(2026, 1, 31, 23)
AS_OF = _us(2026, 1, 31, 23, 30)
SINCE = _us(2025, 12, 1)
SWITCH = _us(2026, 1, 15)
PRICE_MICROS = 1500  # lookup: 0.0015 USD per unit
METERS = (("lookup", 40), ("geocode", 30), ("search", 20), ("enrich", 7), ("users", 3))
REGIONS = ("eu-west", "us-east", "ap-south")


def policy(ledger_url: str) -> dict[str, Any]:
    return {
        "defaults": {"plan": "free"},
        "store": {"url": "memory://"},
        "ledger": {"url": ledger_url},
        "operations": {
            "lookup": {"price": "0.0015 USD"},
            "geocode": {},
            "search": {},
            "enrich": {},
            "users": {},
        },
        "billing": {"currency": "USD", "period": "month", "invoice_grace": "1h"},
        "plans": {
            "free": {"limits": [{"name": "hourly", "quota": "1000000/hour"}]},
            "pro": {
                "fee": {"amount": "49.00 USD", "timing": "advance"},
                "limits": [{"name": "credits", "credits": "USD", "operations": ["lookup"]}],
                "charges": [
                    {
                        "meter": "geocode",
                        "model": "graduated",
                        "tiers": [
                            {"up_to": 100, "unit": "0"},
                            {"up_to": 1000, "unit": "0.004"},
                            {"unit": "0.002"},
                        ],
                    },
                    {"meter": "search", "model": "package", "size": 100, "amount": "5.00"},
                    {
                        "meter": "enrich",
                        "model": "volume",
                        "block": 10,
                        "tiers": [{"up_to": 100, "unit": "1.00"}, {"unit": "0.50"}],
                    },
                ],
            },
            "team": {
                "fee": {"amount": "200.00 USD", "timing": "arrears"},
                "limits": [
                    {
                        "name": "wallet",
                        "credits": "USD",
                        "overage": True,
                        "operations": ["lookup"],
                    }
                ],
                "charges": [
                    {"meter": "geocode", "model": "unit", "unit": "0.002"},
                    {"meter": "search", "model": "unit", "unit": "0.01"},
                    {"meter": "enrich", "model": "unit", "unit": "0.05"},
                    {
                        "meter": "users",
                        "model": "unit",
                        "unit": "4.00",
                        "aggregation": "unique",
                        "attribute": "user",
                    },
                ],
            },
        },
        "coupons": {"LAUNCH20": {"percent": 20, "duration": 3, "applies_to": ["fee"]}},
    }


@dataclass
class Subject:
    name: str
    plan: str | None  # in force from START (None: the default, free)
    switch_to: str | None = None  # a change on SWITCH
    history: list[PlanChange] = field(default_factory=list)
    grants: list[GrantRecord] = field(default_factory=list)
    redemptions: list[Redemption] = field(default_factory=list)

    def plan_at(self, t_us: int) -> str | None:
        return self.switch_to if self.switch_to is not None and t_us >= SWITCH else self.plan


def subjects(count: int) -> list[Subject]:
    out = []
    for i in range(count):
        kind = i % 10
        plan = None if kind < 4 else "pro" if kind < 8 else "team"
        switch = "pro" if plan is None and i % 100 == 3 else None
        out.append(Subject(f"acct_{i:05d}", plan, switch))
    return out


def setup_flow(dialect: Dialect, people: list[Subject]) -> Flow[None]:
    """Every subject's plan history, grants and redemptions, in one transaction (filled into
    ``people`` as stored)."""
    for i, who in enumerate(people):
        if who.plan is not None:
            change = yield from append_change(
                dialect, who.name, who.plan, effective_us=SINCE, recorded_us=SINCE
            )
            who.history.append(change)
        if who.switch_to is not None:
            change = yield from append_change(
                dialect, who.name, who.switch_to, effective_us=SWITCH, recorded_us=SWITCH
            )
            who.history.append(change)
        if who.plan is not None or who.switch_to is not None:
            grant = GrantRecord(
                id=f"g-{who.name}",
                subject=who.name,
                currency="USD",
                amount_micros=100_000_000,
                granted_us=SINCE,
                note="bench",
            )
            yield from add_grant(dialect, grant)
            who.grants.append(grant)
        if who.plan == "pro" and i % 50 == 4:
            who.redemptions.append((yield from redeem(dialect, who.name, "LAUNCH20", SINCE)))


def events(people: list[Subject], total: int, seed: int = 12) -> Iterator[UsageEvent]:
    """``total`` events spread over the subjects (uneven: some use ten times more than
    others), in time order, ids time-ordered like a Redis Stream's."""
    rng = random.Random(seed)
    weights = [1 + (i * 7919) % 10 for i in range(len(people))]
    meters = [m for m, _ in METERS]
    meter_weights = [w for _, w in METERS]
    span = CUT - START
    who = rng.choices(people, weights, k=total)
    what = rng.choices(meters, meter_weights, k=total)
    for i in range(total):
        t = START + span * i // total
        subject, meter = who[i], what[i]
        plan = subject.plan_at(t) or "free"  # the step records the plan in force
        quantity = 1 + (i * 31) % 5
        limits: tuple[str, ...] = ()
        amount = currency = None
        attributes: dict[str, str | int | bool] = {"region": REGIONS[i % 3]}
        if meter == "lookup":
            amount, currency = PRICE_MICROS * quantity, "USD"
            if plan == "pro":
                limits = ("credits",)
            elif plan == "team" and i % 2:
                limits = ("wallet",)
        elif meter == "users":
            quantity = 1
            attributes["user"] = f"u{i % 37}"
        yield UsageEvent(
            id=f"{t // 1000:013d}-{i % 1000:03d}",
            subject=subject.name,
            operation=meter,
            meter=meter,
            quantity=quantity,
            occurred_at_us=t,
            recorded_at_us=t + 250_000,
            amount_micros=amount,
            currency=currency,
            plan=plan,
            policy_version="bench",
            limits=limits,
            attributes=attributes,
        )
