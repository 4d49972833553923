"""The metering part of ``tollway demo``, as text: from a `tollway.demo.metering.MeteringDemo`."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from tollway.cli.output import plural, table
from tollway.demo.metering import CALLABLE, ENRICH_PRICE, GEOCODE_PRICE, QUOTA, SUBJECTS
from tollway.metering.entries import EXCEEDED, THRESHOLD, USAGE

if TYPE_CHECKING:
    from tollway.demo.metering_figures import MeteringDemo

__all__ = ["money", "render_metering"]

CENT = Decimal("0.001")


def money(value: Decimal, currency: str = "USD") -> str:
    """Money as the report shows it: three decimals (the prices are in tenths of a cent)."""
    return f"{value.quantize(CENT)} {currency}"


def _drift(value: int | Decimal) -> str:
    return "0" if value == 0 else f"{value:+}"


def _percent(fraction: str | None) -> str:
    if fraction is None:
        return "?"
    return f"{Decimal(fraction) * 100:.0f}%"


def render_metering(demo: MeteringDemo) -> str:
    """The demo's metering part: per subject, the store's counters next to the ledger's
    totals; the notices in order; what each hook received; one closing check."""
    lines = [
        f"Metering: {plural(len(demo.subjects), 'subject')} over {demo.minutes} minutes "
        f"(seed {demo.seed}), memory store, fake clock; each allowed step is a",
        "usage event in a SQLite ledger, delivered to a callable hook and to a signed webhook",
        f"  plan metered: daily {QUOTA}/day (thresholds 50%, 80%, 100%), spend 2.00 USD/day",
        f"  prices: geocode {money(GEOCODE_PRICE)} a call, enrich {money(ENRICH_PRICE)} a unit",
        "",
    ]
    rows = []
    for s in demo.subjects:
        rows.append(
            [
                s.subject,
                str(s.attempts),
                str(s.allowed),
                str(s.refused),
                str(s.duplicates),
                str(s.store_units),
                str(s.ledger_units),
                _drift(s.unit_drift),
                money(s.store_spend, s.currency),
                money(s.ledger_spend, s.currency),
                _drift(s.spend_drift),
            ]
        )
    total_spend = sum((s.store_spend for s in demo.subjects), Decimal(0))
    total_ledger = sum((s.ledger_spend for s in demo.subjects), Decimal(0))
    rows.append(
        [
            "total",
            str(sum(s.attempts for s in demo.subjects)),
            str(demo.allowed),
            str(sum(s.refused for s in demo.subjects)),
            str(sum(s.duplicates for s in demo.subjects)),
            str(sum(s.store_units for s in demo.subjects)),
            str(sum(s.ledger_units for s in demo.subjects)),
            _drift(sum(s.unit_drift for s in demo.subjects)),
            money(total_spend),
            money(total_ledger),
            _drift(total_spend - total_ledger),
        ]
    )
    headers = ["subject", "attempts", "allowed", "refused", "duplicates", "units: store",
               "ledger", "drift", "spend: store", "ledger", "drift"]  # fmt: skip
    lines += table(headers, rows, right=set(range(1, 11)))
    who, estimate, actual = demo.reservation
    lines += [
        "",
        "  attempts: first tries (a retry of a refused request is one of its own); duplicates:",
        "  retries of a request id already taken, answered allowed, nothing consumed again",
        f"  {who} held a reservation of {estimate} enrich units and committed {actual}: "
        f"the store and the ledger count {actual}",
        "",
        "Notices, in order (to the callable hook):",
    ]
    notice_rows = []
    for n in demo.notices:
        if n.type == THRESHOLD:
            what = f"threshold {_percent(n.threshold)}"
            when = f"reached at {n.used} of {QUOTA}"
        else:
            what = "exceeded" if n.type == EXCEEDED else n.type
            when = f"refused at {n.used} of {QUOTA}"
        notice_rows.append([n.time, n.subject, n.limit, what, when])
    if notice_rows:
        lines += table(["time", "subject", "limit", "notice", "count"], notice_rows, indent="  ")
    else:
        lines.append("  none")

    counts = demo.callable_counts
    received = ", ".join(f"{counts[kind]} {kind}" for kind in (USAGE, THRESHOLD, EXCEEDED))
    lines += [
        "",
        f'Callable hook "calls" ({CALLABLE}): {plural(counts.total(), "event")}: {received}',
    ]
    hook = demo.webhook
    verified = (
        f"all {hook.verified} verified"
        if hook.verified == hook.requests
        else f"{hook.verified} verified, {hook.requests - hook.verified} NOT"
    )
    lines += [
        f'Webhook "minutes" (aggregate = "minute") to a receiver on 127.0.0.1: '
        f"{plural(hook.requests, 'request')} (one per subject, meter and minute),",
        f"  Standard Webhooks signatures {verified} (a whsec_ secret made for this run); units:",
    ]
    minutes = sorted({minute for _, minute in hook.buckets})
    grid = [
        [minute, *(str(hook.buckets.get((s, minute), "-")) for s in SUBJECTS)] for minute in minutes
    ]
    grid.append(["units", *(str(hook.quantity(s)) for s in SUBJECTS)])
    grid.append(["events", *(str(hook.events.get(s, 0)) for s in SUBJECTS)])
    grid.append(["amount", *(money(hook.amounts.get(s, Decimal(0))) for s in SUBJECTS)])
    right = set(range(1, len(SUBJECTS) + 1))
    lines += table(["minute", *SUBJECTS], grid, right=right, indent="  ")
    for failure in hook.failures[:5]:
        lines.append(f"  not verified: {failure}")

    lines.append("")
    for step, flush in zip(("flush", "flush again"), demo.flushes, strict=False):
        lines.append(
            f"  {step} at {flush.time}: {plural(flush.written, 'usage event')} written, "
            f"{plural(flush.webhook_requests, 'minute bucket')} posted"
        )
    if len(demo.flushes) > 1:
        lines.append(
            "  (a minute's bucket is posted once the minute and the dispatcher's 5 s grace "
            "have passed)"
        )
    statuses = ", ".join(
        f"{hook_name} {count} {status}"
        for (hook_name, status), count in sorted(demo.hook_statuses.items())
    )
    lines += [
        "",
        f"Ledger outbox: {statuses}; tollway reconcile: "
        f"{plural(demo.reconcile_rows, 'counter')}, {plural(demo.reconcile_drifts, 'drift')}",
        "",
        _closing(demo),
    ]
    return "\n".join(lines)


def _closing(demo: MeteringDemo) -> str:
    """One line: every consumption is in the ledger once, or what does not add up."""
    problems = []
    if demo.ledger_count != demo.allowed:
        problems.append(f"{demo.ledger_count} ledger events for {demo.allowed} consumptions")
    drifted = [s.subject for s in demo.subjects if s.unit_drift or s.spend_drift]
    if drifted:
        problems.append(f"drift for {', '.join(drifted)}")
    usage_ids = demo.callable_usage_ids
    if len(usage_ids) != demo.allowed or len(set(usage_ids)) != len(usage_ids):
        problems.append(f"the callable got {len(usage_ids)} usage events")
    if demo.caller_ids_in_ledger != demo.caller_ids:
        problems.append(f"{demo.caller_ids - demo.caller_ids_in_ledger} request ids missing")
    hook = demo.webhook
    if hook.verified != hook.requests:
        problems.append(f"{plural(hook.requests - hook.verified, 'webhook request')} not verified")
    for s in demo.subjects:
        if (hook.quantity(s.subject), hook.events.get(s.subject, 0)) != (s.store_units, s.allowed):
            problems.append(f"the webhook's buckets of {s.subject} do not add up to its usage")
        elif hook.amounts.get(s.subject, Decimal(0)) != s.store_spend:
            problems.append(f"the webhook's amounts of {s.subject} do not add up to its spend")
    if problems:
        return "MISMATCH: " + "; ".join(problems)
    duplicates = sum(s.duplicates for s in demo.subjects)
    return (
        f"Each consumption is in the ledger exactly once: {demo.allowed} consumptions, "
        f"{demo.ledger_count} usage events ({demo.caller_ids} under a request id; "
        f"{plural(duplicates, 'retry', 'retries')} added nothing); no drift, to the unit and cent."
    )
