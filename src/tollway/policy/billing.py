"""The billing parts of a policy: ``[billing]``, a plan's ``fee`` / ``trial_days`` /
``trial_then`` / ``charges``, and ``[coupons.CODE]``.

Every issue goes to the walker with its key path (a charge's own `PolicyError` is unpacked
into it), so one `PolicyError` lists them all. A charge prices a meter: an operation or a name
in ``[billing] meters``; a meter drawn from a plan's prepaid credits has no charge on that plan
(credits usage is priced at the price drawn in the step).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import cast

from tollway.errors import PolicyError
from tollway.money import Money
from tollway.policy import fields
from tollway.policy.charges import Charge
from tollway.policy.fields import got, quoted, show, text
from tollway.policy.model import (
    BillingAnchor,
    BillingConfig,
    BillingPeriod,
    Coupon,
    CouponDuration,
    Fee,
    FeeTiming,
    Limit,
    Plan,
)
from tollway.policy.walker import MONEY, NAME, TIMEZONE, Table, Walker, join

__all__ = [
    "BILLING_KEYS",
    "COUPON_KEYS",
    "PLAN_BILLING_KEYS",
    "parse_billing",
    "parse_coupons",
    "plan_billing",
]

BILLING_KEYS = (
    "currency",
    "period",
    "anchor",
    "timezone",
    "invoice_grace",
    "numbering",
    "credit_note_numbering",
    "issuer",
    "meters",
)
PLAN_BILLING_KEYS = ("fee", "trial_days", "trial_then", "charges")
FEE_KEYS = ("amount", "timing")
COUPON_KEYS = ("percent", "amount", "duration", "applies_to", "max_redemptions")
CHARGES_MAX = 100
_CURRENCY = re.compile(r"[A-Z]{3}")
_DURATION = re.compile(r"([0-9]{1,6})(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_currency(value: str) -> str:
    if not _CURRENCY.fullmatch(value):
        raise ValueError(f"{show(value)} is not a currency; expected 3 uppercase letters like USD")
    return value


def parse_duration_s(value: str) -> int:
    """``"30m"``, ``"1h"``, ``"2d"`` as seconds (at most 31 days)."""
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ValueError(
            f'{show(value)} is not a duration; expected a number and s|m|h|d like "1h"'
        )
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if seconds > 31 * 86_400:
        raise ValueError(f"{show(value)}: expected at most 31 days")
    return seconds


def parse_numbering(value: str) -> str:
    """A number template with ``{seq...}`` and maybe ``{year}``: formatted once to check it."""
    if "{seq" not in value or len(value) > 64:
        raise ValueError(
            f"{show(value)}: expected a template of at most 64 characters with {{seq}} "
            'like "INV-{year}-{seq:06d}"'
        )
    try:
        value.format(year=2026, seq=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{show(value)} is not a number template ({exc}); expected only {{year}} and {{seq}}"
        ) from None
    return value


def parse_billing(w: Walker, doc: Table) -> BillingConfig | None:
    if "billing" not in doc:
        return None
    t, d = w.table(doc["billing"], "billing", BILLING_KEYS), BillingConfig()
    p = "billing"
    return BillingConfig(
        currency=w.get(t, p, "currency", text(parse_currency, "USD"), d.currency),
        period=cast(
            BillingPeriod, w.get(t, p, "period", fields.one_of("day", "week", "month"), d.period)
        ),
        anchor=cast(
            BillingAnchor,
            w.get(t, p, "anchor", fields.one_of("calendar", "subscription"), d.anchor),
        ),
        timezone=w.get(t, p, "timezone", TIMEZONE, w.timezone),
        invoice_grace_s=w.get(
            t, p, "invoice_grace", text(parse_duration_s, "1h"), d.invoice_grace_s
        ),
        numbering=w.get(t, p, "numbering", text(parse_numbering, d.numbering), d.numbering),
        credit_note_numbering=w.get(
            t,
            p,
            "credit_note_numbering",
            text(parse_numbering, d.credit_note_numbering),
            d.credit_note_numbering,
        ),
        issuer=w.get(t, p, "issuer", fields.string, d.issuer),
        meters=w.each(t, p, "meters", NAME),
    )


def _money_in(w: Walker, value: object, path: str, billing: BillingConfig | None) -> object:
    money = w.check(value, path, MONEY, None)
    if money is None:
        return None
    if billing is None:
        w.error(path, f"{show(value)}: money here needs a [billing] section; add one")
        return None
    if money.currency != billing.currency:
        w.error(
            path,
            f"{show(value)} is in {money.currency}; expected the billing currency "
            f"{billing.currency}",
        )
        return None
    return money


def plan_billing(
    w: Walker, t: Table, plan: Plan, plan_names: list[str], billing: BillingConfig | None
) -> Plan:
    """``plan`` with its billing keys from its table ``t``."""
    path = plan.path
    fee = None
    if "fee" in t:
        fee_path = join(path, "fee")
        ft = w.table(t["fee"], fee_path, FEE_KEYS)
        if "amount" not in ft:
            w.error(join(fee_path, "amount"), 'missing; expected an amount like "49.00 USD"')
        amount = (
            _money_in(w, ft["amount"], join(fee_path, "amount"), billing)
            if "amount" in ft
            else None
        )
        timing = w.get(ft, fee_path, "timing", fields.one_of("advance", "arrears"), "arrears")
        if amount is not None:
            fee = Fee(amount=cast(Money, amount), timing=cast(FeeTiming, timing))
    trial_days = w.get(t, path, "trial_days", fields.integer(0, 365), 0)
    trial_then = w.get(t, path, "trial_then", NAME, None)
    if trial_then is not None and (trial_then == plan.name or trial_then not in plan_names):
        others = [n for n in plan_names if n != plan.name]
        expected = f"one of {quoted(others)}" if others else "another plan declared in [plans]"
        w.error(join(path, "trial_then"), f"{show(trial_then)} is not valid; expected {expected}")
        trial_then = None
    charges = _charges(w, t, plan, billing)
    return Plan(
        name=plan.name,
        limits=plan.limits,
        fee=fee,
        trial_days=trial_days,
        trial_then=trial_then,
        charges=charges,
        path=path,
    )


def _charges(w: Walker, t: Table, plan: Plan, billing: BillingConfig | None) -> tuple[Charge, ...]:
    if "charges" not in t:
        return ()
    list_path = join(plan.path, "charges")
    items = w.items(t["charges"], list_path)
    if items and billing is None:
        w.error(list_path, "charges need a [billing] section; add one")
    if len(items) > CHARGES_MAX:
        w.error(list_path, f"{len(items)} charges; expected at most {CHARGES_MAX}")
        items = items[:CHARGES_MAX]
    known = list(w.operation_names) + list(billing.meters if billing else ())
    credits = _credit_limits(plan.limits)
    seen: dict[str, str] = {}
    out: list[Charge] = []
    for i, spec in enumerate(items):
        path = f"{list_path}[{i}]"
        if not isinstance(spec, Mapping):
            w.error(path, f"expected a table, got {got(spec)}")
            continue
        try:
            charge = Charge.parse(spec, path=path)
        except PolicyError as exc:
            for issue in exc.issues:
                w.error(issue.path, issue.message)
            continue
        meter = charge.meter
        if meter is None:
            w.error(
                join(path, "meter"), "missing; expected an operation or a [billing] meters name"
            )
            continue
        if meter not in known:
            close = difflib.get_close_matches(meter, known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            expected = f"one of {quoted(known)}" if known else "an operation or a [billing] meter"
            w.error(join(path, "meter"), f"{show(meter)} is not a meter; expected {expected}{hint}")
            continue
        if meter in seen:
            w.error(
                join(path, "meter"),
                f"{show(meter)} is charged twice on this plan (also at {seen[meter]}); expected "
                "one charge per meter",
            )
            continue
        for limit in credits:
            if limit.applies_to(meter) and meter in w.operation_names:
                w.error(
                    join(path, "meter"),
                    f"{show(meter)} is paid from prepaid credits ({limit.path}); expected no "
                    "charge for it: credits usage is priced at the price drawn in the step",
                )
                break
        seen[meter] = path
        out.append(charge)
    return tuple(out)


def _credit_limits(limits: tuple[Limit, ...]) -> list[Limit]:
    return [limit for limit in limits if limit.credits is not None]


def _percent(value: object) -> Decimal:
    if isinstance(value, (bool, float)):
        raise ValueError(f'{show(value)}: expected an integer or a decimal text like "12.5"')
    if isinstance(value, int):
        percent = Decimal(value)
    elif isinstance(value, str):
        try:
            percent = Decimal(value)
        except InvalidOperation:
            raise ValueError(f'{show(value)} is not a number; expected text like "12.5"') from None
    else:
        raise ValueError(f'expected an integer or a decimal text like "12.5", got {got(value)}')
    if not percent.is_finite() or not 0 < percent <= 100:
        raise ValueError(f"{show(value)}: expected a percentage above 0 and at most 100")
    return percent


def _duration(value: object) -> CouponDuration:
    if value in ("once", "forever"):
        return cast(CouponDuration, value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1200:
        return value
    raise ValueError(f'expected "once", "forever" or a number of periods 1..1200, got {got(value)}')


def parse_coupons(w: Walker, doc: Table, billing: BillingConfig | None) -> dict[str, Coupon]:
    coupons: dict[str, Coupon] = {}
    section = w.section(doc, "coupons")
    if section and billing is None:
        w.error("coupons", "coupons need a [billing] section; add one")
    meters = set(w.operation_names) | set(billing.meters if billing else ())
    for code, raw in section.items():
        path = join("coupons", code)
        if not _CODE.fullmatch(code):
            w.error(path, f"{show(code)} is not a coupon code; expected 1..64 of A-Z a-z 0-9 _ -")
            continue
        t = w.table(raw, path, COUPON_KEYS)
        if ("percent" in t) == ("amount" in t):
            w.error(path, "expected exactly one of percent or amount")
        percent = w.get(t, path, "percent", _percent, None)
        amount = _money_in(w, t["amount"], join(path, "amount"), billing) if "amount" in t else None
        applies = (
            w.each(t, path, "applies_to", fields.string)
            if "applies_to" in t
            else ("fee", "charges")
        )
        for i, target in enumerate(applies):
            if target not in ("fee", "charges") and target not in meters:
                w.error(
                    f"{join(path, 'applies_to')}[{i}]",
                    f'{show(target)} is not valid; expected "fee", "charges" or a meter name',
                )
        coupons[code] = Coupon(
            code=code,
            percent=percent,
            amount=cast("Money | None", amount),
            duration=w.get(t, path, "duration", _duration, "once"),
            applies_to=tuple(applies),
            max_redemptions=w.get(t, path, "max_redemptions", fields.integer(1), None),
            path=path,
        )
    return coupons
