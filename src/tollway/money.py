"""Money: `Decimal` at the API, whole micro-units (10^-6 of the currency unit) in the store.

No float ever touches an amount: a float given as money is refused, because 0.1 as a float is
not one tenth and a budget must not drift by a micro-unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from tollway.errors import InvalidArgumentError

MICROS_PER_UNIT = 1_000_000
MICRO = Decimal("0.000001")
# Every count in the store stays below 2**53 so Lua's doubles hold it exactly.
MAX_MICROS = 10**15

_MONEY_RE = re.compile(r"^\s*(?P<amount>[0-9][0-9_]*(?:\.[0-9]+)?)\s*(?P<currency>[A-Z]{3})\s*$")


@dataclass(frozen=True, slots=True)
class Money:
    """An amount of one currency, held exactly as whole micro-units."""

    micros: int
    currency: str

    @property
    def amount(self) -> Decimal:
        return micros_to_decimal(self.micros)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    @classmethod
    def parse(cls, text: str) -> Money:
        """Parse ``"0.005 USD"``; raise `ValueError` with the expected form otherwise."""
        match = _MONEY_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f'{text!r} is not an amount of money; expected AMOUNT CURRENCY such as "0.005 USD"'
            )
        value = Decimal(match["amount"].replace("_", ""))
        return cls(micros=decimal_to_micros(value, what=repr(text)), currency=match["currency"])


def decimal_to_micros(value: Decimal, *, what: str = "amount") -> int:
    """Whole micro-units of a non-negative `Decimal`, refusing anything finer than 10^-6."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise InvalidArgumentError(
            f"{what}: {value!r} is a {type(value).__name__}; expected a Decimal "
            "(money is never a float)"
        )
    try:
        scaled = Decimal(value) * MICROS_PER_UNIT
        if not scaled.is_finite() or scaled != scaled.to_integral_value():
            raise InvalidArgumentError(
                f"{what}: {value:f} has more than 6 decimal places; expected whole micro-units "
                "(quantize it with Decimal.quantize(Decimal('0.000001')) first)"
            )
    except InvalidOperation as exc:  # pragma: no cover - Decimal signals on NaN compares
        raise InvalidArgumentError(f"{what}: {value!r} is not a finite amount") from exc
    micros = int(scaled)
    if micros < 0:
        raise InvalidArgumentError(f"{what}: {value} is negative; expected an amount >= 0")
    if micros > MAX_MICROS:
        largest = Decimal(MAX_MICROS) / MICROS_PER_UNIT
        raise InvalidArgumentError(f"{what}: {value} is too large; expected at most {largest}")
    return micros


def micros_to_decimal(micros: int) -> Decimal:
    """The `Decimal` amount of whole micro-units, with at least two decimal places."""
    return (Decimal(micros) / MICROS_PER_UNIT).quantize(MICRO).normalize() + Decimal("0.00")
