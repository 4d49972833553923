"""Policies, plans and times for the pure billing tests (built directly, no file)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from tollway.billing import Charge
from tollway.billing.records import PlanChange
from tollway.money import Money
from tollway.policy.model import (
    BillingConfig,
    Coupon,
    Defaults,
    Fee,
    FeeTiming,
    Limit,
    Plan,
    Policy,
)

D = Decimal


def us(*args: int, tz: Any = timezone.utc) -> int:
    """Microseconds of a datetime (UTC unless ``tz``)."""
    return int(datetime(*args, tzinfo=tz).timestamp()) * 1_000_000  # type: ignore[misc]


def fee(amount: str, timing: FeeTiming = "arrears") -> Fee:
    return Fee(Money.parse(f"{amount} USD"), timing)


def plan(
    name: str, *, fee_: Fee | None = None, charges: tuple[Charge, ...] = (), **kw: Any
) -> Plan:
    return Plan(
        name=name,
        limits=kw.pop("limits", ()),
        fee=fee_,
        charges=charges,
        path=f"plans.{name}",
        **kw,
    )


def credits_limit(operations: tuple[str, ...] | None = None, overage: bool = True) -> Limit:
    return Limit(
        name="credits",
        kind="credits",
        path="plans.x.limits[0]",
        credits="USD",
        overage=overage,
        operations=operations,
    )


def policy(
    *plans: Plan, coupons: tuple[Coupon, ...] = (), default: str | None = "free", **billing: Any
) -> Policy:
    all_plans = {p.name: p for p in plans}
    all_plans.setdefault("free", Plan(name="free", limits=(), path="plans.free"))
    return Policy(
        defaults=Defaults(plan=default),
        plans=all_plans,
        billing=BillingConfig(**billing),
        coupons={c.code: c for c in coupons},
    )


def change(plan_: str | None, at: int, seq: int = 1, **kw: Any) -> PlanChange:
    return PlanChange(subject="acct", seq=seq, plan=plan_, effective_us=at, recorded_us=at, **kw)
