"""What a quantity of a meter costs in one period: the charge models, exact in `Decimal`.

A charge prices one meter's quantity in a period, under one of four models:

- ``unit``: every unit at ``unit``.
- ``package``: ``amount`` per started package of ``size`` units, after ``free`` units.
- ``graduated``: each tier prices the units that fall in it, plus its ``flat`` once reached.
- ``volume``: the whole quantity at the tier it reaches (a fractional quantity by its
  ceiling), plus that tier's ``flat``.

Tiers end at ``up_to`` (inclusive); the last has none. ``block = N`` counts blocks of N units
(a started block counts whole), and then ``up_to`` and ``unit`` are per block.
``flat_at_zero`` says whether the first tier's flat is due for a quantity of 0. ``minimum``
and ``maximum`` are a floor and a cap on the period's amount.

`Charge.amount` is what a quantity adds after ``already`` units of the same period
(progressive billing): the total at ``already + quantity`` less the total at ``already``, so
the parts of any split add up to the whole exactly (with volume tiers a part can be
negative). Nothing is rounded here: an invoice rounds each line once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from tollway.errors import PolicyError, PolicyIssue

Model = Literal["unit", "package", "graduated", "volume"]
Aggregation = Literal["sum", "count", "unique"]
MODELS: tuple[Model, ...] = ("unit", "package", "graduated", "volume")
AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "count", "unique")
MAX_TIERS = 100
_KEYS = {
    "unit": {"unit"},
    "package": {"size", "amount", "free"},
    "graduated": {"tiers", "block", "flat_at_zero"},
    "volume": {"tiers", "block", "flat_at_zero"},
}
_COMMON = {"model", "meter", "minimum", "maximum", "aggregation", "attribute"}
_TIER_KEYS = {"up_to", "unit", "flat"}
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: Decimal | None
    """The last unit (or block) of the tier, inclusive; None for the last tier."""
    unit: Decimal
    flat: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Charge:
    model: Model
    meter: str | None = None
    unit: Decimal = ZERO
    """``unit``: the price of one unit."""
    size: int = 1
    package_amount: Decimal = ZERO
    free: Decimal = ZERO
    """``package``: the package's size and price, and the units given before the first."""
    tiers: tuple[Tier, ...] = ()
    block: int = 1
    flat_at_zero: bool = False
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    aggregation: Aggregation = "sum"
    attribute: str | None = None
    """``unique``: the event attribute whose distinct values are counted."""

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str = "charge") -> Charge:
        """A charge from its policy table; `PolicyError` lists every problem, by key path."""
        return _Parser(path).charge(spec)

    def total(self, quantity: Decimal) -> Decimal:
        """The period's amount for ``quantity`` units (``minimum`` and ``maximum`` applied)."""
        if quantity < 0:
            raise ValueError(f"quantity: {quantity} is negative; expected 0 or more")
        amount = self._raw(quantity)
        if self.minimum is not None and amount < self.minimum:
            amount = self.minimum
        if self.maximum is not None and amount > self.maximum:
            amount = self.maximum
        return amount

    def amount(self, quantity: Decimal, already: Decimal = ZERO) -> Decimal:
        """What ``quantity`` more units add after ``already`` units of the same period."""
        return self.total(already + quantity) - self.total(already)

    def _raw(self, quantity: Decimal) -> Decimal:
        if self.model == "unit":
            return quantity * self.unit
        if self.model == "package":
            billable = max(ZERO, quantity - self.free)
            return _ceil(billable / self.size) * self.package_amount
        if self.block > 1:
            quantity = _ceil(quantity / self.block)
        if self.model == "graduated":
            return self._graduated(quantity)
        return self._volume(quantity)

    def _graduated(self, quantity: Decimal) -> Decimal:
        amount, below = ZERO, ZERO
        for n, tier in enumerate(self.tiers):
            if quantity <= below and not (n == 0 and self.flat_at_zero):
                break
            top = quantity if tier.up_to is None else min(quantity, tier.up_to)
            amount += max(ZERO, top - below) * tier.unit + tier.flat
            if tier.up_to is None or quantity <= tier.up_to:
                break
            below = tier.up_to
        return amount

    def _volume(self, quantity: Decimal) -> Decimal:
        if quantity == 0:
            return self.tiers[0].flat if self.flat_at_zero else ZERO
        reached = _ceil(quantity)
        for tier in self.tiers:
            if tier.up_to is None or reached <= tier.up_to:
                return quantity * tier.unit + tier.flat
        raise AssertionError("the last tier has no end")  # parse guarantees it


def _ceil(value: Decimal) -> Decimal:
    return Decimal(math.ceil(value))


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.issues: list[PolicyIssue] = []

    def fail(self, where: str, message: str) -> None:
        self.issues.append(PolicyIssue(f"{self.path}{where}", message))

    def charge(self, spec: Mapping[str, Any]) -> Charge:
        if not isinstance(spec, Mapping):
            raise PolicyError([PolicyIssue(self.path, f"{spec!r} is not a table")])
        model = spec.get("model")
        if model not in MODELS:
            raise PolicyError(
                [PolicyIssue(f"{self.path}.model", f"{model!r}; expected one of {list(MODELS)}")]
            )
        for key in sorted(set(spec) - _KEYS[model] - _COMMON):
            allowed = sorted(_KEYS[model] | _COMMON)
            self.fail(f".{key}", f"is not a key of a {model} charge; expected one of {allowed}")
        meter = spec.get("meter")
        if meter is not None and (not isinstance(meter, str) or not meter):
            self.fail(".meter", f"{meter!r}; expected a meter's name")
        fields: dict[str, Any] = {}
        if model == "unit":
            fields["unit"] = self.money(spec, "unit", required=True)
        elif model == "package":
            fields["size"] = self.count(spec, "size", required=True)
            fields["package_amount"] = self.money(spec, "amount", required=True)
            fields["free"] = self.money(spec, "free") or ZERO
        else:
            fields["tiers"] = self.tiers(spec.get("tiers"))
            fields["block"] = self.count(spec, "block") or 1
            flat = spec.get("flat_at_zero", False)
            if not isinstance(flat, bool):
                self.fail(".flat_at_zero", f"{flat!r}; expected true or false")
            fields["flat_at_zero"] = flat is True
        minimum, maximum = self.money(spec, "minimum"), self.money(spec, "maximum")
        if minimum is not None and maximum is not None and maximum < minimum:
            self.fail(".maximum", f"{maximum} is below the minimum {minimum}")
        aggregation = spec.get("aggregation", "sum")
        if aggregation not in AGGREGATIONS:
            self.fail(".aggregation", f"{aggregation!r}; expected one of {list(AGGREGATIONS)}")
        attribute = spec.get("attribute")
        if aggregation == "unique" and not (isinstance(attribute, str) and attribute):
            self.fail(".attribute", f"{attribute!r}; a unique count names the attribute")
        if self.issues:
            raise PolicyError(self.issues)
        return Charge(
            model,
            meter,
            minimum=minimum,
            maximum=maximum,
            aggregation=aggregation,
            attribute=attribute if aggregation == "unique" else None,
            **fields,
        )

    def money(self, spec: Mapping[str, Any], key: str, *, required: bool = False) -> Any:
        return self.decimal(spec.get(key), f".{key}", required=required)

    def decimal(self, value: Any, where: str, *, required: bool = False) -> Decimal | None:
        """A price or a quantity: a string or an integer, never a float (which is not exact)."""
        if value is None:
            if required:
                self.fail(where, "is missing; expected a decimal number as a string, e.g. '0.0015'")
            return None
        if isinstance(value, (bool, float)):
            self.fail(
                where,
                f"{value!r} is a {type(value).__name__}; expected a decimal as a "
                "string (a float is not exact), e.g. '0.0015'",
            )
            return None
        try:
            number = Decimal(value) if isinstance(value, (int, str, Decimal)) else None
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            self.fail(where, f"{value!r}; expected a decimal number, e.g. '0.0015'")
            return None
        if number < 0:
            self.fail(where, f"{value!r} is negative; expected 0 or more")
            return None
        return number

    def count(self, spec: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
        value = spec.get(key)
        if value is None:
            if required:
                self.fail(f".{key}", "is missing; expected a whole number of units, 1 or more")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(f".{key}", f"{value!r}; expected a whole number of units, 1 or more")
            return None
        return value

    def tiers(self, raw: Any) -> tuple[Tier, ...]:
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            self.fail(".tiers", f"{raw!r}; expected a list of tiers, the last without up_to")
            return (Tier(None, ZERO),)
        if len(raw) > MAX_TIERS:
            self.fail(".tiers", f"has {len(raw)} tiers; expected at most {MAX_TIERS}")
            return (Tier(None, ZERO),)
        tiers: list[Tier] = []
        below = ZERO
        for n, item in enumerate(raw):
            where = f".tiers[{n}]"
            if not isinstance(item, Mapping):
                self.fail(where, f"{item!r} is not a table")
                continue
            for key in sorted(set(item) - _TIER_KEYS):
                self.fail(
                    f"{where}.{key}", f"is not a key of a tier; expected {sorted(_TIER_KEYS)}"
                )
            last = n == len(raw) - 1
            up_to = self.decimal(item.get("up_to"), f"{where}.up_to")
            if last and "up_to" in item:
                self.fail(f"{where}.up_to", "the last tier has no end; leave up_to out")
                up_to = None
            elif not last and up_to is None and "up_to" not in item:
                self.fail(f"{where}.up_to", "is missing; only the last tier has no end")
            elif up_to is not None and up_to <= below:
                self.fail(
                    f"{where}.up_to",
                    f"{up_to} is not above the previous tier's {below}; "
                    "expected tiers in order, without overlaps",
                )
            unit = self.decimal(item.get("unit"), f"{where}.unit", required=True)
            flat = self.decimal(item.get("flat", "0"), f"{where}.flat")
            tiers.append(Tier(up_to, unit or ZERO, flat or ZERO))
            if up_to is not None:
                below = max(below, up_to)
        return tuple(tiers) or (Tier(None, ZERO),)


__all__ = ["AGGREGATIONS", "MODELS", "Charge", "Tier"]
