"""Reconcile the store's counters with the ledger: does every quota and budget count what the
ledger holds for its window? (`tollway reconcile`.)

For each subject, the counters are read without consuming (`Tollway.usage`; a provider's
through a peek at its step) and each quota and budget (not rates, not health gates) is compared
with the sum of the ledger's events of that subject in the counter's current window: quantity
for a quota, amount for a budget, over the operations the limit applies to (one, for a limit
counted per operation). Events from steps have ``meter == operation``; only those are summed,
so usage recorded with a meter of its own (`Tollway.record`) makes no drift.

Which subjects: those named, else every subject the store holds counters for, every subject
with events in the ledger in the current windows, and every provider of the policy. A subject
the ledger has never seen is compared too (its counters are all drift). A ledger with no events
at all is said so (`Report.ledger_events`), since it may only mean nothing was drained yet.

Entries still in the streams (not drained yet) are counted in the store and not yet in the
ledger: a drift while `Report.pending` is not 0 may be just that. What open reservations hold
is counted in the store and in no event until committed: it is read from the store's holds
and taken out of the comparison (`Drift.held`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tollway.clock import US
from tollway.engine.decision import LimitState
from tollway.engine.rules import PROVIDER_OPERATION, TIER_COUNTER
from tollway.engine.step import PEEK, PROVIDER_PREFIX
from tollway.errors import StoreUnavailableError, UnknownNameError
from tollway.money import decimal_to_micros, micros_to_decimal

if TYPE_CHECKING:
    from tollway.client import Tollway
    from tollway.metering.ledger import Ledger
    from tollway.policy.model import Limit, Period, Policy

__all__ = ["Drift", "Report", "ledger_subjects", "reconcile"]

# How far back a window of each period can start (a month: 31 days, plus a DST hour).
_LOOKBACK_US = {
    "minute": 120 * US,
    "hour": 2 * 3600 * US,
    "day": 2 * 86_400 * US,
    "week": 8 * 86_400 * US,
    "month": 32 * 86_400 * US,
}


@dataclass(frozen=True, slots=True)
class Drift:
    """One counter against the ledger: units for a quota, micro-units for a budget."""

    subject: str
    limit: str
    kind: str
    """``quota`` or ``budget``."""
    operation: str | None
    """Set for a limit counted per operation."""
    window_start_us: int
    window_end_us: int
    store: int
    ledger: int
    currency: str | None = None
    held: int = 0
    """What open reservations hold in the counter: counted by the store, in no event yet."""

    @property
    def drift(self) -> int:
        """Store minus what is held minus ledger: positive when the ledger misses usage,
        negative when it has more than the store counted."""
        return self.store - self.held - self.ledger

    def amount(self, value: int) -> str:
        """``value`` as the report shows it: units, or money with its currency."""
        if self.kind != "budget":
            return str(value)
        text = f"{micros_to_decimal(value):f}"
        return f"{text} {self.currency}" if self.currency else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "limit": self.limit,
            "kind": self.kind,
            "operation": self.operation,
            "window_start_us": self.window_start_us,
            "window_end_us": self.window_end_us,
            "store": self.amount(self.store),
            "held": self.amount(self.held),
            "ledger": self.amount(self.ledger),
            "drift": self.amount(self.drift),
        }


@dataclass(frozen=True, slots=True)
class Report:
    rows: tuple[Drift, ...]
    pending: int | None = None
    """Entries still in the event streams, not yet committed (None: not counted)."""
    ledger_events: int | None = None
    """How many events the ledger holds in all (None: not counted). 0 means it has none
    yet: nothing drained, or the wrong ledger; no drift then is no proof of anything."""

    @property
    def ledger_empty(self) -> bool:
        return self.ledger_events == 0

    @property
    def drifts(self) -> tuple[Drift, ...]:
        return tuple(row for row in self.rows if row.drift != 0)


def lookback_us(policy: Policy) -> int:
    """How far back the earliest current window of any quota or budget may start."""
    periods: list[Period] = [
        limit.period
        for limits in _all_limits(policy)
        for limit in limits
        if limit.period is not None
    ]
    return max((_LOOKBACK_US[p] for p in periods), default=0)


def ledger_subjects(ledger: Ledger, since_us: int) -> list[str]:
    """Every subject with an event that occurred at or after ``since_us``."""
    return ledger.subjects(since_us)


def store_subjects(store: object) -> list[str]:
    """Every subject the store holds state for: the memory store lists them; on Redis, a
    SCAN of the subjects' hashes (every primary of a cluster)."""
    listing = getattr(store, "subjects", None)
    if listing is not None:
        return list(listing())
    client = getattr(store, "client", None)
    if client is None:  # a store of another kind: only the ledger's subjects are known
        return []
    from tollway.stores.redis_codec import state_pattern, subject_of

    prefix = str(getattr(store, "prefix", ""))
    try:
        keys = client.scan_iter(match=state_pattern(prefix), count=1000)
        found = (subject_of(key, prefix) for key in keys)
        return sorted({subject for subject in found if subject is not None})
    except Exception as exc:  # redis-py's errors: the store could not be listed
        raise StoreUnavailableError(f"listing the store's subjects failed: {exc}") from exc


def reconcile(
    tw: Tollway,
    ledger: Ledger,
    subjects: Iterable[str] | None = None,
    *,
    pending: int | None = None,
) -> Report:
    """Compare every quota and budget of ``subjects`` (default: every subject the store has
    counters for, every subject with events in the ledger in the current windows, and every
    provider of the policy) with the ledger."""
    policy = tw.policy
    if subjects is None:
        since = tw.engine.clock() - lookback_us(policy)
        # The providers always: a provider whose events the ledger lacks still shows.
        providers = [PROVIDER_PREFIX + name for name in policy.providers]
        known = set(ledger_subjects(ledger, since)) | set(providers)
        # A provider the policy no longer declares has nothing to compare with.
        counted = {s for s in store_subjects(tw.store) if not s.startswith(PROVIDER_PREFIX)}
        subjects = sorted(known | counted)
    rows: list[Drift] = []
    held_by = getattr(tw.store, "held", None)
    for subject in subjects:
        states, limits, operations = _read(tw, subject)
        held = held_by(subject) if held_by is not None else {}
        for state in states:
            if state.kind not in ("quota", "budget"):
                continue
            row = _compare(ledger, subject, state, limits.get(state.name), operations)
            field = ("b:" if row.kind == "budget" else "q:") + state.name
            field += f":{state.operation}" if state.operation else ""
            holding = held.get((field, row.window_start_us), 0)
            rows.append(replace(row, held=holding) if holding else row)
    return Report(tuple(rows), pending, ledger.count())


def _read(
    tw: Tollway, subject: str
) -> tuple[Sequence[LimitState], dict[str, Limit], tuple[str, ...]]:
    """The subject's counters, its limits by name, and the operations its steps can have."""
    policy = tw.policy
    if subject.startswith(PROVIDER_PREFIX):
        name = subject[len(PROVIDER_PREFIX) :]
        provider = policy.providers.get(name)
        if provider is None:
            raise UnknownNameError(
                f"subject: {subject!r} names provider {name!r}, which the policy does not "
                f"declare; known providers: {', '.join(sorted(policy.providers)) or 'none'}"
            )
        decision = tw.driver.decide(lambda: tw.engine.provider(name, None, None, PEEK))
        limits = {limit.name: limit for limit in provider.limits}
        return decision.limits, limits, (PROVIDER_OPERATION,)
    usage = tw.usage(subject)
    plan = policy.plans.get(usage.plan) if usage.plan is not None else None
    limits = {limit.name: limit for limit in plan.limits} if plan is not None else {}
    return usage.limits, limits, tuple(policy.operations)


def _compare(
    ledger: Ledger,
    subject: str,
    state: LimitState,
    limit: Limit | None,
    operations: tuple[str, ...],
) -> Drift:
    start = _us(state.window_start)
    end = _us(state.window_end)
    if state.operation is not None:
        ops: tuple[str, ...] = (state.operation,)
    elif limit is None or state.name == TIER_COUNTER:
        ops = operations
    else:
        ops = tuple(op for op in operations if limit.applies_to(op))
    budget = state.kind == "budget"
    counted = 0
    for op in ops:
        totals = ledger.totals(subject, start, end, meter=op, operation=op).get(op)
        if totals is not None:
            counted += totals.amount_micros if budget else totals.quantity
    used = state.used
    store = decimal_to_micros(Decimal(used)) if budget else int(used)
    return Drift(
        subject=subject,
        limit=state.name,
        kind=state.kind,
        operation=state.operation,
        window_start_us=start,
        window_end_us=end,
        store=store,
        ledger=counted,
        currency=state.currency,
    )


def _us(moment: datetime | None) -> int:
    if moment is None:  # a quota or budget always has a window; a rate would not
        return 0
    return int(moment.timestamp()) * US


def _all_limits(policy: Policy) -> Iterable[tuple[Limit, ...]]:
    yield from (plan.limits for plan in policy.plans.values())
    yield from (provider.limits for provider in policy.providers.values())
