"""Billing's operations, written once as generators and driven by the sync and async faces.

An operation yields `InStore` (an engine flow for the counter store: an assignment, a grant,
a balance) or `InLedger` (a flow run in one ledger transaction) and gets the answer back, or
the error thrown in; `tollway.billing.facade` drives them with plain calls (`Billing`) or
awaited ones (`AsyncBilling`). What to write, in which order and what to refuse lives here.

Order of writes: the ledger first (the record billing trusts), then the store (what the step
enforces). Both writes are idempotent, so an operation that failed between them is completed
by calling it again; `tollway.billing.closing` also re-applies plans and credit-note grants
the store is missing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar, Union

from tollway.billing.invoice import rfc3339
from tollway.billing.notify import notice_flow
from tollway.billing.periods import period_at
from tollway.billing.records import PRORATIONS, GrantRecord, PlanChange, Proration, Redemption
from tollway.billing.storage import add_grant, append_change, changes, grants, redeem, take_trial
from tollway.billing.storage.sql import Dialect
from tollway.billing.subscriptions import plan_at
from tollway.clock import US, micros
from tollway.engine import flows
from tollway.engine.core import Engine
from tollway.engine.credits import grant_op
from tollway.engine.requests import Flow as StoreFlow
from tollway.engine.windows import zone
from tollway.errors import BillingError, CouponError, GrantConflictError
from tollway.events import SUBSCRIPTION_UPDATED
from tollway.metering.ledger.flows import Flow as LedgerFlow
from tollway.money import decimal_to_micros, micros_to_decimal
from tollway.policy.model import BillingConfig, Policy

__all__ = [
    "Ctx",
    "InLedger",
    "InStore",
    "Op",
    "assign",
    "balance",
    "grant",
    "in_ledger",
    "in_store",
    "redeem_coupon",
    "scope",
    "year_of",
]

T = TypeVar("T")
DAY_US = 86_400 * US
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class InStore:
    flow: StoreFlow[Any]


@dataclass(frozen=True, slots=True)
class InLedger:
    make: Callable[[], LedgerFlow[Any]]


Request = Union[InStore, InLedger]  # noqa: UP007 (a runtime alias)
Op = Generator[Request, Any, T]


def in_store(flow: StoreFlow[T]) -> Op[T]:
    value: T = yield InStore(flow)
    return value


def in_ledger(make: Callable[[], LedgerFlow[T]]) -> Op[T]:
    value: T = yield InLedger(make)
    return value


@dataclass(frozen=True, slots=True)
class Ctx:
    """What every operation needs: the engine (policy, clock, the store's flows) and the
    ledger's dialect (for its flows)."""

    engine: Engine
    dialect: Dialect

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    @property
    def config(self) -> BillingConfig:
        billing = self.policy.billing
        if billing is None:
            raise BillingError(
                "billing: the policy has no [billing] section; add one with at least "
                'currency = "USD" (see docs/billing.md)'
            )
        return billing

    def require_billing(self) -> None:
        """Refuse a policy without ``[billing]`` before anything is read or written."""
        _ = self.config

    def now(self) -> int:
        return int(self.engine.clock())


def to_us(value: object, what: str) -> int:
    """Microseconds of an aware datetime; a clear error for anything else."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise BillingError(
            f"{what}: {value!r:.80} is not an aware datetime; expected e.g. "
            "datetime(2026, 3, 1, tzinfo=timezone.utc)"
        )
    return micros(value)


def money_micros(amount: object, what: str) -> int:
    """Whole micro-units of a positive `Decimal` (never a float)."""
    micros = decimal_to_micros(amount, what=what)  # type: ignore[arg-type]
    if micros <= 0:
        raise BillingError(f"{what}: {amount} is not positive; expected an amount above 0")
    return micros


def currency_of(ctx: Ctx, currency: str | None) -> str:
    if currency is None:
        return ctx.config.currency
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise BillingError(
            f'currency: {currency!r:.40} is not valid; expected 3 letters like "USD"'
        )
    return currency


def scope(ctx: Ctx, kind: str) -> str:
    """A numbering scope: invoices and credit notes apart, per issuer."""
    return f"{kind}:{ctx.config.issuer}"


def year_of(ctx: Ctx, t_us: int) -> int:
    """The year of ``t_us`` in the billing timezone (``{year}`` of a number)."""
    return datetime.fromtimestamp(t_us // US, tz=zone(ctx.config.timezone)).year


# -- subscriptions -----------------------------------------------------------------------------


def anchor_of(history: list[PlanChange], policy: Policy) -> int | None:
    """The subscription's anchor: its first change to a plan with a fee (None: none yet)."""
    for change in history:
        plan = policy.plans.get(change.plan) if change.plan is not None else None
        if plan is not None and plan.fee is not None:
            return change.effective_us
    return None


def _check_assign(
    ctx: Ctx, plan: str | None, proration: str, trial: bool, identity: str | None
) -> int:
    """The trial's length in microseconds (0: no trial), after checking the arguments."""
    flows.check_plan(ctx.policy, plan)
    if proration not in PRORATIONS:
        raise BillingError(
            f"proration: {proration!r:.40} is not valid; expected one of {', '.join(PRORATIONS)}"
        )
    if identity is not None and not trial:
        raise BillingError("identity: only with trial=True (one trial per identity)")
    if not trial:
        return 0
    spec = ctx.policy.plans[plan] if plan is not None else None
    if spec is None or spec.trial_days == 0:
        raise BillingError(
            f"trial: plan {plan!r} has no trial_days; expected a plan with a trial "
            f"({', '.join(n for n, p in ctx.policy.plans.items() if p.trial_days) or 'none'})"
        )
    return spec.trial_days * DAY_US


def assign(
    ctx: Ctx,
    subject: str,
    plan: str | None,
    *,
    proration: Proration = "prorate",
    trial: bool = False,
    identity: str | None = None,
    effective: datetime | None = None,
) -> Op[PlanChange]:
    """Record the change in the plan history (with its hook event), then put it in force in
    the store when it is effective now (a ``next_period`` change waits for `close`)."""
    ctx.require_billing()
    ctx.engine.check_subject(subject)
    trial_us = _check_assign(ctx, plan, proration, trial, identity)
    now = ctx.now()
    given = None if effective is None else to_us(effective, "effective")
    lateness = ctx.policy.ledger.lateness_s * US
    if given is not None:
        if proration == "next_period":
            raise BillingError("effective: not with proration='next_period' (it is the period end)")
        if given > now:
            raise BillingError(
                f"effective: {rfc3339(given)} is in the future; expected now or the past "
                "(proration='next_period' changes the plan at the period's end)"
            )
        if given < now - lateness:
            raise BillingError(
                f"effective: {rfc3339(given)} is older than [ledger] lateness_s "
                f"({ctx.policy.ledger.lateness_s} s); expected a time after "
                f"{rfc3339(now - lateness)}"
            )
    d, policy = ctx.dialect, ctx.policy

    def record() -> LedgerFlow[PlanChange]:
        history = yield from changes(d, subject)
        at = now if given is None else given
        if proration == "next_period":
            at = period_at(ctx.config, now, anchor_of(history, policy))[1]
        before = plan_at(history, at, policy.defaults.plan, policy.plans)[0]
        if trial:
            yield from take_trial(d, "subject:" + subject, subject, now)
            if identity is not None:
                yield from take_trial(d, "identity:" + identity, subject, now)
        change = yield from append_change(
            d,
            subject,
            plan,
            effective_us=at,
            recorded_us=now,
            kind="trial" if trial else "assign",
            proration=proration,
            trial_end_us=at + trial_us if trial else None,
            identity=identity,
        )
        yield from notify_change(ctx, change, before)
        return change

    change = yield from in_ledger(record)
    if change.effective_us <= now:
        yield from in_store(flows.assign(ctx.engine, subject, plan))
    return change


def notify_change(ctx: Ctx, change: PlanChange, before: str | None) -> LedgerFlow[None]:
    """The change's ``tollway.subscription.updated``, in the transaction that records it."""
    data: dict[str, Any] = {
        "subject": change.subject,
        "plan": change.plan if change.plan is not None else ctx.policy.defaults.plan,
        "previous_plan": before,
        "change": change.kind,
        "proration": change.proration,
        "effective": rfc3339(change.effective_us),
        "seq": change.seq,
    }
    if change.trial_end_us is not None:
        data["trial_end"] = rfc3339(change.trial_end_us)
    yield from notice_flow(
        ctx.dialect,
        ctx.policy.hooks,
        id=f"sub_{change.subject}_{change.seq}",
        type=SUBSCRIPTION_UPDATED,
        subject=change.subject,
        at_us=change.recorded_us,
        data=data,
    )


# -- prepaid credits and coupons ---------------------------------------------------------------


def grant(
    ctx: Ctx,
    subject: str,
    amount: Decimal,
    *,
    currency: str | None = None,
    expires: datetime | None = None,
    id: str | None = None,
    priority: int = 0,
    note: str = "",
) -> Op[GrantRecord]:
    """Record a prepaid grant in the ledger (idempotent on ``id``), then add it to the
    balance the step draws from."""
    cur = currency_of(ctx, currency)
    ctx.engine.check_subject(subject)
    micros = money_micros(amount, "amount")
    now = ctx.now()
    expires_us = None if expires is None else to_us(expires, "expires")
    if expires_us is not None and expires_us <= now:
        raise BillingError(f"expires: {rfc3339(expires_us)} is not in the future; expected later")
    gid = id if id is not None else f"grant_{uuid.uuid4().hex}"
    if not isinstance(note, str) or len(note) > 500:
        raise BillingError(f"note: expected a str of at most 500 characters, got {note!r:.40}")
    op = grant_op(subject, cur, gid, micros, priority, expires_us)  # checks id and priority
    record = GrantRecord(
        id=op.grant_id,
        subject=subject,
        currency=cur,
        amount_micros=micros,
        granted_us=now,
        expires_us=expires_us,
        priority=op.priority,
        note=note,
    )
    kept = yield from in_ledger(lambda: _keep_grant(ctx.dialect, record))
    yield from in_store(
        flows.grant(subject, cur, kept.id, kept.amount_micros, kept.priority, kept.expires_us)
    )
    return kept


def _keep_grant(d: Dialect, record: GrantRecord) -> LedgerFlow[GrantRecord]:
    """The grant as the ledger keeps it: a repeat of the same terms is the first one."""
    for stored in (yield from grants(d, record.subject, record.currency)):
        if stored.id != record.id:
            continue
        same = (stored.amount_micros, stored.expires_us, stored.priority)
        if same != (record.amount_micros, record.expires_us, record.priority):
            raise GrantConflictError(
                f"grant {record.id!r} of {record.subject!r} exists with other terms "
                f"({micros_to_decimal(stored.amount_micros)} {stored.currency}); a grant id "
                "names one grant: use a new id"
            )
        return stored
    yield from add_grant(d, record)
    return record


def balance(ctx: Ctx, subject: str, currency: str | None = None) -> Op[Decimal]:
    """What is left of the subject's live grants now, as the step sees it."""
    cur = currency_of(ctx, currency)
    ctx.engine.check_subject(subject)
    micros, _ = yield from in_store(flows.balance(subject, cur))
    return micros_to_decimal(int(micros))


def redeem_coupon(ctx: Ctx, subject: str, code: str) -> Op[Redemption]:
    coupons: Mapping[str, Any] = ctx.policy.coupons
    ctx.require_billing()
    ctx.engine.check_subject(subject)
    coupon = coupons.get(code) if isinstance(code, str) else None
    if coupon is None:
        raise CouponError(
            f"coupon: {code!r:.80} is not in the policy; expected one of "
            f"{', '.join(sorted(coupons)) or 'none (add [coupons.CODE])'}"
        )
    now = ctx.now()
    found: Redemption = yield from in_ledger(
        lambda: redeem(ctx.dialect, subject, code, now, coupon.max_redemptions)
    )
    return found
