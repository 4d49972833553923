"""Plan history (``billing_plan_changes``) and trials (``billing_trials``) as flows.

A change's ``seq`` is the next one of its subject, computed in the transaction that appends
it: on PostgreSQL an advisory lock on the subject serializes two appends at once (neither
reads a seq the other is about to take); SQLite's ``BEGIN IMMEDIATE`` serializes writers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from tollway.billing.records import PRORATIONS, ChangeKind, PlanChange, Proration
from tollway.billing.storage.sql import Dialect, mark, marks, require_text
from tollway.errors import BillingError, TrialUsedError
from tollway.metering.ledger.flows import Flow, Query

__all__ = ["append_change", "changes", "subjects_with_history", "take_trial"]

_KINDS = ("assign", "trial", "trial_end", "cancel", "scheduled")
_COLS = (
    "subject, seq, plan, effective_at_us, recorded_at_us, kind, proration, trial_end_us, identity"
)
_LOCK_SUBJECT = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7330480721592010342))"


def append_change(
    dialect: Dialect,
    subject: str,
    plan: str | None,
    *,
    effective_us: int,
    recorded_us: int,
    kind: ChangeKind = "assign",
    proration: Proration = "prorate",
    trial_end_us: int | None = None,
    identity: str | None = None,
) -> Flow[PlanChange]:
    """Append one change to ``subject``'s plan history; returns the row as stored."""
    require_text("subject", subject)
    if plan is not None:
        require_text("plan", plan)
    if kind not in _KINDS:
        raise BillingError(f"kind: {kind!r} is not a change kind; expected one of {_KINDS}")
    if proration not in PRORATIONS:
        raise BillingError(f"proration: {proration!r} is not valid; expected one of {PRORATIONS}")
    p = mark(dialect)
    if dialect == "postgres":  # serializes appends of one subject: no seq is read twice
        yield Query(_LOCK_SUBJECT, (subject,))
    rows = yield Query(
        f"SELECT COALESCE(MAX(seq), 0) FROM billing_plan_changes WHERE subject = {p}", (subject,)
    )
    change = PlanChange(
        subject=subject,
        seq=int(rows[0][0]) + 1,
        plan=plan,
        effective_us=int(effective_us),
        recorded_us=int(recorded_us),
        kind=kind,
        proration=proration,
        trial_end_us=trial_end_us,
        identity=identity,
    )
    yield Query(
        f"INSERT INTO billing_plan_changes ({_COLS}) VALUES ({marks(dialect, 9)})",
        _row(change),
    )
    return change


def changes(dialect: Dialect, subject: str, until_us: int | None = None) -> Flow[list[PlanChange]]:
    """``subject``'s plan history recorded up to ``until_us`` (None: all), in force order
    (``effective_us``, then ``seq``)."""
    p = mark(dialect)
    sql = f"SELECT {_COLS} FROM billing_plan_changes WHERE subject = {p}"
    params: list[Any] = [subject]
    if until_us is not None:
        sql += f" AND recorded_at_us <= {p}"
        params.append(int(until_us))
    rows = yield Query(sql + " ORDER BY effective_at_us, seq", params)
    return [_change(row) for row in rows]


def subjects_with_history(dialect: Dialect) -> Flow[list[str]]:
    """Every subject with at least one plan change, sorted."""
    del dialect
    rows = yield Query("SELECT DISTINCT subject FROM billing_plan_changes ORDER BY subject")
    return [str(row[0]) for row in rows]


def take_trial(dialect: Dialect, identity: str, subject: str, now_us: int) -> Flow[None]:
    """Record ``subject``'s trial under ``identity``; `TrialUsedError` when that identity
    already had one (whoever took it: the message does not say, so no subject leaks)."""
    require_text("identity", identity)
    require_text("subject", subject)
    p = mark(dialect)
    rows = yield Query(
        f"INSERT INTO billing_trials (identity, subject, started_at_us) VALUES ({p}, {p}, {p}) "
        "ON CONFLICT (identity) DO NOTHING RETURNING identity",
        (identity, subject, int(now_us)),
    )
    if not rows:
        raise TrialUsedError(f"identity {identity!r} already had a trial; one trial per identity")


def _row(change: PlanChange) -> tuple[Any, ...]:
    return (
        change.subject,
        change.seq,
        change.plan,
        change.effective_us,
        change.recorded_us,
        change.kind,
        change.proration,
        change.trial_end_us,
        change.identity,
    )


def _change(row: Sequence[Any]) -> PlanChange:
    return PlanChange(
        subject=row[0],
        seq=int(row[1]),
        plan=row[2],
        effective_us=int(row[3]),
        recorded_us=int(row[4]),
        kind=cast(ChangeKind, row[5]),
        proration=cast(Proration, row[6]),
        trial_end_us=None if row[7] is None else int(row[7]),
        identity=row[8],
    )
