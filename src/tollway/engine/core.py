"""`Engine`: what to ask the store, and how to read its answer, for both faces.

A flow (`tollway.engine.flow`) asks `Engine` for a `Step`, yields it to the store (sync or
async, that is the faces' only difference), and gives the store's `Reply` back to
`Engine.finish`, which returns the decision, or ``None`` after adjusting itself when the store
said the step was built on stale knowledge (the subject's plan changed, or a window ended):
the flow then builds the step again.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from tollway.engine.decision import Decision, DuplicateDecision, RefusedRepeatDecision
from tollway.engine.replies import (
    CONFLICT,
    DENIED,
    DUPLICATE,
    OK,
    PLAN_MISMATCH,
    REPEATS,
    STALE_WINDOW,
    Reply,
)
from tollway.engine.rules import ALWAYS, Check, Compiled, compile_policy, plan_checks
from tollway.engine.step import (
    ACQUIRE,
    MAX_COST,
    PEEK,
    RESERVE,
    RESERVED_PREFIXES,
    Step,
    provider_subject,
    system_clock,
)
from tollway.engine.template import usage_template
from tollway.errors import (
    InvalidArgumentError,
    UnknownNameError,
    UnknownOperationError,
    UnknownPlanError,
    UnknownSubjectError,
)
from tollway.keyspace import MAX_SUBJECT
from tollway.money import MAX_MICROS, decimal_to_micros
from tollway.policy.model import Policy
from tollway.policy.overrides import Override, with_overrides

_UNSEEN: Any = object()
# Assignments cached per process; a stale entry costs one extra round trip, never a wrong answer.
_PLAN_CACHE_SIZE = 100_000


class Engine:
    """Pure, I/O-free: builds steps from the policy and turns store replies into decisions."""

    def __init__(self, policy: Policy, clock: Callable[[], int] | None = None) -> None:
        self.clock = clock or system_clock
        self._assigned: dict[str, str | None] = {}
        self.offset_us = 0
        """Store clock minus local clock, learned from replies, to pick the store's windows."""
        self._overrides: dict[str, tuple[Override, ...]] = {}
        self.use(policy)

    def use(self, policy: Policy) -> None:
        """Decide under ``policy`` from now on (an activation picked up without a restart).

        Compiled first, then swapped in; the step caches built under the old policy are
        replaced last, so a step being built meanwhile is of one policy or the other (a
        cached step is immutable and carries its own). Plan assignments stay valid: they are
        the store's, not the policy's. The open store keeps its ``[store]`` settings."""
        compiled = compile_policy(policy)
        self.policy = policy
        self.compiled: Compiled = compiled
        self.hold_ttl_us = policy.store.hold_ttl_ms * 1000
        self._default_plan = policy.defaults.plan
        self.events = policy.ledger.url is not None and policy.ledger.events
        """Whether steps append usage events (a ledger is configured and events are on)."""
        self.max_repeats = policy.ledger.max_repeats
        self._steps: dict[str, dict[str, Step]] = {}
        self._provider_steps: dict[str, Step] = {}
        """Recent default-cost acquire steps per subject and operation, reused while valid."""
        self._override_checks: dict[str, tuple[int, str, dict[str, Check], Check]] = {}
        """Per overridden subject: (valid until, plan, checks, usage check)."""

    # -- per-subject overrides --------------------------------------------------------------

    def set_overrides(self, overrides: Mapping[str, Sequence[Override]]) -> None:
        """Every subject's overrides from now on (replacing the previous set). A subject
        without one costs nothing: its steps are cached as before; an overridden subject's are
        not, so an override's end (``expires_us`` against this engine's clock: a wall clock,
        like the admin's that set it; not the store's) is seen by the next call."""
        before = self._overrides
        self._overrides = {subject: tuple(found) for subject, found in overrides.items() if found}
        self._override_checks = {}
        for subject in (*before, *self._overrides):
            self._steps.pop(subject, None)

    def overrides(self, subject: str) -> tuple[Override, ...]:
        """The subject's overrides in force now."""
        now = self.clock()
        return tuple(o for o in self._overrides.get(subject, ()) if o.expires_us > now)

    def _checks_of(self, subject: str, plan: str) -> tuple[Mapping[str, Check], Check] | None:
        now = self.clock()
        entry = self._override_checks.get(subject)
        if entry is not None and entry[1] == plan and now < entry[0]:
            return entry[2], entry[3]
        live = [o for o in self._overrides.get(subject, ()) if o.expires_us > now]
        found = self.policy.plans.get(plan)
        if not live or found is None:
            self._override_checks.pop(subject, None)
            return None
        limits = with_overrides(found.limits, tuple(o.limit for o in live))
        checks, usage = plan_checks(plan, limits, self.policy)
        self._override_checks[subject] = (min(o.expires_us for o in live), plan, checks, usage)
        return checks, usage

    # -- building steps ---------------------------------------------------------------------

    def check_subject(self, subject: object) -> str:
        if not isinstance(subject, str):
            raise InvalidArgumentError(
                f"subject: {subject!r} is a {type(subject).__name__}; expected a string"
            )
        if len(subject) > MAX_SUBJECT:
            raise InvalidArgumentError(
                f"subject: {subject[:80]!r}... is {len(subject)} characters long; expected at "
                f"most {MAX_SUBJECT}"
            )
        if not subject or not _printable(subject):
            raise InvalidArgumentError(
                f"subject: {subject[:80]!r} is not a valid subject; expected 1 to {MAX_SUBJECT} "
                "printable characters (no control characters, no line breaks)"
            )
        try:
            subject.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(
                f"subject: {subject[:80]!r} is not valid Unicode text ({exc.reason})"
            ) from None
        for prefix, owner in RESERVED_PREFIXES:
            if subject.startswith(prefix):
                raise InvalidArgumentError(
                    f"subject: {subject[:80]!r} starts with {prefix!r}, which is reserved for "
                    f"{owner}; expected another subject"
                )
        return subject

    def assigned(self, subject: str) -> str | None:
        return self._assigned.get(subject)

    def knows(self, subject: str) -> bool:
        """Whether this process has learned the subject's assignment (from a step or a read)."""
        return subject in self._assigned

    def remember(self, subject: str, plan: str | None) -> None:
        cache = self._assigned
        if len(cache) >= _PLAN_CACHE_SIZE and subject not in cache:
            cache.clear()
        cache[subject] = plan
        self._steps.pop(subject, None)  # they were built for the plan known before

    def plan_of(self, subject: str, assigned: str | None) -> str | None:
        plan = assigned if assigned is not None else self.policy.defaults.plan
        if plan is not None and plan not in self.compiled.checks:
            # An assignment made under another policy that no longer has that plan.
            raise UnknownPlanError(
                f"subject {subject!r} is assigned plan {plan!r}, which this policy does not "
                f"declare; known plans: {', '.join(sorted(self.compiled.checks)) or 'none'}"
            )
        return plan

    def consume(
        self, subject: str, operation: str, cost: int | None, amount: Decimal | None, mode: int
    ) -> Step:
        """A step that tries to take ``cost`` units (and ``amount`` money) of ``operation``."""
        if mode == ACQUIRE and cost is None and amount is None:
            # The common case: the same subject, operation and windows as a recent step, whose
            # Step (immutable once built) can be sent again as it is.
            steps = self._steps.get(subject)
            if steps is not None:
                step = steps.get(operation)
                if step is not None:
                    span = step.span  # its windows hold now: it is still the right step
                    if span[1] == ALWAYS or span[0] <= self.clock() + self.offset_us < span[1]:
                        return step
        assigned: str | None = self._assigned.get(subject, _UNSEEN)
        if assigned is _UNSEEN:
            self.check_subject(subject)
            self._assigned[subject] = assigned = None
        plan: str | None = assigned if assigned is not None else self._default_plan
        checks = self.compiled.checks.get(plan) if plan is not None else None
        if checks is None or plan is None:
            if self.plan_of(subject, assigned) is None:
                return Step(subject, None, None, None, 0, None, [], mode)  # unknown subject
            raise AssertionError("unreachable")  # pragma: no cover - plan_of raised
        overridden = bool(self._overrides) and subject in self._overrides
        if overridden:
            found = self._checks_of(subject, plan)
            if found is not None:
                checks = found[0]
        check = checks.get(operation)
        if check is None:
            raise UnknownOperationError(
                f"operation: {operation!r} is not declared in the policy; known operations: "
                f"{', '.join(sorted(checks)) or 'none'}"
            )
        if cost is None and amount is None and check.default_costs is not None:
            step = Step(
                subject,
                assigned,
                plan,
                check,
                check.default_cost,
                check.default_micros,
                check.default_costs,
                mode,
            )
        else:
            step = self._priced(subject, assigned, plan, check, cost, amount, mode)
        span = step.span = check.windows(self.clock() + self.offset_us)
        step.windows = span[2]
        step.packed = span[3]
        step.max_repeats = self.max_repeats
        if self.events:
            step.event = usage_template(step, self.policy.version)
        if mode == RESERVE:
            step.hold_ttl_us = self.hold_ttl_us
        elif mode == ACQUIRE and cost is None and amount is None and not overridden:
            steps = self._steps.get(subject)
            if steps is None:
                if len(self._steps) >= _PLAN_CACHE_SIZE:
                    self._steps.clear()
                steps = self._steps[subject] = {}
            steps[operation] = step
        return step

    def _priced(
        self,
        subject: str,
        assigned: str | None,
        plan: str,
        check: Check,
        cost: int | None,
        amount: Decimal | None,
        mode: int,
    ) -> Step:
        units = check.default_cost if cost is None else _check_cost(cost)
        micros = None if amount is None else decimal_to_micros(amount, what="amount")
        if micros is None and check.price_micros is not None:
            micros = units * check.price_micros
            if micros > MAX_MICROS:
                raise InvalidArgumentError(
                    f"cost: {units} units at the operation's price is more than the largest "
                    "amount a budget can hold"
                )
        costs = check.costs(units, micros)
        if costs is None:
            raise InvalidArgumentError(
                f"amount: operation {check.operation!r} has no price in the policy, and a "
                "budget limit applies to it; pass amount=Decimal(...)"
            )
        return Step(subject, assigned, plan, check, units, micros, costs, mode)

    def provider(
        self, name: str, cost: int | None, amount: Decimal | None, mode: int = ACQUIRE
    ) -> Step:
        """A step on a provider's health gates and limits (its subject is `provider_subject`)."""
        check = self.compiled.providers.get(name)
        if check is None:
            raise UnknownNameError(
                f"provider: {name!r} is not declared in the policy; known providers: "
                f"{', '.join(sorted(self.compiled.providers)) or 'none'}"
            )
        subject = provider_subject(name)
        default = cost is None and amount is None and check.default_costs is not None
        if default and mode == ACQUIRE:
            # As in `consume`: the same call in the same windows sends the same step again.
            cached = self._provider_steps.get(name)
            if cached is not None:
                span = cached.span
                if span[1] == ALWAYS or span[0] <= self.clock() + self.offset_us < span[1]:
                    return cached
        if default and check.default_costs is not None:
            step = Step(
                subject, None, name, check, 1, check.default_micros, check.default_costs, mode
            )
        else:
            step = self._priced(subject, None, name, check, cost, amount, mode)
        span = step.span = check.windows(self.clock() + self.offset_us)
        step.windows = span[2]
        step.packed = span[3]
        step.max_repeats = self.max_repeats
        if self.events:
            step.event = usage_template(step, self.policy.version)
        if mode == RESERVE:
            step.hold_ttl_us = self.hold_ttl_us
        elif default and mode == ACQUIRE:
            self._provider_steps[name] = step
        return step

    def peek(self, subject: str) -> Step:
        """A step that reads every counter of the subject's plan without consuming."""
        self.check_subject(subject)
        assigned = self._assigned.get(subject)
        plan = self.plan_of(subject, assigned)
        if plan is None:
            return Step(subject, assigned, plan, None, 0, None, [], PEEK)
        check = self.compiled.usage[plan]
        if self._overrides and subject in self._overrides:
            found = self._checks_of(subject, plan)
            if found is not None:
                check = found[1]
        step = Step(subject, assigned, plan, check, 0, None, [0] * len(check.rules), PEEK)
        span = step.span = check.windows(self.clock() + self.offset_us)
        step.windows = span[2]
        step.packed = span[3]
        return step

    # -- reading replies --------------------------------------------------------------------

    def finish(self, step: Step, reply: Reply) -> Decision | None:
        """The decision for ``reply``, or None when the step was built on stale knowledge (the
        subject's plan changed, or the store's clock is in another window): build it again."""
        code = reply.code
        if code <= DENIED:
            if step.plan is None:
                raise UnknownSubjectError(
                    f"subject {step.subject!r} has no plan: it was never assigned one and the "
                    "policy has no [defaults] plan"
                )
            return Decision(
                code == OK, step, reply.now_us, reply.values, reply.misfits, reply.crossings
            )
        if code == DUPLICATE:
            return DuplicateDecision(True, step, reply.now_us, reply.values, reply.misfits)
        if code in (REPEATS, CONFLICT):
            return RefusedRepeatDecision(step, reply.now_us, reply.values, code == CONFLICT)
        if code == PLAN_MISMATCH:
            self.remember(step.subject, reply.plan)
        elif code == STALE_WINDOW:
            self.offset_us = reply.now_us - self.clock()
        else:  # pragma: no cover - the stores only send the codes above
            raise AssertionError(f"unknown store reply code {code}")
        return None


# Control characters, line and paragraph separators, and lone surrogates: what would break a
# log line or a key. Format characters such as the zero-width joiner of emoji are fine.
_REFUSED = frozenset(("Cc", "Cs", "Zl", "Zp"))


def _printable(text: str) -> bool:
    return text.isprintable() or not any(unicodedata.category(char) in _REFUSED for char in text)


def _check_cost(cost: object) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise InvalidArgumentError(
            f"cost: {cost!r} is a {type(cost).__name__}; expected a whole number of units >= 1"
        )
    if cost < 1 or cost > MAX_COST:
        raise InvalidArgumentError(f"cost: {cost} is out of range; expected 1 to {MAX_COST}")
    return cost


__all__ = ["MAX_SUBJECT", "Engine"]
