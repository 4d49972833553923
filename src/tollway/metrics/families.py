"""The metric families, built at scrape time from what each part exposes publicly.

Each function returns prometheus-client families for one part: the observer's decisions,
a Redis store's breaker and journal, a route's providers, a drain's stats, the ledger's hook
outbox. Label values come from the policy (plans, operations, limits, providers, hooks) or
from names the application gave; subjects only from the observer's top-N summary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from tollway.metering.ledger.flows import Flow, Query

if TYPE_CHECKING:
    from tollway.engine.decision import Decision, LimitState
    from tollway.metering.drain import DrainStats
    from tollway.metering.ledger import Ledger
    from tollway.metrics.observer import Snapshot
    from tollway.stores.breaker import Breaker
    from tollway.stores.journal import Journal

Families = list[Any]

BREAKER_STATES = ("closed", "open", "half_open")
HOOK_STATUSES = ("pending", "delivered", "dead")
MAX_HOOKS = 100
"""Hooks given series of their own; more (rows of hooks long gone from the policy) are summed
under ``hook="_other"``."""


def _number(value: int | Decimal) -> float:
    return float(value)


def decisions(snap: Snapshot, bounds: tuple[float, ...]) -> Families:
    made = CounterMetricFamily(
        "tollway_decisions",
        "Acquire decisions, by plan, operation and outcome (allowed, denied, degraded).",
        labels=["plan", "operation", "outcome"],
    )
    for (plan, operation, outcome), n in sorted(snap.decisions.items()):
        made.add_metric([plan, operation, outcome], n)
    denials = CounterMetricFamily(
        "tollway_denials",
        "Denied decisions, by the limit that denied them (one decision may count under "
        "several limits).",
        labels=["plan", "operation", "limit"],
    )
    for (plan, operation, limit), n in sorted(snap.denials.items()):
        denials.add_metric([plan, operation, limit], n)
    degraded = CounterMetricFamily(
        "tollway_degraded_decisions",
        "Decisions taken without the store (its on_error decided), by verdict.",
        labels=["plan", "operation", "verdict"],
    )
    for (plan, operation, verdict), n in sorted(snap.degraded.items()):
        degraded.add_metric([plan, operation, verdict], n)
    return [made, denials, degraded, _latency(snap, bounds), *_top(snap)]


def _latency(snap: Snapshot, bounds: tuple[float, ...]) -> Any:
    family = HistogramMetricFamily(
        "tollway_acquire_duration_seconds",
        "Time of acquire calls as the caller waits: the store's round trip and tollway's work.",
    )
    running, cumulative = 0, []
    for bound, n in zip((*(repr(b) for b in bounds), "+Inf"), snap.buckets, strict=True):
        running += n
        cumulative.append((bound, running))
    family.add_metric([], cumulative, snap.latency_sum)
    return family


def _top(snap: Snapshot) -> Iterator[Any]:
    seen = GaugeMetricFamily(
        "tollway_top_subject_decisions",
        "Decisions of each of the busiest subjects since start (Space-Saving estimate: it "
        "may overcount by the count it inherited).",
        labels=["subject"],
    )
    remaining = GaugeMetricFamily(
        "tollway_subject_remaining",
        "What each of the busiest subjects has left under each limit, as of its last decision "
        "(units; money in the currency).",
        labels=["subject", "limit", "kind", "operation"],
    )
    used = GaugeMetricFamily(
        "tollway_subject_used_ratio",
        "Used share of each limit of the busiest subjects, as of its last decision (a rate "
        "limit: the burst in use).",
        labels=["subject", "limit", "kind", "operation"],
    )
    for tracked in snap.top:
        seen.add_metric([tracked.key], tracked.count)
        for state in _standing(tracked.value):
            labels = [tracked.key, state.name, state.kind, state.operation or ""]
            remaining.add_metric(labels, _number(state.remaining))
            if state.limit:
                used.add_metric(labels, _number(state.used) / _number(state.limit))
    yield from (seen, remaining, used)


def _standing(decision: Decision) -> Iterable[LimitState]:
    if decision.degraded:
        return ()  # no figures from the store
    return (s for s in decision.limits if s.kind not in ("gate", "credits") and not s.shadow)


def store(name: str, breaker: Breaker | None, journal: Journal | None) -> Families:
    out: Families = []
    if breaker is not None:
        state = GaugeMetricFamily(
            "tollway_store_breaker_state",
            "The store's circuit breaker: 1 for its current state (closed, open, half_open).",
            labels=["store", "state"],
        )
        now = breaker.state
        for each in BREAKER_STATES:
            state.add_metric([name, each], 1.0 if each == now else 0.0)
        out.append(state)
    if journal is not None:
        size = GaugeMetricFamily(
            "tollway_journal_bytes",
            "Bytes of journaled steps waiting to be replayed into the store (every process's).",
            labels=["store"],
        )
        size.add_metric([name], journal.size_bytes)
        out.append(size)
    return out


def providers(status: dict[str, Decision]) -> Families:
    spend = GaugeMetricFamily(
        "tollway_provider_spend",
        "Money spent with each provider in the budget's current window (today, for a daily "
        "budget).",
        labels=["provider", "limit", "currency"],
    )
    budget = GaugeMetricFamily(
        "tollway_provider_budget",
        "Each provider budget's amount for its window.",
        labels=["provider", "limit", "currency"],
    )
    remaining = GaugeMetricFamily(
        "tollway_provider_remaining",
        "What is left under each limit of each provider (units; money in the currency).",
        labels=["provider", "limit", "kind", "currency"],
    )
    cooldown = GaugeMetricFamily(
        "tollway_provider_cooldown_seconds",
        "Seconds until each provider's health gates are open again (0: open).",
        labels=["provider"],
    )
    for provider, decision in sorted(status.items()):
        wait = 0.0
        for state in decision.limits:
            if state.kind == "gate":
                wait = max(wait, state.reset_after)
                continue
            currency = state.currency or ""
            if state.kind == "budget":
                spend.add_metric([provider, state.name, currency], _number(state.used))
                budget.add_metric([provider, state.name, currency], _number(state.limit))
            labels = [provider, state.name, state.kind, currency]
            remaining.add_metric(labels, _number(state.remaining))
        cooldown.add_metric([provider], wait)
    return [spend, budget, remaining, cooldown]


def drain(consumer: str, stats: DrainStats) -> Families:
    out: Families = []
    counters = (
        ("events", stats.events, "Usage events the drain committed to the ledger."),
        ("batches", stats.batches, "Batches the drain committed."),
        ("dead_entries", stats.bad, "Stream entries parked in the dead-entry stream."),
        ("commit_failures", stats.commit_failures, "Ledger commits that failed."),
        ("redis_failures", stats.redis_failures, "Stream reads that failed."),
    )
    for name, value, doc in counters:
        family = CounterMetricFamily(f"tollway_drain_{name}", doc, labels=["consumer"])
        family.add_metric([consumer], value)
        out.append(family)
    gauges = (
        ("lag_seconds", stats.lag_s, "Age of the oldest event of the drain's last batch."),
        ("max_lag_seconds", stats.max_lag_s, "Highest lag_seconds since the drain started."),
        ("streams", stats.streams, "Event streams the drain reads."),
    )
    for name, number, doc in gauges:
        gauge = GaugeMetricFamily(f"tollway_drain_{name}", doc, labels=["consumer"])
        gauge.add_metric([consumer], number)
        out.append(gauge)
    return out


def hook_counts_flow(dialect: str) -> Flow[list[tuple[str, str, int]]]:
    """(hook, status, messages) of the ledger's hook outbox (one GROUP BY, either dialect)."""
    rows = yield Query("SELECT hook, status, COUNT(*) FROM hook_messages GROUP BY hook, status")
    return [(str(hook), str(status), int(n)) for hook, status, n in rows]


def hooks(ledger: Ledger) -> Families:
    rows = ledger.transact(lambda: hook_counts_flow(ledger.dialect))
    names = sorted({hook for hook, _, _ in rows})
    kept = set(names[:MAX_HOOKS])
    counts: dict[tuple[str, str], int] = {}
    for hook, status, n in rows:
        key = (hook if hook in kept else "_other", status)
        counts[key] = counts.get(key, 0) + n
    messages = GaugeMetricFamily(
        "tollway_hook_messages",
        "Hook messages in the ledger's outbox, by delivery state (pending, delivered, dead).",
        labels=["hook", "status"],
    )
    dead = GaugeMetricFamily(
        "tollway_hook_dead_letters",
        "Hook messages given up on (dead letters), waiting for a retry or a replay.",
        labels=["hook"],
    )
    for hook in sorted({hook for hook, _ in counts}):
        for status in HOOK_STATUSES:
            messages.add_metric([hook, status], counts.get((hook, status), 0))
        dead.add_metric([hook], counts.get((hook, "dead"), 0))
    return [messages, dead]
