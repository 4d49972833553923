"""Rounding money once, where an invoice line is made: to the currency's minor unit (ISO 4217),
half to even. A total is the sum of its rounded lines, never a rounding of their sum."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MINOR_UNITS: dict[str, int] = {
    # Currencies whose minor unit is not the cent (ISO 4217); every other one has 2 digits.
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG"), 0),
    **dict.fromkeys(("RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


def minor_unit(currency: str) -> int:
    """How many decimal digits the currency's amounts have (2 unless ISO 4217 says otherwise)."""
    return MINOR_UNITS.get(currency.upper(), 2)


def round_line(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half to even to the currency's minor unit."""
    return amount.quantize(Decimal(1).scaleb(-minor_unit(currency)), rounding=ROUND_HALF_EVEN)


__all__ = ["MINOR_UNITS", "minor_unit", "round_line"]
