"""`tw.billing`: `Billing` (sync) and `AsyncBilling` (asyncio), two drivers of the same
operations (`tollway.billing.ops`, `closing`, `notes`).

Each method builds an operation and drives it: store requests through the facade's store
(`tollway.driver.drive` / `drive_async`), ledger requests as one transaction each of the
policy's ledger (in a worker thread for asyncio). A tollway error raised by a request is
thrown into the operation, which may handle it (a racing closer, say) or let it through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from tollway.billing import closing, notes, ops
from tollway.billing.closing import Closed
from tollway.billing.invoice import CreditNote, Invoice
from tollway.billing.ops import Ctx, InStore, Op
from tollway.billing.records import GrantRecord, PlanChange, Proration, Redemption
from tollway.driver import drive, drive_async
from tollway.engine.core import Engine
from tollway.errors import TollwayError
from tollway.metering.ledger import Ledger, UsageEvent
from tollway.stores import AsyncStore, SyncStore

__all__ = ["AsyncBilling", "Billing"]

T = TypeVar("T")


class _Ops:
    """The operations both faces offer, each built once here; a face says how to run one."""

    def __init__(self, engine: Engine, ledger: Callable[[], Ledger]) -> None:
        self._engine = engine
        self._ledger = ledger
        self._ctx: Ctx | None = None

    def ctx(self) -> Ctx:
        if self._ctx is None:
            self._ctx = Ctx(self._engine, self._ledger().dialect)
        return self._ctx


def _step(op: Op[T], answer: Any, error: TollwayError | None) -> tuple[bool, Any]:
    """Advance ``op``: (True, its result) when done, else (False, its next request)."""
    try:
        request = op.send(answer) if error is None else op.throw(error)
    except StopIteration as stop:
        return True, stop.value
    return False, request


class Billing(_Ops):
    """Billing, synchronous face (``tw.billing``); see docs/billing.md."""

    def __init__(self, engine: Engine, store: SyncStore, ledger: Callable[[], Ledger]) -> None:
        super().__init__(engine, ledger)
        self._store = store

    def _run(self, build: Callable[[Ctx], Op[T]]) -> T:
        op = build(self.ctx())
        answer: Any = None
        error: TollwayError | None = None
        while True:
            done, value = _step(op, answer, error)
            if done:
                return value  # type: ignore[no-any-return]
            answer, error = None, None
            try:
                if isinstance(value, InStore):
                    answer = drive(value.flow, self._store)
                else:
                    answer = self._ledger().transact(value.make)
            except TollwayError as exc:
                error = exc

    def assign(
        self,
        subject: str,
        plan: str | None,
        *,
        proration: Proration = "prorate",
        trial: bool = False,
        identity: str | None = None,
        effective: datetime | None = None,
    ) -> PlanChange:
        """Change the subject's plan, recorded in the plan history: ``prorate`` splits the
        period's fee to the second, ``none`` keeps the old fee to the period's end,
        ``next_period`` changes the plan at the period's end. ``trial``: start the plan's
        trial (one per subject, and per ``identity`` when given). ``effective``: a backdated
        change (within ``[ledger] lateness_s``); its difference goes on the next invoice."""
        return self._run(
            lambda c: ops.assign(
                c,
                subject,
                plan,
                proration=proration,
                trial=trial,
                identity=identity,
                effective=effective,
            )
        )

    def grant(
        self,
        subject: str,
        amount: Decimal,
        *,
        currency: str | None = None,
        expires: datetime | None = None,
        id: str | None = None,
        priority: int = 0,
        note: str = "",
    ) -> GrantRecord:
        """Add prepaid credits (idempotent on ``id``): drawn by priority, then soonest expiry."""
        return self._run(
            lambda c: ops.grant(
                c,
                subject,
                amount,
                currency=currency,
                expires=expires,
                id=id,
                priority=priority,
                note=note,
            )
        )

    def balance(self, subject: str, currency: str | None = None) -> Decimal:
        """What is left of the subject's live grants now."""
        return self._run(lambda c: ops.balance(c, subject, currency))

    def redeem(self, subject: str, code: str) -> Redemption:
        """Redeem coupon ``code`` for the subject (once per subject, within max_redemptions)."""
        return self._run(lambda c: ops.redeem_coupon(c, subject, code))

    def preview(self, subject: str) -> Invoice:
        """The open period's draft invoice, as of now."""
        return self._run(lambda c: closing.preview(c, subject))

    def close(self) -> Closed:
        """Finalize every period whose grace is over (see `tollway.billing.closing`)."""
        return self._run(closing.close)

    def invoices(self, subject: str, limit: int = 100) -> list[Invoice]:
        """The subject's finalized invoices, newest first."""
        return self._run(lambda c: notes.list_invoices(c, subject, limit))

    def invoice(self, number: str) -> Invoice:
        return self._run(lambda c: notes.one(c, number))

    def credit_note(
        self, number: str, *, amount: Decimal, reason: str = "", refund: bool = False
    ) -> CreditNote:
        """Credit ``amount`` of invoice ``number``: refunded (a ``tollway.invoice.refunded``
        hook event), or back to the prepaid balance."""
        return self._run(
            lambda c: notes.credit_note(c, number, amount, reason=reason, refund=refund)
        )

    def credit_notes(self, number: str) -> list[CreditNote]:
        return self._run(lambda c: notes.list_credit_notes(c, number))

    def trace(
        self, number: str, line: int, *, cursor: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        """The usage events behind one line of an invoice (a page, in id order), their
        sensitive attributes opened."""
        found = self._run(lambda c: notes.trace(c, number, line, cursor=cursor, limit=limit))
        return self._ledger().opened(found)


class AsyncBilling(_Ops):
    """Billing, asyncio face (``atw.billing``): `Billing`'s methods, awaited."""

    def __init__(self, engine: Engine, store: AsyncStore, ledger: Callable[[], Ledger]) -> None:
        super().__init__(engine, ledger)
        self._store = store

    async def _run(self, build: Callable[[Ctx], Op[T]]) -> T:
        if self._ctx is None:
            await asyncio.to_thread(self.ctx)
        op = build(self.ctx())
        answer: Any = None
        error: TollwayError | None = None
        while True:
            done, value = _step(op, answer, error)
            if done:
                return value  # type: ignore[no-any-return]
            answer, error = None, None
            try:
                if isinstance(value, InStore):
                    answer = await drive_async(value.flow, self._store)
                else:
                    answer = await asyncio.to_thread(self._ledger().transact, value.make)
            except TollwayError as exc:
                error = exc

    async def assign(
        self,
        subject: str,
        plan: str | None,
        *,
        proration: Proration = "prorate",
        trial: bool = False,
        identity: str | None = None,
        effective: datetime | None = None,
    ) -> PlanChange:
        return await self._run(
            lambda c: ops.assign(
                c,
                subject,
                plan,
                proration=proration,
                trial=trial,
                identity=identity,
                effective=effective,
            )
        )

    async def grant(
        self,
        subject: str,
        amount: Decimal,
        *,
        currency: str | None = None,
        expires: datetime | None = None,
        id: str | None = None,
        priority: int = 0,
        note: str = "",
    ) -> GrantRecord:
        return await self._run(
            lambda c: ops.grant(
                c,
                subject,
                amount,
                currency=currency,
                expires=expires,
                id=id,
                priority=priority,
                note=note,
            )
        )

    async def balance(self, subject: str, currency: str | None = None) -> Decimal:
        return await self._run(lambda c: ops.balance(c, subject, currency))

    async def redeem(self, subject: str, code: str) -> Redemption:
        return await self._run(lambda c: ops.redeem_coupon(c, subject, code))

    async def preview(self, subject: str) -> Invoice:
        return await self._run(lambda c: closing.preview(c, subject))

    async def close(self) -> Closed:
        return await self._run(closing.close)

    async def invoices(self, subject: str, limit: int = 100) -> list[Invoice]:
        return await self._run(lambda c: notes.list_invoices(c, subject, limit))

    async def invoice(self, number: str) -> Invoice:
        return await self._run(lambda c: notes.one(c, number))

    async def credit_note(
        self, number: str, *, amount: Decimal, reason: str = "", refund: bool = False
    ) -> CreditNote:
        return await self._run(
            lambda c: notes.credit_note(c, number, amount, reason=reason, refund=refund)
        )

    async def credit_notes(self, number: str) -> list[CreditNote]:
        return await self._run(lambda c: notes.list_credit_notes(c, number))

    async def trace(
        self, number: str, line: int, *, cursor: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        found = await self._run(lambda c: notes.trace(c, number, line, cursor=cursor, limit=limit))
        return self._ledger().opened(found)
