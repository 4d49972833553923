"""Invoices and credit notes: immutable values, their canonical bytes, and how a draft is built.

`build_invoice` is the one entry point the facade calls: it takes every record the invoice
depends on (`InvoiceInputs`) and returns the draft; `finalize` numbers it. An invoice is a
pure function of its inputs, computed in a fixed decimal context, so building it again over
the same records gives the same `canonical_json` bytes and the same `content_hash`.

Line order: fees, usage (by plan, meter), adjustments, discounts, then prepaid credits.
``subtotal`` is the sum of the fee, usage, adjustment and minimum lines, ``discounts`` and
``credits`` the sums of those lines (negative), ``total`` the sum of every (rounded) line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Any, Literal, cast

from tollway.billing.credits import Draw, allocate
from tollway.billing.discounts import discount_lines
from tollway.billing.periods import next_period, periods_between
from tollway.billing.proration import fee_lines
from tollway.billing.rating import credits_lines, usage_lines
from tollway.billing.records import (
    GrantRecord,
    Line,
    LineKind,
    PlanChange,
    Redemption,
    UsageTotal,
)
from tollway.billing.rounding import round_line
from tollway.clock import utc
from tollway.errors import BillingError, InvoiceError
from tollway.policy.model import BillingConfig, Policy

__all__ = [
    "CreditNote",
    "Invoice",
    "InvoiceInputs",
    "build_credit_note",
    "build_invoice",
    "finalize",
    "line_from_dict",
    "line_to_dict",
]

Status = Literal["draft", "finalized"]
CONTEXT = Context(prec=34, rounding=ROUND_HALF_EVEN)
"""Every invoice is computed in this context, whatever the caller's (determinism)."""
_SUBTOTAL_KINDS = ("fee", "usage", "adjustment", "minimum")


def rfc3339(us: int) -> str:
    """``2026-01-15T00:00:00Z`` (microseconds shown only when there are any)."""
    return utc(us).isoformat().replace("+00:00", "Z")


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def line_to_dict(line: Line) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "description": line.description,
        "amount": str(line.amount),
        "exact": str(line.exact),
        "period_start": rfc3339(line.period_start_us),
        "period_start_us": line.period_start_us,
        "period_end": rfc3339(line.period_end_us),
        "period_end_us": line.period_end_us,
        "plan": line.plan,
        "meter": line.meter,
        "quantity": _dec(line.quantity),
        "grant": line.grant,
        "coupon": line.coupon,
        "trace": dict(line.trace),
    }


def line_from_dict(data: Mapping[str, Any]) -> Line:
    quantity = data.get("quantity")
    return Line(
        kind=cast(LineKind, data["kind"]),
        description=str(data["description"]),
        amount=Decimal(data["amount"]),
        exact=Decimal(data["exact"]),
        period_start_us=int(data["period_start_us"]),
        period_end_us=int(data["period_end_us"]),
        plan=data.get("plan"),
        meter=data.get("meter"),
        quantity=None if quantity is None else Decimal(quantity),
        grant=data.get("grant"),
        coupon=data.get("coupon"),
        trace=dict(data.get("trace") or {}),
    )


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn a malformed stored document's KeyError/ValueError into an `InvoiceError`."""
    try:
        yield
    except KeyError as exc:
        raise InvoiceError(f"{what}: the field {exc} is missing") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise InvoiceError(f"{what}: a field has the wrong form ({exc})") from None


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sum(lines: Sequence[Line], kinds: Sequence[str]) -> Decimal:
    return sum((line.amount for line in lines if line.kind in kinds), Decimal(0))


@dataclass(frozen=True, slots=True, kw_only=True)
class Invoice:
    """One subject's invoice of one billing period."""

    number: str | None
    """None for a draft."""
    status: Status
    subject: str
    currency: str
    period_start_us: int
    period_end_us: int
    lines: tuple[Line, ...]
    as_of_us: int
    """The cut-off: the ledger's records with ``recorded_at_us <= as_of_us``."""
    finalized_at_us: int | None = None
    issuer: str = ""

    @property
    def period_start(self) -> datetime:
        return utc(self.period_start_us)

    @property
    def period_end(self) -> datetime:
        return utc(self.period_end_us)

    @property
    def subtotal(self) -> Decimal:
        return _sum(self.lines, _SUBTOTAL_KINDS)

    @property
    def discounts(self) -> Decimal:
        return _sum(self.lines, ("discount",))

    @property
    def credits(self) -> Decimal:
        return _sum(self.lines, ("credits",))

    @property
    def total(self) -> Decimal:
        """The sum of the rounded lines."""
        return sum((line.amount for line in self.lines), Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: Decimals as strings, times as RFC 3339 UTC and as microseconds."""
        return {
            "type": "invoice",
            "number": self.number,
            "status": self.status,
            "issuer": self.issuer,
            "subject": self.subject,
            "currency": self.currency,
            "period_start": rfc3339(self.period_start_us),
            "period_start_us": self.period_start_us,
            "period_end": rfc3339(self.period_end_us),
            "period_end_us": self.period_end_us,
            "as_of": rfc3339(self.as_of_us),
            "as_of_us": self.as_of_us,
            "finalized_at": None if self.finalized_at_us is None else rfc3339(self.finalized_at_us),
            "finalized_at_us": self.finalized_at_us,
            "lines": [line_to_dict(line) for line in self.lines],
            "subtotal": str(self.subtotal),
            "discounts": str(self.discounts),
            "credits": str(self.credits),
            "total": str(self.total),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Invoice:
        """The invoice of `to_dict`'s output; `InvoiceError` when it is not one."""
        if not isinstance(data, Mapping) or data.get("type") != "invoice":
            got = data.get("type") if isinstance(data, Mapping) else data
            raise InvoiceError(f"type: {got!r} is not an invoice; expected 'invoice'")
        with _reading("invoice"):
            return cls._read(data)

    @classmethod
    def _read(cls, data: Mapping[str, Any]) -> Invoice:
        return cls(
            number=data.get("number"),
            status=cast(Status, data["status"]),
            issuer=str(data.get("issuer", "")),
            subject=str(data["subject"]),
            currency=str(data["currency"]),
            period_start_us=int(data["period_start_us"]),
            period_end_us=int(data["period_end_us"]),
            as_of_us=int(data["as_of_us"]),
            finalized_at_us=data.get("finalized_at_us"),
            lines=tuple(line_from_dict(x) for x in data["lines"]),
        )

    def canonical_json(self) -> bytes:
        """Sorted keys, compact, UTF-8: the bytes `content_hash` is taken over."""
        return _canonical(self.to_dict())

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditNote:
    """A credit on a finalized invoice: back to the prepaid balance, or refunded."""

    number: str
    invoice_number: str
    subject: str
    currency: str
    amount: Decimal
    """Positive: what the note credits."""
    reason: str
    refund: bool
    created_at_us: int
    lines: tuple[Line, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "credit_note",
            "number": self.number,
            "invoice_number": self.invoice_number,
            "subject": self.subject,
            "currency": self.currency,
            "amount": str(self.amount),
            "reason": self.reason,
            "refund": self.refund,
            "created_at": rfc3339(self.created_at_us),
            "created_at_us": self.created_at_us,
            "lines": [line_to_dict(line) for line in self.lines],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CreditNote:
        """The credit note of `to_dict`'s output; `InvoiceError` when it is not one."""
        if not isinstance(data, Mapping) or data.get("type") != "credit_note":
            got = data.get("type") if isinstance(data, Mapping) else data
            raise InvoiceError(f"type: {got!r} is not a credit note; expected 'credit_note'")
        with _reading("credit note"):
            return cls._read(data)

    @classmethod
    def _read(cls, data: Mapping[str, Any]) -> CreditNote:
        return cls(
            number=str(data["number"]),
            invoice_number=str(data["invoice_number"]),
            subject=str(data["subject"]),
            currency=str(data["currency"]),
            amount=Decimal(data["amount"]),
            reason=str(data["reason"]),
            refund=bool(data["refund"]),
            created_at_us=int(data["created_at_us"]),
            lines=tuple(line_from_dict(x) for x in data["lines"]),
        )

    def canonical_json(self) -> bytes:
        return _canonical(self.to_dict())

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()


MAX_REASON = 500


def build_credit_note(
    invoice: Invoice,
    *,
    number: str,
    amount: Decimal,
    reason: str,
    refund: bool,
    at_us: int,
    earlier: Sequence[CreditNote] = (),
    lines: Sequence[Line] = (),
) -> CreditNote:
    """A credit note on ``invoice``; `InvoiceError` when the invoice is a draft, or ``amount``
    is not a positive amount in minor units within its total less the ``earlier`` notes."""
    if invoice.status != "finalized" or invoice.number is None:
        raise InvoiceError("invoice: a draft cannot take a credit note; expected a finalized one")
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvoiceError(f"amount: {amount!r} is not a Decimal; expected a Decimal amount")
    if amount <= 0 or round_line(amount, invoice.currency) != amount:
        raise InvoiceError(
            f"amount: {amount} is not a positive amount in whole minor units of "
            f"{invoice.currency}; expected e.g. Decimal('5.00')"
        )
    taken = sum((n.amount for n in earlier if n.invoice_number == invoice.number), Decimal(0))
    room = invoice.total - taken
    if amount > room:
        raise InvoiceError(
            f"amount: {amount} is more than invoice {invoice.number} has left to credit; "
            f"expected at most {room} (its total {invoice.total} less {taken} credited)"
        )
    if len(reason) > MAX_REASON:
        raise InvoiceError(f"reason: {len(reason)} characters; expected at most {MAX_REASON}")
    return CreditNote(
        number=number,
        invoice_number=invoice.number,
        subject=invoice.subject,
        currency=invoice.currency,
        amount=amount,
        reason=reason,
        refund=refund,
        created_at_us=at_us,
        lines=tuple(lines),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoiceInputs:
    """Everything an invoice of one subject's period depends on, as of ``as_of_us``."""

    policy: Policy
    subject: str
    period_start_us: int
    period_end_us: int
    as_of_us: int
    history: tuple[PlanChange, ...] = ()
    usage: tuple[UsageTotal, ...] = ()
    grants: tuple[GrantRecord, ...] = ()
    draws: tuple[Draw, ...] = ()
    """Draws from the first grant on, summed per interval between change points
    (`tollway.billing.credits.change_points`), each at its interval's start."""
    redemptions: tuple[Redemption, ...] = ()
    previous: Invoice | None = None
    """The invoice of the period before (what was billed in advance for this one)."""
    adjustments: tuple[Line, ...] = ()
    """Adjustment lines of earlier periods (`tollway.billing.adjustments.adjust`)."""
    anchor_us: int | None = None
    """The subscription's anchor, for ``anchor = "subscription"`` periods."""
    config: BillingConfig | None = field(default=None)
    """The billing config; None: the policy's ``[billing]`` (or the defaults)."""


def build_invoice(inputs: InvoiceInputs) -> Invoice:
    """The draft invoice of ``inputs``' period (see the module's docstring for the order)."""
    config = inputs.config or inputs.policy.billing or BillingConfig()
    period = (inputs.period_start_us, inputs.period_end_us)
    if period[1] <= period[0]:
        raise BillingError(f"period: ends at {period[1]} before it starts at {period[0]}")
    policy, currency = inputs.policy, config.currency
    default_plan = policy.defaults.plan
    with localcontext(CONTEXT):
        fees = fee_lines(
            plans=policy.plans,
            currency=currency,
            history=inputs.history,
            default_plan=default_plan,
            period=period,
            next_period=next_period(config, period, inputs.anchor_us),
            previous=inputs.previous.lines if inputs.previous is not None else None,
        )
        usage = usage_lines(
            plans=policy.plans,
            currency=currency,
            subject=inputs.subject,
            totals=inputs.usage,
            default_plan=default_plan,
            period=period,
            as_of_us=inputs.as_of_us,
        )
        body = [*fees, *usage, *inputs.adjustments]
        discounts = discount_lines(
            coupons=policy.coupons,
            redemptions=inputs.redemptions,
            lines=body,
            currency=currency,
            period=period,
            periods_since=lambda t: periods_between(config, t, period, inputs.anchor_us),
        )
        drawn = sum(
            int(str(line.trace.get("drawn_micros", 0)))
            for line in usage
            if line.trace.get("credits")
        )
        allocation = allocate(inputs.grants, inputs.draws, *period)
        credits = credits_lines(
            allocation=allocation, currency=currency, drawn_micros=drawn, period=period
        )
    return Invoice(
        number=None,
        status="draft",
        issuer=config.issuer,
        subject=inputs.subject,
        currency=currency,
        period_start_us=period[0],
        period_end_us=period[1],
        lines=(*body, *discounts, *credits),
        as_of_us=inputs.as_of_us,
    )


def finalize(draft: Invoice, number: str, at_us: int) -> Invoice:
    """The draft, numbered and finalized at ``at_us`` (immutable from then on)."""
    if draft.status != "draft":
        raise InvoiceError(f"invoice {draft.number}: already finalized; expected a draft")
    return replace(draft, number=number, status="finalized", finalized_at_us=at_us)
