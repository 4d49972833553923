"""Checkers for single policy values: types, ranges, and the small string languages.

Every checker takes one raw value and returns the typed value or raises `ValueError` whose
message names the bad value and what was expected; `parse.py` adds the key path. The regular
expressions are written without named groups so `schema.py` can hand the very same patterns to
JSON Schema (ECMA-262) editors, and an editor never accepts what `load` refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, time
from decimal import Decimal
from typing import TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tollway.money import MAX_MICROS, Money
from tollway.policy.model import PERIODS, Budget, Grace, Period, Quota, Rate

T = TypeVar("T")
Check = Callable[[object], T]

PERIOD_WORDS = ", ".join(PERIODS)
MAX_QUOTA = MAX_MICROS  # counts stay below 2**53 so Lua's doubles hold them exactly
MAX_RATE_COUNT = 10**9
MAX_RATE_PERIOD_US = 366 * 86_400 * 1_000_000
MAX_PERCENT = Decimal(1000)

_S, _M, _H, _D = 1_000_000, 60_000_000, 3_600_000_000, 86_400_000_000
RATE_UNITS: dict[str, int] = {
    "s": _S, "sec": _S, "second": _S,
    "m": _M, "min": _M, "minute": _M,
    "h": _H, "hr": _H, "hour": _H,
    "d": _D, "day": _D,
}  # fmt: skip
# Plurals only for the words: "ms" would read as milliseconds, "hs"/"ds" as nothing at all.
RATE_UNITS.update({unit + "s": us for unit, us in list(RATE_UNITS.items()) if len(unit) > 1})

COUNT = r"[0-9]+(?:_[0-9]+)*"
PERIOD = "(?:" + "|".join(PERIODS) + ")"
AMOUNT = r"[0-9][0-9_]*(?:\.[0-9]+)?"  # the amount syntax of tollway.money.Money.parse
RATE_UNIT = "(?:" + "|".join(sorted(RATE_UNITS, key=len, reverse=True)) + ")"

RATE_PATTERN = rf"^({COUNT})/([0-9]*)({RATE_UNIT})$"
QUOTA_PATTERN = rf"^({COUNT})/({PERIOD})$"
MONEY_PATTERN = rf"^\s*{AMOUNT}\s*[A-Z]{{3}}\s*$"
BUDGET_PATTERN = rf"^({AMOUNT}\s*[A-Z]{{3}})/({PERIOD})$"
PERCENT_PATTERN = r"^([0-9]+(?:\.[0-9]+)?)%$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENDPOINT_PATTERN = r"^(?:[A-Z]+|\*) /\S*$"
STORE_SCHEMES = ("memory", "redis", "rediss", "redis+cluster", "rediss+cluster")
STORE_URL_PATTERN = "^(?:" + "|".join(re.escape(s) for s in STORE_SCHEMES) + ")://"

_RATE = re.compile(RATE_PATTERN)
_QUOTA = re.compile(QUOTA_PATTERN)
_MONEY = re.compile(MONEY_PATTERN)
_BUDGET = re.compile(BUDGET_PATTERN)
_PERCENT = re.compile(PERCENT_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_ENDPOINT = re.compile(ENDPOINT_PATTERN)


def show(value: object) -> str:
    """The value as the document spells it: strings in double quotes, ``true``, ``null``."""
    if isinstance(value, (str, bool, int, float, list, dict)) or value is None:
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (date, time)):
        return "a date or time"
    return "null" if value is None else f"a {type(value).__name__}"


def got(value: object) -> str:
    """``"10" (a string)``: the value and its type, for "expected X, got ..." messages."""
    return "null" if value is None else f"{show(value)} ({kind_of(value)})"


def quoted(names: Iterable[object]) -> str:
    return ", ".join(show(name) for name in names)


# -- plain types --------------------------------------------------------------------------


def integer(low: int, high: int | None = None) -> Check[int]:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def check(value: object) -> int:
        # bool is an int subclass, but `timeout_ms = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected {expected}, got {got(value)}")
        if value < low or (high is not None and value > high):
            raise ValueError(f"expected {expected}, got {value}")
        return value

    return check


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {got(value)}")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {got(value)}")
    return value


def nonempty(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {got(value)}")
    return value


def one_of(*options: str) -> Check[str]:
    expected = " or ".join(show(option) for option in options)

    def check(value: object) -> str:
        if value not in options:
            raise ValueError(f"expected {expected}, got {got(value)}")
        return value

    return check


def text(parse: Callable[[str], T], example: str) -> Check[T]:
    """A string in one of the small languages; a non-string says what the string looks like."""

    def check(value: object) -> T:
        if not isinstance(value, str):
            raise ValueError(f"expected a string such as {show(example)}, got {got(value)}")
        return parse(value)

    return check


# -- the small languages ------------------------------------------------------------------


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def parse_env_name(text: str) -> str:
    if not _ENV_NAME.match(text):
        raise ValueError(
            f"{show(text)} is not an environment variable name; expected letters, digits and "
            "underscores, not starting with a digit"
        )
    return text


def parse_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{show(value)} is not a valid name; expected 1 to 64 letters, digits, "
            '"_", "." or "-", starting with a letter or a digit'
        )
    return value


def parse_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f'{show(value)} is not a known IANA timezone; expected a name such as "UTC" '
            'or "America/New_York"'
        ) from None
    return value


def parse_store_url(value: str) -> str:
    if not re.match(STORE_URL_PATTERN, value):
        raise ValueError(
            f"{show(value)} is not a store URL; expected SCHEME://... with SCHEME one of "
            + ", ".join(STORE_SCHEMES)
        )
    return value


def parse_endpoint(value: str) -> str:
    if not _ENDPOINT.fullmatch(value):
        raise ValueError(
            f'{show(value)} is not an endpoint; expected "METHOD /path" such as '
            '"GET /v1/geocode", with METHOD in capitals or "*"'
        )
    return value


def parse_rate(value: str) -> Rate:
    match = _RATE.fullmatch(value)
    if match is None:
        raise ValueError(
            f'{show(value)} is not a rate; expected N/UNIT or N/KUNIT such as "5/s" or "10/5s", '
            "with UNIT one of s, sec, second, m, min, minute, h, hr, hour, d, day"
        )
    count, multiplier = int(match[1]), int(match[2] or 1)
    period_us = multiplier * RATE_UNITS[match[3]]
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(f"{show(value)}: expected a count from 1 to {MAX_RATE_COUNT:_}")
    if not 1 <= period_us <= MAX_RATE_PERIOD_US:
        raise ValueError(f"{show(value)}: expected a period from 1 second to 366 days")
    # GCRA spaces units by period/count; below one microsecond the store cannot tell them apart.
    if period_us // count < 1:
        raise ValueError(
            f"{show(value)} is more than one unit per microsecond; expected at most "
            f"{period_us:_} per {match[2]}{match[3]}"
        )
    return Rate(count=count, period_us=period_us, text=value)


def parse_quota(value: str) -> Quota:
    match = _QUOTA.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{show(value)} is not a quota; expected N/PERIOD with PERIOD one of {PERIOD_WORDS}"
        )
    count = int(match[1])
    if not 1 <= count <= MAX_QUOTA:
        raise ValueError(f"{show(value)}: expected a count from 1 to {MAX_QUOTA:_}")
    return Quota(count=count, period=cast(Period, match[2]), text=value)


def parse_money(value: str) -> Money:
    if not _MONEY.fullmatch(value):
        raise ValueError(
            f'{show(value)} is not an amount of money; expected AMOUNT CURRENCY such as "0.005 USD"'
        )
    return Money.parse(value)  # its ValueError says "too many decimals" or "too large"


LEDGER_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


def parse_ledger_url(value: str) -> str:
    if not value.startswith(LEDGER_SCHEMES) or value in LEDGER_SCHEMES:
        raise ValueError(
            f"{show(value)} is not a ledger URL; expected sqlite:///PATH or "
            "postgresql://USER@HOST:PORT/DB"
        )
    return value


def parse_tier_price(value: str) -> tuple[Money, int]:
    """``"5.00 USD/1000"`` (per 1000 units) or ``"0.005 USD"`` (per unit): the money and the
    units it buys."""
    amount, slash, per = value.rpartition("/")
    if not slash:
        amount, per = value, "1"
    if not per.strip().isdigit() or int(per) < 1 or not _MONEY.fullmatch(amount):
        raise ValueError(
            f"{show(value)} is not a tier price; expected AMOUNT CURRENCY/UNITS such as "
            '"5.00 USD/1000", or AMOUNT CURRENCY per unit'
        )
    return Money.parse(amount), int(per)


def parse_budget(value: str) -> Budget:
    match = _BUDGET.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{show(value)} is not a budget; expected AMOUNT CURRENCY/PERIOD such as "
            f'"50.00 USD/day", with PERIOD one of {PERIOD_WORDS}'
        )
    amount = Money.parse(match[1])
    if amount.micros == 0:
        raise ValueError(f"{show(value)}: expected an amount above 0")
    return Budget(amount=amount, period=cast(Period, match[2]), text=value)


def parse_percent(value: str) -> Decimal:
    """``"20%"`` as the fraction ``Decimal("0.2")``, above 0% and at most 1000%."""
    match = _PERCENT.fullmatch(value)
    if match is None:
        raise ValueError(f'{show(value)} is not a percentage; expected a number and "%" like "20%"')
    percent = Decimal(match[1])
    if not 0 < percent <= MAX_PERCENT:
        raise ValueError(f"{show(value)}: expected a percentage above 0% and at most 1000%")
    return percent / 100


def threshold(value: object) -> Decimal:
    """A fraction of a limit: ``0.8``, ``1`` or ``"80%"``; above 0 and at most 10."""
    if isinstance(value, str):
        return parse_percent(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f'expected a fraction such as 0.8 or a percentage such as "80%", got {got(value)}'
        )
    # str() first: Decimal(0.8) would carry the float's binary error into the threshold.
    fraction = Decimal(str(value))
    if not fraction.is_finite() or not 0 < fraction <= MAX_PERCENT / 100:
        raise ValueError(f"expected a fraction above 0 and at most 10, got {show(value)}")
    return fraction


def grace(kind: str | None, budget: Budget | None) -> Check[Grace]:
    """``"20%"`` of the limit, or an absolute allowance: units for a quota, money for a budget."""
    currency = budget.amount.currency if budget is not None else None

    def check(value: object) -> Grace:
        if isinstance(value, str) and value.endswith("%"):
            return Grace(fraction=parse_percent(value), text=value)
        if kind != "budget":
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return Grace(units=value, text=str(value))
            raise ValueError(
                f'expected a percentage such as "20%" or a whole number of units >= 0, '
                f"got {got(value)}"
            )
        # A budget counts micro-units of money, so a bare number would be ambiguous.
        example = f"5.00 {currency or 'USD'}"
        if not isinstance(value, str):
            raise ValueError(
                f'expected a percentage such as "20%" or an amount such as {show(example)}, '
                f"got {got(value)}"
            )
        money = parse_money(value)
        if currency is not None and money.currency != currency:
            raise ValueError(
                f"{show(value)} is in {money.currency}; expected an amount in {currency}, "
                "the budget's currency"
            )
        return Grace(units=money.micros, text=value)

    return check
