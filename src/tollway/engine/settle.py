"""Reservation holds and how a reservation is settled, shared by every store.

A hold records, per counter, how much a reservation took: microseconds of a rate's TAT, or
units (micro-units for money) of a window. Settling applies the difference between what was
held and what was actually used; a hold that expired was already given back, so a late commit
takes the whole actual cost instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from tollway.engine.rules import GATE, RATE, Rule
from tollway.engine.step import Step


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    subject: str
    expires_us: int
    entries: tuple[tuple[str, bool, int, int, int], ...]
    """Per rule of the step: (field, is a rate, amount held, window start, window end); the
    amount is 0 for a shadow rule that did not fit, start and end are 0 for a rate."""
    keep: bool = False
    """No hold was left in the store: the amounts were taken at once (a provider call), so
    settling applies the difference whether or not the store still knows the id."""


def _amount(rule: Rule, cost: int) -> int:
    """What ``cost`` takes from the rule's counter: microseconds of TAT, or units."""
    return cost * rule.emission_us if rule.kind == RATE else cost


def hold_of(step: Step, misfits: int, expires_us: int) -> Hold:
    """The hold a reserve step leaves behind, in the step's rule order."""
    entries = tuple(
        (
            rule.field,
            rule.kind == RATE,
            0 if (misfits >> i) & 1 or rule.kind == GATE else _amount(rule, cost),
            0 if window is None else window[0],
            0 if window is None else window[1],
        )
        for i, (rule, window, cost) in enumerate(
            zip(step.rules, step.windows, step.costs, strict=True)
        )
    )
    return Hold(step.hold_id, step.subject, expires_us, entries)


@dataclass(frozen=True, slots=True)
class SettleStep:
    """Settle a hold: ``deltas`` apply while it lives, ``late_deltas`` once it has expired."""

    hold: Hold
    deltas: list[int]
    late_deltas: list[int]
    event: str = ""
    """The usage template of the event the settlement appends ('' for none)."""
    event_id: str = ""
    attrs: str = ""
    caller_id: bool = False
    """Whether ``event_id`` is the caller's request id: if already taken, the event gets
    ``ID~HOLD`` instead, so two consumptions never share one id."""


def settle_step(step: Step, hold: Hold, actual_costs: list[int] | None) -> SettleStep:
    """Commit ``actual_costs`` (per rule, in the rule's unit), or release when None."""
    if actual_costs is None:
        give_back = [-entry[2] for entry in hold.entries]
        return SettleStep(hold, give_back, give_back if hold.keep else [0] * len(hold.entries))
    actual = [
        0 if (entry[2] == 0 and not rule.enforcing) or rule.kind == GATE else _amount(rule, cost)
        for rule, cost, entry in zip(step.rules, actual_costs, hold.entries, strict=True)
    ]
    deltas = [a - entry[2] for a, entry in zip(actual, hold.entries, strict=True)]
    # Taken at once, never given back: settling it "late" is settling it live.
    return SettleStep(hold, deltas, deltas if hold.keep else actual)
