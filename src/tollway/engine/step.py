"""`Step`: one request to the store's atomic step, its modes, and the decision taken when the
store cannot be asked. `tollway.engine.core.Engine` builds steps; `tollway.engine.replies`
holds what the store answers.
"""

from __future__ import annotations

import time

from tollway.engine.decision import Decision, DegradedDecision
from tollway.engine.rules import ALWAYS, Check, Rule, Span

ACQUIRE = 0
RESERVE = 1
PEEK = 2

MAX_COST = 10**15


class Step:
    """One request to the store: the subject's expected plan, the rules, costs and windows."""

    __slots__ = (
        "amount",
        "assigned",
        "attrs",
        "call_id",
        "check",
        "cost",
        "costs",
        "event",
        "hold_id",
        "hold_ttl_us",
        "max_repeats",
        "mode",
        "packed",
        "plan",
        "rules",
        "span",
        "subject",
        "windows",
    )

    def __init__(
        self,
        subject: str,
        assigned: str | None,
        plan: str | None,
        check: Check | None,
        cost: int,
        amount: int | None,
        costs: list[int],
        mode: int,
    ) -> None:
        self.subject = subject
        self.assigned = assigned
        """The plan the subject was assigned, as this process last knew it (None: none)."""
        self.plan = plan
        """The plan in force: the assigned one, else the policy's default."""
        self.check = check
        self.rules: tuple[Rule, ...] = check.rules if check is not None else ()
        self.cost = cost
        """Units of cost."""
        self.amount = amount
        """Micro-units of money (None when no budget applies and none was given)."""
        self.costs = costs
        """Per rule: units, or micro-units for a budget."""
        self.mode = mode
        self.windows: list[tuple[int, int, str] | None] = []
        """Per rule, the window it counts in: (start, end, script fragment); None for a rate."""
        self.packed = ""
        """The rules' part of the Redis script's JSON argument (",rule,rule...")."""
        self.span: Span = (0, ALWAYS, [], "")
        """When the windows hold: a store whose clock is outside says the step is stale."""
        self.hold_id = ""
        self.hold_ttl_us = 0
        self.event = ""
        """The usage template its event is appended with ('': no events; see
        `tollway.events`)."""
        self.call_id = ""
        """The caller's request id: the event id, and how a retried step is recognized."""
        self.attrs = ""
        """The caller's attributes for the event, as JSON ('' for none)."""
        self.max_repeats = 2
        """How often an acquire's request id may be repeated (``[ledger] max_repeats``)."""

    def for_call(self, call_id: str, attrs: str) -> Step:
        """A copy carrying one call's request id and attributes (a cached step is shared)."""
        copy = Step.__new__(Step)
        for name in Step.__slots__:
            setattr(copy, name, getattr(self, name))
        copy.call_id, copy.attrs = call_id, attrs
        return copy

    @property
    def operation(self) -> str:
        return self.check.operation if self.check is not None else ""

    @property
    def scope(self) -> str:
        """What a request id is scoped to besides the subject: the operation (as the usage
        template names it), so an id taken on one operation is new on another."""
        return self.operation or self.plan or ""

    @property
    def fingerprint(self) -> str:
        """What a repeat of a request id must match: its cost and, when a currency applies,
        its amount (as the usage template records them, so a replayed journal entry can
        rebuild it from its template); another cost or amount under the id is a conflict."""
        check = self.check
        if check is not None and check.currency is not None and self.amount is not None:
            return f"{self.cost}/{self.amount}"
        return f"{self.cost}/"

    @property
    def marks(self) -> bool:
        return self.check is not None and self.check.marks


def system_clock() -> int:
    """Microseconds since the epoch."""
    return time.time_ns() // 1000


PROVIDER_PREFIX = "@provider:"
"""Providers count under subjects of their own; no subject of an application starts so."""


KEY_FAILURES_PREFIX = "@key-failures:"
"""The internal subjects counting failed API-key attempts per client address
(`tollway.http.attempts`); reserved like `PROVIDER_PREFIX`."""
RESERVED_PREFIXES = (
    (PROVIDER_PREFIX, "the providers of the policy"),
    (KEY_FAILURES_PREFIX, "the counts of failed API-key attempts"),
)


def provider_subject(name: str) -> str:
    return PROVIDER_PREFIX + name


def closed_limits(step: Step) -> list[str]:
    """The enforcing limits of ``step`` that fail closed: without the store, any of them
    denies it (the store journals a step in doubt by the same rule, see `degraded`)."""
    return [rule.name for rule in step.rules if rule.closed and not rule.shadow]


def degraded(step: Step, reason: str, retry_after: float, now_us: int) -> Decision:
    """The decision taken without the store: denied if any enforcing limit fails closed."""
    closed = closed_limits(step)
    if closed:
        reason += f"; fail-closed limits deny: {', '.join(closed)}"
    return DegradedDecision(
        not closed, step, now_us, reason, retry_after if closed else None, tuple(closed)
    )


__all__ = [
    "ACQUIRE",
    "MAX_COST",
    "PEEK",
    "KEY_FAILURES_PREFIX",
    "PROVIDER_PREFIX",
    "RESERVED_PREFIXES",
    "RESERVE",
    "Step",
    "closed_limits",
    "degraded",
    "provider_subject",
    "system_clock",
]
