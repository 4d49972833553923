"""Every budget can price what it counts.

A budget counts money: units times the price of the operation (or of the provider), or the
``amount=`` a caller gives at acquire, reserve or commit time for a cost only known then. A
budget over something with neither would refuse every call at run time (over HTTP, every
request would get a 400 that blames the client), so the policy is refused instead, with one
issue per budget and operation:

- an operation (or provider) a budget counts has a ``price``, or says ``price = "explicit"``
  (its callers give every amount);
- an ``"explicit"`` operation a budget counts has no ``endpoints``: the HTTP gate gives no
  amount, so each of its requests would be refused.

A credits limit (a prepaid balance drawn by the step) prices what it draws the same way, so the
same rules hold for it (its currency is checked in `tollway.policy.limits`).
"""

from __future__ import annotations

from collections.abc import Mapping

from tollway.policy.fields import show
from tollway.policy.model import Limit, Operation, Plan, Provider
from tollway.policy.walker import Walker, join

__all__ = ["EXPLICIT", "check_budgets"]

EXPLICIT = "explicit"
"""The ``price`` of an operation or provider whose callers give every amount."""


def check_budgets(
    w: Walker,
    operations: Mapping[str, Operation],
    plans: Mapping[str, Plan],
    providers: Mapping[str, Provider],
) -> None:
    for plan in plans.values():
        for limit in plan.limits:
            if limit.kind in ("budget", "credits"):
                _plan_budget(w, limit, operations)
    for provider in providers.values():
        for limit in provider.limits:
            if limit.kind == "budget" and provider.price is None and not provider.explicit_amount:
                w.error(
                    join(limit.path, "budget"),
                    f"{_text(limit)} counts calls to provider {show(provider.name)}, which has no "
                    f'price; expected a price on it (price = "0.005 USD", or a list of tiers), '
                    f'or price = "{EXPLICIT}" if every call gives its amount=',
                )


def _plan_budget(w: Walker, limit: Limit, operations: Mapping[str, Operation]) -> None:
    counted = limit.operations if limit.operations is not None else tuple(operations)
    key = limit.kind
    for name in counted:
        operation = operations.get(name)
        if operation is None or operation.price is not None:
            continue
        if not operation.explicit_amount:
            w.error(
                join(limit.path, key),
                f"{_text(limit)} counts operation {show(name)}, which has no price; expected "
                f'a price on it ({join(join("operations", name), "price")} = "0.001 USD"), '
                f'price = "{EXPLICIT}" there if every call gives its amount=, or '
                f"operations = [...] on this limit without {show(name)}",
            )
        elif operation.endpoints:
            w.error(
                join(limit.path, key),
                f"{_text(limit)} counts operation {show(name)}, whose price is "
                f'"{EXPLICIT}" (every call gives its amount=), but it has endpoints, and a '
                "request through the HTTP gate gives no amount; expected a price on it, or "
                f"operations = [...] on this limit without {show(name)}",
            )


def _text(limit: Limit) -> str:
    if limit.credits is not None:
        return f"credits {show(limit.credits)}"
    assert limit.budget is not None
    return f"budget {show(limit.budget.text)}"
