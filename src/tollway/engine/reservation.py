"""`ReservationCore`: a reservation's held step, its hold, and the settle arithmetic, shared by
`tollway.reservation.Reservation` and `AsyncReservation` (their commit and release are flows
of `tollway.engine.flows`).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from decimal import Decimal

from tollway.engine.core import Engine
from tollway.engine.decision import Decision
from tollway.engine.replies import Reply
from tollway.engine.settle import Hold, SettleStep, hold_of, settle_step
from tollway.engine.step import ACQUIRE, MAX_COST, Step, degraded
from tollway.engine.template import usage_template
from tollway.errors import InvalidArgumentError, ReservationError, StoreUnavailableError
from tollway.money import decimal_to_micros

__all__ = ["ReservationCore"]


class ReservationCore:
    """The held step, its hold, and the settle arithmetic.

    A reservation ``taken`` at once (a provider call: its step consumed, no hold left in the
    store) settles only a difference: committing what was taken needs no store call, and
    releasing gives it back. A taken call whose process dies stays counted, as it may have
    been billed.
    """

    def __init__(
        self, engine: Engine, step: Step, reply: Reply, decision: Decision, *, taken: bool = False
    ) -> None:
        self.engine = engine
        self.step = step
        self.decision = decision
        self.taken = taken
        self._misfits = reply.misfits
        self._expires_us = reply.now_us + step.hold_ttl_us
        self._hold: Hold | None = None
        self._lock = threading.Lock()
        self.settled = False
        self.committed: tuple[int, int | None, list[int]] = (0, None, [])
        """(units, micro-units, per-rule costs) of the commit, once made."""

    @property
    def hold(self) -> Hold:
        """What the reservation holds, per counter (built when first needed: a call committed
        as taken never needs it)."""
        if self._hold is None:
            hold = hold_of(self.step, self._misfits, self._expires_us)
            self._hold = replace(hold, keep=True) if self.taken else hold
        return self._hold

    def commit_as_taken(self, actual: int | None, amount: Decimal | None) -> bool:
        """Commit a taken reservation at what it took, if that is what is asked: already
        counted, so nothing is sent. False when there is a difference to settle."""
        step = self.step
        if not self.taken or amount is not None or (actual is not None and actual != step.cost):
            return False
        self._claim()
        self.committed = (step.cost, step.amount, step.costs)
        return True

    def _claim(self) -> None:
        with self._lock:
            if not self.decision.allowed:
                raise ReservationError(
                    "this reservation was denied; there is nothing to commit or release"
                )
            if self.settled:
                raise ReservationError(f"reservation {self.step.hold_id} was already settled")
            self.settled = True

    def commit_step(self, actual: int | None, amount: Decimal | None) -> SettleStep:
        step = self.step
        units = step.cost if actual is None else actual
        if isinstance(units, bool) or not isinstance(units, int) or not 0 <= units <= MAX_COST:
            raise InvalidArgumentError(
                f"actual: {actual!r} is not a cost; expected a whole number of units from 0 "
                f"to {MAX_COST}"
            )
        micros = self._amount(units, amount)
        costs = [micros if rule.money else units for rule in step.rules]
        self._claim()
        self.committed = (units, micros if step.check and step.check.has_money else None, costs)
        settle = settle_step(step, self.hold, costs)
        if step.event:
            if self.taken:  # counted when taken: the event corrects it by the difference
                held = step.amount or 0
                return self._with_event(settle, units - step.cost, micros - held, correction=True)
            return self._with_event(settle, units, micros)
        return settle

    def _with_event(
        self, settle: SettleStep, units: int, micros: int, *, correction: bool = False
    ) -> SettleStep:
        """``settle``, appending the usage event of ``units`` (and ``micros``) with it; none
        for a correction of nothing."""
        if correction and not units and not micros:
            return settle
        step = self.step
        template = usage_template(step, self.engine.policy.version, units, micros)
        if correction:
            event_id = f"adj_{uuid.uuid4().hex}"
        else:
            event_id = step.call_id or f"res_{step.hold_id}"
        caller = bool(step.call_id) and not correction
        return replace(
            settle, event=template, event_id=event_id, attrs=step.attrs, caller_id=caller
        )

    def _amount(self, units: int, amount: Decimal | None) -> int:
        if amount is not None:
            return decimal_to_micros(amount, what="amount")
        if units == self.step.cost and self.step.amount is not None:
            return self.step.amount  # committing the estimate takes what was held
        check = self.step.check
        if check is not None and check.price_micros is not None:
            return units * check.price_micros
        return self.step.amount or 0

    def nothing_to_settle(self, settle: SettleStep) -> bool:
        """A taken reservation committed at what it took: already counted, nothing to send."""
        return self.taken and not any(settle.deltas) and not settle.event

    def release_step(self) -> SettleStep:
        self._claim()
        settle = settle_step(self.step, self.hold, None)
        if self.taken and self.step.event:  # its event was appended when taken: take it back
            step = self.step
            return self._with_event(settle, -step.cost, -(step.amount or 0), correction=True)
        return settle

    def committed_step(self) -> Step:
        """The held step at the committed cost."""
        held = self.step
        units, micros, costs = self.committed
        step = Step(
            held.subject, held.assigned, held.plan, held.check, units, micros, costs, ACQUIRE
        )
        step.windows, step.span, step.packed = held.windows, held.span, held.packed
        if held.event:  # journaled while the store is away, it is replayed with its event
            step.event = usage_template(step, self.engine.policy.version)
            step.call_id = held.call_id or f"res_{held.hold_id}"
            step.attrs = held.attrs
        return step

    def settled_decision(self, reply: Reply) -> Decision:
        """Where the limits stand after the settlement, at the committed cost."""
        return Decision(True, self.committed_step(), reply.now_us, reply.values, 0)

    def unsettled(self, exc: StoreUnavailableError) -> tuple[Step | None, Decision]:
        """The store could not take the commit: what to journal, to be counted when it answers
        again (the hold, if any, expires and gives the estimate back), and the decision."""
        step = self.committed_step()
        decision = degraded(step, str(exc), exc.retry_after, self.engine.clock())
        if self.taken:  # the estimate is in the store already: journal what is above it
            return self._above_estimate(step), decision
        return step, decision

    def _above_estimate(self, committed: Step) -> Step | None:
        """The part of a commit above what a taken reservation took (a refund below it is
        dropped while the store is away: the call stays counted, never under)."""
        extra = [max(0, c - h) for c, h in zip(committed.costs, self.step.costs, strict=True)]
        if not any(extra):
            return None
        owed = Step(
            committed.subject,
            committed.assigned,
            committed.plan,
            committed.check,
            committed.cost,
            committed.amount,
            extra,
            ACQUIRE,
        )
        owed.windows, owed.span, owed.packed = committed.windows, committed.span, committed.packed
        if self.step.event:  # a correction of the taken call's event, by what is above it
            held = self.step
            units = max(0, committed.cost - held.cost)
            micros = max(0, (committed.amount or 0) - (held.amount or 0))
            owed.event = usage_template(owed, self.engine.policy.version, units, micros)
            owed.call_id = f"adj_{uuid.uuid4().hex}"
        return owed
