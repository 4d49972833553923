"""The ``limits`` list of a plan or a provider: one `Limit` per item, each checked whole.

A limit has exactly one of ``rate``, ``quota``, ``budget``, ``credits``; keys that mean nothing
for its kind are reported, as are repeated names and a budget whose currency differs from the
prices it counts. ``credits = "USD"`` (plans only) draws each step's money from the subject's
prepaid balance in that currency; ``overage = true`` lets a step the balance cannot cover pass
(nothing drawn: it is billed on the invoice). A plan has at most one credits limit: they would
share one balance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import cast

from tollway.policy import fields
from tollway.policy.fields import show, text
from tollway.policy.model import Limit, LimitKind, OnError, Per
from tollway.policy.walker import NAME, TIMEZONE, Owner, Table, Walker, join

__all__ = ["KINDS", "LIMIT_KEYS", "ON_ERROR", "parse_limits"]

KINDS: tuple[LimitKind, ...] = ("rate", "quota", "budget", "credits")
PLAN_ONLY_LIMIT_KEYS = ("operations", "per")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
LIMIT_KEYS = (
    "name",
    *KINDS,
    "burst",
    "timezone",
    "anchor",
    "grace",
    "thresholds",
    "on_error",
    "shadow",
    "overage",
    *PLAN_ONLY_LIMIT_KEYS,
)
CREDITS_KEYS = ("name", "credits", "on_error", "shadow", "overage", "operations")
"""The keys a credits limit takes: it has no window, burst, grace or thresholds."""
ON_ERROR = fields.one_of("open", "closed")
PER = fields.one_of("subject", "operation")


def parse_limits(w: Walker, table: Table, owner: Owner) -> tuple[Limit, ...]:
    if "limits" not in table:
        return ()
    path = join(owner.path, "limits")
    limits: list[Limit] = []
    used: dict[str, str] = {}
    credits: str | None = None
    for i, raw in enumerate(w.items(table["limits"], path)):
        item_path = f"{path}[{i}]"
        limit = _limit(w, raw, item_path, owner)
        if limit is None:
            continue
        if limit.kind == "credits":
            if credits is not None:
                w.error(
                    join(item_path, "credits"),
                    f"a second credits limit; {credits} is one already, and both would draw "
                    f"from one balance; expected one credits limit in {owner.path}",
                )
                continue
            credits = item_path
        if limit.name not in used:
            used[limit.name] = item_path
            limits.append(limit)
        elif isinstance(raw, Mapping) and "name" in raw:
            w.error(
                join(item_path, "name"),
                f"{show(limit.name)} is already the name of {used[limit.name]}; "
                f"expected a name unique within {owner.path}",
            )
        else:
            w.error(
                item_path,
                f"the default name {show(limit.name)} is already the name of "
                f'{used[limit.name]}; expected a unique name: set name = "..." on this limit',
            )
    return tuple(limits)


def _limit(w: Walker, raw: object, path: str, owner: Owner) -> Limit | None:
    t = w.table(raw, path, LIMIT_KEYS)
    if not isinstance(raw, Mapping):
        return None
    before = len(w.issues)
    kinds = [kind for kind in KINDS if kind in t]
    kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        given = " and ".join(kinds) if kinds else "none"
        w.error(path, f"expected exactly one of rate, quota, budget, credits; got {given}")
    if kind == "credits":
        return _credits(w, t, path, owner)
    if "overage" in t:
        w.error(
            join(path, "overage"),
            f"overage = {show(t['overage'])} only applies to a credits limit; "
            + (f"this limit is a {kind} ({show(t[kind])})" if kind else "this limit is not one"),
        )
    rate = w.get(t, path, "rate", text(fields.parse_rate, "5/s"), None)
    quota = w.get(t, path, "quota", text(fields.parse_quota, "1000/hour"), None)
    budget = w.get(t, path, "budget", text(fields.parse_budget, "50.00 USD/day"), None)
    period = quota.period if quota else budget.period if budget else None
    if kind is not None:
        _applicable(w, t, path, kind, period)
    if owner.is_provider:
        for key in PLAN_ONLY_LIMIT_KEYS:
            if key in t:
                w.error(
                    join(path, key),
                    f"{key} = {show(t[key])} is not allowed in a provider limit; "
                    "expected it left out: a provider's limits count every call to it",
                )
    operations = None
    if "operations" in t and not owner.is_provider:
        operations = w.references(
            t["operations"], join(path, "operations"), w.operation_names, "operation"
        )
    if budget is not None and kind == "budget":
        _currency(w, budget.amount.currency, budget.text, path, owner, operations)
    default_name = "rate" if kind == "rate" else f"{kind}_{period}"
    name = w.get(t, path, "name", NAME, default_name)
    burst = w.get(t, path, "burst", fields.integer(1, fields.MAX_RATE_COUNT), None)
    timezone = w.get(t, path, "timezone", TIMEZONE, owner.timezone)
    anchor = w.get(t, path, "anchor", fields.integer(1, 31), None)
    grace = w.get(t, path, "grace", fields.grace(kind, budget), None)
    thresholds = _thresholds(w, t, path)
    on_error = w.get(t, path, "on_error", ON_ERROR, w.on_error)
    shadow = w.get(t, path, "shadow", fields.boolean, False)
    per = w.get(t, path, "per", PER, "subject")
    if kind is None or len(w.issues) > before:
        return None
    return Limit(
        name=name,
        kind=kind,
        path=path,
        rate=rate,
        burst=burst,
        quota=quota,
        budget=budget,
        timezone=timezone,
        anchor=anchor,
        grace=grace,
        thresholds=thresholds,
        on_error=cast(OnError, on_error),
        shadow=shadow,
        operations=operations,
        per=cast(Per, per),
    )


def _credits(w: Walker, t: Table, path: str, owner: Owner) -> Limit | None:
    """A prepaid balance: a currency, no window; keys of other kinds are reported."""
    before = len(w.issues)
    if owner.is_provider:
        w.error(
            join(path, "credits"),
            f"credits = {show(t['credits'])} is not allowed in a provider limit; expected "
            "credits in a plan's limits: a prepaid balance belongs to a customer",
        )
    for key in t:
        if key not in CREDITS_KEYS:
            w.error(
                join(path, key),
                f"{key} = {show(t[key])} does not apply to a credits limit (a prepaid balance "
                f"has no window); expected only {', '.join(CREDITS_KEYS)}",
            )
    currency = w.get(t, path, "credits", _currency_code, None)
    operations = None
    if "operations" in t and not owner.is_provider:
        operations = w.references(
            t["operations"], join(path, "operations"), w.operation_names, "operation"
        )
    name = w.get(t, path, "name", NAME, "credits")
    on_error = w.get(t, path, "on_error", ON_ERROR, w.on_error)
    shadow = w.get(t, path, "shadow", fields.boolean, False)
    overage = w.get(t, path, "overage", fields.boolean, False)
    if currency is None or len(w.issues) > before:
        return None
    _currency(w, currency, f'credits = "{currency}"', path, owner, operations, "credits")
    if len(w.issues) > before:
        return None
    return Limit(
        name=name,
        kind="credits",
        path=path,
        on_error=cast(OnError, on_error),
        shadow=shadow,
        operations=operations,
        credits=currency,
        overage=overage,
    )


def _currency_code(value: object) -> str:
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise ValueError(f'{show(value)} is not a currency; expected a 3-letter code such as "USD"')
    return value


def _applicable(w: Walker, t: Table, path: str, kind: str, period: str | None) -> None:
    """Report keys that mean nothing for this kind of limit."""
    this = f"this limit is a {kind} ({show(t[kind])})"
    if "burst" in t and kind != "rate":
        w.error(join(path, "burst"), f"burst = {show(t['burst'])} only applies to a rate; {this}")
    for key in ("grace", "thresholds"):
        if key in t and kind == "rate":
            w.error(
                join(path, key),
                f"{key} = {show(t[key])} only applies to a quota or a budget; {this}",
            )
    if "anchor" in t and period != "month" and (kind == "rate" or period is not None):
        w.error(
            join(path, "anchor"),
            f"anchor = {show(t['anchor'])} only applies to a monthly quota or budget; {this}",
        )


def _thresholds(w: Walker, t: Table, path: str) -> tuple[Decimal, ...]:
    if "thresholds" not in t:
        return ()
    list_path = join(path, "thresholds")
    values: list[Decimal] = []
    for i, item in enumerate(w.items(t["thresholds"], list_path)):
        item_path = f"{list_path}[{i}]"
        value = w.check(item, item_path, fields.threshold, None)
        if value is not None and values and value <= values[-1]:
            w.error(
                item_path,
                f"{show(item)} is not above the threshold before it; "
                "expected thresholds in strictly increasing order",
            )
        elif value is not None:
            values.append(value)
    return tuple(values)


def _currency(
    w: Walker,
    currency: str,
    budget: str,
    path: str,
    owner: Owner,
    operations: tuple[str, ...] | None,
    key: str = "budget",
) -> None:
    """A budget (or credits) counts units times a price, so every price it may use is in its
    currency."""
    budget_path = join(path, key)
    if owner.price is not None:
        if owner.price.currency != currency:
            w.error(
                budget_path,
                f"{show(budget)} is in {currency} but the provider's price "
                f"{show(str(owner.price))} is in {owner.price.currency}; "
                "expected one currency",
            )
        return
    for name in operations if operations is not None else tuple(w.operations):
        price = w.operations[name].price if name in w.operations else None
        if price is not None and price.currency != currency:
            w.error(
                budget_path,
                f"{show(budget)} is in {currency} but operation {show(name)} is priced in "
                f"{price.currency} ({show(str(price))}); expected prices in {currency}",
            )
