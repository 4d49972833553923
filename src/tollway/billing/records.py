"""What billing reads from the ledger and writes back: the records rating works on.

Storage (`tollway.billing.storage`) turns rows into these and back; rating
(`tollway.billing.rating`, `tollway.billing.invoicing`) is a pure function of them, so an
invoice re-run over the same records gives the same bytes. Times are integer microseconds
since the epoch, money integer micro-units of the billing currency, as everywhere in tollway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from tollway.clock import utc

ChangeKind = Literal["assign", "trial", "trial_end", "cancel", "scheduled"]
"""``assign``: a plan given; ``trial``: a trial started (its end in ``trial_end_us``);
``trial_end``: a trial ended and the subscription continued; ``cancel``: back to the default
plan; ``scheduled``: a ``next_period`` change applied at its period's end."""
Proration = Literal["prorate", "none", "next_period"]
PRORATIONS: tuple[Proration, ...] = ("prorate", "none", "next_period")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanChange:
    """One row of a subject's plan history: from ``effective_us`` on, ``plan`` is in force
    (None: the policy's default plan). Rows are ordered by ``(effective_us, seq)``."""

    subject: str
    seq: int
    """Gapless per subject, in the order the changes were recorded."""
    plan: str | None
    effective_us: int
    recorded_us: int
    kind: ChangeKind = "assign"
    proration: Proration = "prorate"
    trial_end_us: int | None = None
    """A trial's end (``kind == "trial"``): no fee before it."""
    identity: str | None = None
    """What the trial was taken under (a hash of an e-mail or card): one trial per identity."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageTotal:
    """One (plan, meter) of one subject's period, aggregated in SQL from the usage events
    with ``start_us <= occurred_at_us < end_us`` and ``recorded_at_us <= as_of_us``."""

    plan: str | None
    meter: str
    quantity: int
    """The sum of the events' quantities (corrections are negative)."""
    events: int
    """How many events."""
    uniques: Mapping[str, int] = field(default_factory=dict)
    """Per attribute asked for: how many distinct values it took."""
    amount_micros: int = 0
    """The sum of the events' amounts (in the billing currency; other currencies apart)."""
    drawn_micros: int = 0
    """The part of ``amount_micros`` drawn from prepaid credits (events whose ``limits``
    name the plan's credits limit); the rest of a credits meter's amount is overage."""
    first_event: str = ""
    last_event: str = ""
    """The smallest and largest event id, so a line can be checked against its events."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRecord:
    """A prepaid grant as the ledger keeps it (the store keeps its balance for the step)."""

    id: str
    subject: str
    currency: str
    amount_micros: int
    granted_us: int
    expires_us: int | None = None
    priority: int = 0
    """Drawn first: the highest priority, then the soonest expiry, then the oldest grant."""
    source: str = "grant"
    """``grant``, or the number of the credit note that gave it back."""
    note: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Redemption:
    subject: str
    coupon: str
    redeemed_us: int


LineKind = Literal["fee", "usage", "discount", "credits", "adjustment", "minimum"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    """One invoice line. ``amount`` is rounded once (half even, the currency's minor unit);
    ``exact`` keeps the unrounded amount it came from."""

    kind: LineKind
    description: str
    amount: Decimal
    """Rounded: ``Decimal("45.16")``, ``Decimal("-5.00")``."""
    exact: Decimal
    period_start_us: int
    period_end_us: int
    plan: str | None = None
    meter: str | None = None
    quantity: Decimal | None = None
    """The quantity rated, for usage and adjustment lines."""
    grant: str | None = None
    """``credits`` lines: the grant that paid."""
    coupon: str | None = None
    """``discount`` lines: the coupon."""
    trace: Mapping[str, object] = field(default_factory=dict)
    """How to find the line's ledger events: subject, meter, plan, the period, the
    ``recorded_at`` cut (``as_of_us`` / ``after_us``), their count and first/last ids."""

    @property
    def period_start(self) -> datetime:
        return utc(self.period_start_us)

    @property
    def period_end(self) -> datetime:
        return utc(self.period_end_us)
