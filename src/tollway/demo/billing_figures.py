"""What the billing demo found: the traffic as the steps answered it, the grants, the late
event, and the invoices and credit notes the ledger holds at the end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from tollway.billing.invoice import CreditNote, Invoice
from tollway.billing.records import GrantRecord
from tollway.metering.ledger import UsageEvent

__all__ = ["BillingDemo", "Traffic"]


@dataclass(frozen=True)
class Traffic:
    """One subject's calls of one operation under one plan in one month, as the steps
    answered them (counted by the demo, not read back from the ledger)."""

    subject: str
    month: str
    """``2026-03``."""
    plan: str
    operation: str
    calls: int
    allowed: int
    denied: int
    units: int
    """The units of the allowed calls."""
    drawn: Decimal
    """What the allowed calls drew from prepaid credits (price x units on a credits meter)."""


@dataclass(frozen=True)
class BillingDemo:
    seed: int
    start: datetime
    trial_end: datetime
    upgrade_at: datetime
    traffic: tuple[Traffic, ...]
    grants: tuple[GrantRecord, ...]
    balances: tuple[tuple[str, Decimal], ...]
    """Each subject's prepaid balance at the end."""
    ran_out_at: datetime | None
    """When the prepaid subject's first lookup was denied (its grant ran out)."""
    late: UsageEvent
    """The event recorded after March was finalized, occurring in March."""
    invoices: tuple[Invoice, ...]
    """Every finalized invoice, in number order."""
    credit_notes: tuple[CreditNote, ...]
    html_invoice: str
    """The number of the invoice written as HTML."""
    html_path: Path

    def traffic_of(
        self, subject: str, *, month: str | None = None, plan: str | None = None
    ) -> list[Traffic]:
        return [
            t
            for t in self.traffic
            if t.subject == subject
            and (month is None or t.month == month)
            and (plan is None or t.plan == plan)
        ]

    def invoice_of(self, subject: str, month: str) -> Invoice:
        """The subject's invoice of ``month`` (``2026-03``)."""
        return next(
            inv
            for inv in self.invoices
            if inv.subject == subject and inv.period_start.strftime("%Y-%m") == month
        )

    @property
    def denied(self) -> int:
        return sum(t.denied for t in self.traffic)
