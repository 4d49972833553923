"""The plan in force over a period, piece by piece, from a subject's plan history.

A history is the ledger's `PlanChange` rows of one subject, in ``(effective_us, seq)`` order;
from a row's ``effective_us`` on, its plan is in force (None: the policy's default plan). The
plan in force at the period's start carries in; every change inside the period opens a new
`Segment`. Times are taken as given: a ``next_period`` change is recorded by the facade with
``effective_us`` at the period's end, so it opens the next period's first segment.

A ``trial`` row has ``trial_end_us``: its segment is a trial (no fee) until then, and from
then on the subscription continues on the plan's ``trial_then`` when set, else on the same
plan. That continuation is derived here from the trial row; a later change recorded at or
before the trial's end (an explicit ``trial_end`` row, an upgrade, a cancellation) overrides
it, and a trial cut short that way ends with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tollway.billing.records import PlanChange, Proration
from tollway.policy.model import Plan

__all__ = ["Segment", "plan_at", "segments"]


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of a period under one plan."""

    plan: str | None
    start_us: int
    end_us: int
    trial: bool = False
    """No fee is due in a trial segment."""
    proration: Proration = "prorate"
    """How the change that opened it splits the fee (``prorate`` for a segment that carries
    in from before the period, or one a trial's end opened)."""
    changed: bool = False
    """Whether a change inside the period opened it (False: carried in, or a trial's end)."""

    @property
    def seconds(self) -> int:
        return (self.end_us - self.start_us) // 1_000_000


@dataclass(frozen=True, slots=True)
class _State:
    at_us: int
    plan: str | None
    trial: bool
    proration: Proration
    changed: bool


def _timeline(
    history: Iterable[PlanChange], default_plan: str | None, plans: Mapping[str, Plan]
) -> list[_State]:
    """Every change as a state, with the continuation of each trial inserted at its end."""
    rows = sorted(history, key=lambda c: (c.effective_us, c.seq))
    states: list[_State] = []
    for n, row in enumerate(rows):
        plan = row.plan if row.plan is not None else default_plan
        if row.kind == "trial" and row.trial_end_us is not None:
            states.append(_State(row.effective_us, plan, True, row.proration, True))
            later = rows[n + 1].effective_us if n + 1 < len(rows) else None
            if row.trial_end_us > row.effective_us and (later is None or later > row.trial_end_us):
                spec = plans.get(plan) if plan is not None else None
                then = spec.trial_then if spec is not None and spec.trial_then else plan
                states.append(_State(row.trial_end_us, then, False, "prorate", False))
        else:
            states.append(_State(row.effective_us, plan, False, row.proration, True))
    return states


def plan_at(
    history: Iterable[PlanChange],
    t_us: int,
    default_plan: str | None,
    plans: Mapping[str, Plan] | None = None,
) -> tuple[str | None, bool]:
    """(the plan in force at ``t_us``, whether it is a trial there)."""
    found: tuple[str | None, bool] = (default_plan, False)
    for state in _timeline(history, default_plan, plans or {}):
        if state.at_us > t_us:
            break
        found = (state.plan, state.trial)
    return found


def segments(
    history: Iterable[PlanChange],
    start_us: int,
    end_us: int,
    default_plan: str | None,
    plans: Mapping[str, Plan] | None = None,
) -> list[Segment]:
    """The plan in force over ``[start_us, end_us)``, as contiguous segments covering it.

    ``plans`` (the policy's) gives each trial's ``trial_then``; without it a trial continues
    on its own plan. Changes at the same instant: the last recorded wins.
    """
    if end_us <= start_us:
        return []
    timeline = _timeline(history, default_plan, plans or {})
    current = _State(start_us, default_plan, False, "prorate", False)
    inside: list[_State] = []
    for state in timeline:
        if state.at_us <= start_us:
            current = _State(start_us, state.plan, state.trial, "prorate", False)
        elif state.at_us < end_us:
            if inside and inside[-1].at_us == state.at_us:
                inside[-1] = state
            else:
                inside.append(state)
    out: list[Segment] = []
    for state in [current, *inside]:
        if out:
            last = out[-1]
            out[-1] = Segment(
                last.plan, last.start_us, state.at_us, last.trial, last.proration, last.changed
            )
        out.append(
            Segment(state.plan, state.at_us, end_us, state.trial, state.proration, state.changed)
        )
    return out
