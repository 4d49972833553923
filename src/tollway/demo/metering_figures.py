"""What the metering demo found: per subject, the store's counters and the ledger's totals;
the notices the callable hook was given; what the webhook receiver verified and summed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = [
    "FlushStep",
    "MeteringDemo",
    "NoticeSeen",
    "SubjectFigures",
    "WebhookFigures",
]


@dataclass
class SubjectFigures:
    """One subject: what it asked for and got, by the store's counters and by the ledger's."""

    subject: str
    attempts: int = 0
    """Calls made for the first time (an acquire, a reservation's hold); retries not counted."""
    allowed: int = 0
    """Consumptions: allowed acquires that were not duplicates, and the committed reservation."""
    refused: int = 0
    duplicates: int = 0
    """Retries of a request id already taken: answered allowed, nothing consumed again."""
    store_units: int = 0
    store_spend: Decimal = Decimal(0)
    ledger_units: int = 0
    ledger_spend: Decimal = Decimal(0)
    ledger_events: int = 0
    currency: str = "USD"

    @property
    def unit_drift(self) -> int:
        return self.store_units - self.ledger_units

    @property
    def spend_drift(self) -> Decimal:
        return self.store_spend - self.ledger_spend


@dataclass(frozen=True)
class NoticeSeen:
    """A threshold or exceeded notice, as the callable hook was given it."""

    type: str
    subject: str
    limit: str
    threshold: str | None
    """A fraction as text (``"0.8"``); None for an exceeded notice."""
    used: int
    """The count when it was raised: the step that reached the threshold, or the count a
    refused step found (an exceeded notice)."""
    time: str
    """When (``HH:MM:SS`` on the demo's clock)."""


@dataclass
class WebhookFigures:
    requests: int = 0
    verified: int = 0
    failures: list[str] = field(default_factory=list)
    buckets: dict[tuple[str, str], int] = field(default_factory=dict)
    """(subject, ``HH:MM``) → units aggregated in that minute (every meter)."""
    amounts: dict[str, Decimal] = field(default_factory=dict)
    """Subject → money aggregated over every bucket."""
    events: dict[str, int] = field(default_factory=dict)
    """Subject → usage events the buckets summed."""

    def quantity(self, subject: str) -> int:
        return sum(q for (s, _), q in self.buckets.items() if s == subject)


@dataclass(frozen=True)
class FlushStep:
    """One `Tollway.flush` of the demo: when, what it wrote, what the webhook got by then."""

    time: str
    """``HH:MM:SS`` on the demo's clock."""
    written: int
    """Usage events new to the ledger."""
    webhook_requests: int
    """Requests the receiver got during this flush (closed minute buckets)."""


@dataclass
class MeteringDemo:
    seed: int
    subjects: list[SubjectFigures]
    notices: list[NoticeSeen]
    callable_counts: Counter[str]
    """Event type → how many the callable hook was given."""
    callable_usage_ids: list[str] = field(compare=False)
    """The usage events' ids, as the callable was given them (ids made by the store are unique
    per run, so they are left out of ``==``)."""
    webhook: WebhookFigures
    ledger_count: int
    """Usage events in the ledger."""
    caller_ids: int
    """Distinct request ids callers gave to consumptions."""
    caller_ids_in_ledger: int
    """How many of them the ledger holds (once each: it keeps one event per id)."""
    reconcile_rows: int
    reconcile_drifts: int
    hook_statuses: Counter[tuple[str, str]]
    """(hook, status) → messages in the ledger's outbox."""
    reservation: tuple[str, int, int]
    flushes: list[FlushStep]
    minutes: int
    """How long the simulated traffic ran, in whole minutes (rounded up)."""

    def by_subject(self) -> dict[str, SubjectFigures]:
        return {figures.subject: figures for figures in self.subjects}

    @property
    def allowed(self) -> int:
        """Consumptions, every subject's."""
        return sum(f.allowed for f in self.subjects)

    @property
    def units(self) -> int:
        """Units the store's daily counters hold, every subject's."""
        return sum(f.store_units for f in self.subjects)
