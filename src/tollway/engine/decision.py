"""The answer of one step: allowed or not, and where every limit stands.

A `Decision` keeps the store's raw figures and derives the per-limit view only when it is
read, so the common "allowed, move on" path builds one small object and nothing more.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tollway.clock import US
from tollway.engine.rules import CREDITS, GATE, RATE, WINDOW, Rule
from tollway.errors import UnknownLimitError
from tollway.money import micros_to_decimal

if TYPE_CHECKING:
    from tollway.engine.step import Step


@dataclass(frozen=True, slots=True)
class LimitState:
    """Where one limit stands after (or, when denied, before) the step."""

    name: str
    kind: str
    """``rate``, ``quota`` or ``budget``; ``gate`` for a provider's health gate (its
    ``reset_after`` is how long it stays shut)."""
    limit: int | Decimal
    """The burst of a rate, the count of a quota, the amount of a budget."""
    used: int | Decimal
    remaining: int | Decimal
    reset_after: float
    """Seconds until the limit is whole again (a rate refilled, a window ended)."""
    retry_after: float | None
    """Seconds until the step's cost would fit this limit; 0 when it fits now, ``None`` when it
    never can (the cost is larger than the limit itself)."""
    allowed: bool
    """Whether this limit admits the step's cost."""
    shadow: bool = False
    operation: str | None = None
    """Set on a limit counted per operation."""
    currency: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "limit": _jsonable(self.limit),
            "used": _jsonable(self.used),
            "remaining": _jsonable(self.remaining),
            "reset_after": round(self.reset_after, 6),
            "retry_after": None if self.retry_after is None else round(self.retry_after, 6),
            "allowed": self.allowed,
        }
        if self.shadow:
            out["shadow"] = True
        if self.operation is not None:
            out["operation"] = self.operation
        if self.currency is not None:
            out["currency"] = self.currency
        if self.window_start is not None and self.window_end is not None:
            out["window"] = [self.window_start.isoformat(), self.window_end.isoformat()]
        return out


def _jsonable(value: int | Decimal) -> int | str:
    return str(value) if isinstance(value, Decimal) else value


def figures(
    rule: Rule,
    value: int,
    cost: int,
    now_us: int,
    window: tuple[int, int, str] | None,
    admitted: bool,
) -> tuple[int, int, int, int | None]:
    """One rule's standing from its stored value (TAT or count), in whole units (micro-units
    for money) and microseconds: ``(limit, remaining, reset_after, retry_after)``; the retry
    is 0 when admitted and None when the cost can never fit."""
    if rule.kind == RATE:
        tat = max(value, now_us)
        left = max(0, (rule.capacity_us - (tat - now_us)) // rule.emission_us)
        retry: int | None = 0
        if not admitted:
            need = cost * rule.emission_us
            retry = None if need > rule.capacity_us else tat + need - rule.capacity_us - now_us
        return rule.burst, left, tat - now_us, retry
    if rule.kind == CREDITS:
        # The balance after the step (as found when it did not fit): waiting never helps.
        return value, max(0, value), 0, 0 if admitted else None
    if rule.kind == GATE:
        # Open (0 left) until its time; a refused step may pass once that time has come.
        wait = max(0, value - now_us)
        return 0, 0 if wait else 1, wait, 0 if admitted else wait
    assert window is not None
    end = window[1]
    if admitted:
        retry = 0
    else:
        retry = None if cost > rule.hard else end - now_us
    return rule.soft, max(0, rule.soft - value), end - now_us, retry


def limit_state(
    rule: Rule,
    value: int,
    cost: int,
    now_us: int,
    window: tuple[int, int, str] | None,
    admitted: bool,
) -> LimitState:
    """The public view of one rule from its stored value (TAT or count)."""
    limit, left, reset_us, retry_us = figures(rule, value, cost, now_us, window, admitted)
    retry = None if retry_us is None else retry_us / US
    if rule.kind == CREDITS:
        balance = micros_to_decimal(left)
        return LimitState(
            name=rule.name,
            kind=rule.kind_name,
            limit=balance,
            used=micros_to_decimal(0),
            remaining=balance,
            reset_after=0.0,
            retry_after=retry,
            allowed=admitted,
            shadow=rule.shadow,
            operation=rule.operation,
            currency=rule.currency,
        )
    if rule.kind != WINDOW:
        return LimitState(
            name=rule.name,
            kind=rule.kind_name,
            limit=limit,
            used=limit - left,
            remaining=left,
            reset_after=reset_us / US,
            retry_after=retry,
            allowed=admitted,
            shadow=rule.shadow,
            operation=rule.operation,
        )
    assert window is not None
    start, end, _ = window
    used: int | Decimal = value
    remaining: int | Decimal = left
    shown: int | Decimal = limit
    if rule.money:
        used, remaining, shown = (micros_to_decimal(v) for v in (value, left, limit))
    return LimitState(
        name=rule.name,
        kind=rule.kind_name,
        limit=shown,
        used=used,
        remaining=remaining,
        reset_after=reset_us / US,
        retry_after=retry,
        allowed=admitted,
        shadow=rule.shadow,
        operation=rule.operation,
        currency=rule.currency,
        window_start=datetime.fromtimestamp(start // US, tz=timezone.utc),
        window_end=datetime.fromtimestamp(end // US, tz=timezone.utc),
    )


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold of a limit crossed by this step (each crossed once per window)."""

    limit: str
    threshold: Decimal
    used: int | Decimal
    operation: str | None = None


def find_limit(
    limits: Sequence[LimitState],
    name: str,
    operation: str | None,
    subject: str,
    plan: str | None,
) -> LimitState:
    """The state called ``name`` (of ``operation``, if given) among ``limits``."""
    for state in limits:
        if state.name == name and (operation is None or state.operation == operation):
            return state
    known = sorted({state.name for state in limits})
    of = f" of operation {operation!r}" if operation is not None else ""
    raise UnknownLimitError(
        f"limit: {name!r}{of} does not apply to {subject!r} (plan {plan!r}); its limits: "
        f"{', '.join(known) or 'none'}"
    )


class Decision:
    """The answer of `acquire`: allowed or not, which limits said no, and where each stands."""

    __slots__ = (
        "_limits",
        "_misfits",
        "_step",
        "_values",
        "allowed",
        "crossed",
        "now_us",
        "rules",
    )

    degraded: bool = False
    """True when the store could not be asked and the limits' ``on_error`` decided."""
    duplicate: bool = False
    """A repeat of a step allowed earlier under the same request id (``id=``), on the same
    operation at the same cost: quotas and budgets were not counted again; rate limits were
    (a repeat runs the handler again)."""
    refused: str | None = None
    """Why a repeated request id was refused without looking at the limits: ``"repeats"``
    (repeated more often than ``[ledger] max_repeats`` allows) or ``"conflict"`` (taken
    before at another cost or amount); None otherwise."""
    reason: str | None = None
    """Why the decision is degraded, or why a repeated request id was refused."""
    fixed_retry: float | None = None
    # A degraded denial has no limit figures: its wait is the circuit breaker's cooldown.

    def __init__(
        self,
        allowed: bool,
        step: Step,
        now_us: int,
        values: Sequence[int],
        misfits: int,
        crossed: tuple[int, ...] = (),
    ) -> None:
        self.allowed = allowed
        """Whether the step was taken."""
        self._step = step
        self.now_us = now_us
        """The store's clock when it decided (microseconds since the epoch)."""
        self._values = values
        self._misfits = misfits
        self._limits: tuple[LimitState, ...] | None = None
        self.rules = step.rules
        self.crossed = crossed
        """Thresholds first reached by this step, as the store reported them."""

    @property
    def step(self) -> Step:
        """The store request this decision answers (read-only: for tollway's own features,
        such as the HTTP headers and the router, that read its costs and windows)."""
        return self._step

    @property
    def values(self) -> Sequence[int]:
        """Each rule's stored value as the store answered (a TAT or a count; read-only)."""
        return self._values

    @property
    def misfits(self) -> int:
        """Bit i set: rule i's cost did not fit (for a shadow rule: it would have denied)."""
        return self._misfits

    @property
    def subject(self) -> str:
        return self._step.subject

    @property
    def operation(self) -> str:
        return self._step.operation

    @property
    def plan(self) -> str | None:
        return self._step.plan

    @property
    def policy_version(self) -> str:
        """The version (`Policy.version`) of the policy the step was built from; ``""`` for
        a subject without a plan."""
        check = self._step.check
        return check.version if check is not None else ""

    @property
    def cost(self) -> int:
        """Units of cost taken (or asked for, when denied)."""
        return self._step.cost

    @property
    def amount(self) -> int | None:
        """Micro-units of money taken (or asked for), when a budget applied or one was given."""
        return self._step.amount

    @property
    def drawn(self) -> int:
        """Micro-units this step drew from prepaid credits (0: none applied, denied, or
        passed by overage)."""
        check = self._step.check
        if check is None or check.credits < 0 or not self.allowed:
            return 0
        return 0 if (self._misfits >> check.credits) & 1 else self._step.costs[check.credits]

    @property
    def limits(self) -> tuple[LimitState, ...]:
        """Every limit that applied, in policy order (shadow limits included, marked)."""
        if self._limits is None:
            now, misfits, step = self.now_us, self._misfits, self._step
            self._limits = tuple(
                limit_state(rule, value, cost, now, window, not (misfits >> i) & 1)
                for i, (rule, value, cost, window) in enumerate(
                    zip(self.rules, self._values, step.costs, step.windows, strict=True)
                )
            )
        return self._limits

    def standings(
        self,
    ) -> Iterator[tuple[Rule, bool, tuple[int, int, int, int | None], tuple[int, int, str] | None]]:
        """Per rule: (rule, admitted, `figures`, window), without building `LimitState`s."""
        now, misfits, step = self.now_us, self._misfits, self._step
        for i, (rule, value, cost, window) in enumerate(
            zip(self.rules, self._values, step.costs, step.windows, strict=True)
        ):
            admitted = not (misfits >> i) & 1
            yield rule, admitted, figures(rule, value, cost, now, window, admitted), window

    def limit(self, name: str, operation: str | None = None) -> LimitState:
        """The state of the limit called ``name`` (of ``operation``, for a limit counted per
        operation); `UnknownLimitError` (a `KeyError` too) when none applied."""
        return find_limit(self.limits, name, operation, self.subject, self.plan)

    @property
    def violated(self) -> tuple[str, ...]:
        """Names of the enforcing limits that denied the step (empty when allowed)."""
        if self.allowed:
            return ()
        misfits = self._misfits  # from the raw bits: no limit states built
        return tuple(
            rule.name for i, rule in enumerate(self.rules) if (misfits >> i) & 1 and rule.enforcing
        )

    @property
    def shadow_violated(self) -> tuple[str, ...]:
        """Names of shadow limits that would have denied the step."""
        return tuple(s.name for s in self.limits if s.shadow and not s.allowed)

    @property
    def retry_after(self) -> float | None:
        """Seconds after which the same step could pass: 0 when allowed; ``None`` when it never
        can (its cost exceeds a limit outright)."""
        if self.allowed:
            return 0.0
        if self.fixed_retry is not None:
            return self.fixed_retry
        now, misfits, step = self.now_us, self._misfits, self._step
        longest = 0
        for i, rule in enumerate(self.rules):
            if not (misfits >> i) & 1 or not rule.enforcing:
                continue
            wait = figures(rule, self._values[i], step.costs[i], now, step.windows[i], False)[3]
            if wait is None:
                return None  # this cost never fits that limit
            longest = max(longest, wait)
        return longest / US

    @property
    def crossings(self) -> tuple[Crossing, ...]:
        """Thresholds this step was the first to reach in their window: each threshold of each
        window is reported by exactly one step, across every process sharing the store."""
        out = []
        for code in self.crossed:
            rule = self.rules[code // 64]
            value = self._values[code // 64]
            used: int | Decimal = micros_to_decimal(value) if rule.money else value
            assert rule.limit is not None  # only limits have thresholds
            out.append(Crossing(rule.name, rule.limit.thresholds[code % 64], used, rule.operation))
        return tuple(out)

    @property
    def amount_decimal(self) -> Decimal | None:
        return None if self.amount is None else micros_to_decimal(self.amount)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (money as strings, times in seconds)."""
        out: dict[str, Any] = {
            "allowed": self.allowed,
            "subject": self.subject,
            "operation": self.operation,
            "plan": self.plan,
            "policy_version": self.policy_version,
            "cost": self.cost,
            "retry_after": self.retry_after,
            "violated": list(self.violated),
            "limits": [s.to_dict() for s in self.limits],
        }
        if self.amount is not None:
            out["amount"] = str(micros_to_decimal(self.amount))
        if self.degraded:
            out["degraded"] = True
            out["reason"] = self.reason
        if self.shadow_violated:
            out["shadow_violated"] = list(self.shadow_violated)
        crossings = self.crossings
        if crossings:
            out["crossings"] = [
                {"limit": c.limit, "threshold": str(c.threshold), "used": _jsonable(c.used)}
                for c in crossings
            ]
        return out

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        verdict = "allowed" if self.allowed else f"denied by {list(self.violated)}"
        return f"<Decision {self.subject!r} {self.operation!r} cost={self.cost} {verdict}>"


class DuplicateDecision(Decision):
    """The answer to a step whose request id was already taken: allowed, consuming nothing;
    the figures are where the limits stand."""

    __slots__ = ()
    duplicate = True


class RefusedRepeatDecision(Decision):
    """A step refused for its request id alone (nothing consumed; the limits' figures are as
    found, each of them may well admit the cost): the id
    was repeated too often (`refused` is ``"repeats"``), or taken before at another cost or
    amount (``"conflict"``). A client must send a new id; retrying this one cannot pass."""

    __slots__ = ("reason", "refused")

    def __init__(self, step: Step, now_us: int, values: Sequence[int], conflict: bool) -> None:
        super().__init__(False, step, now_us, values, 0)
        ident = step.call_id[:80]
        if conflict:
            self.refused = "conflict"
            self.reason = (
                f"request id {ident!r} was already used for {step.scope!r} at another cost or "
                "amount; expected the same cost and amount as the first request, or a new id"
            )
        else:
            self.refused = "repeats"
            self.reason = (
                f"request id {ident!r} was already repeated {step.max_repeats} times for "
                f"{step.scope!r}, the most allowed; expected a new id"
            )

    @property
    def violated(self) -> tuple[str, ...]:
        """``("repeats",)`` or ``("conflict",)``: what refused the id."""
        assert self.refused is not None
        return (self.refused,)

    @property
    def retry_after(self) -> float | None:
        """None: this id never passes again within the dedupe window."""
        return None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["refused"] = self.refused
        out["reason"] = self.reason
        return out


class DegradedDecision(Decision):
    """A decision taken without the store (it could not be reached): no limit figures; a
    denial names the enforcing limits that fail closed."""

    __slots__ = ("closed", "degraded", "fixed_retry", "reason")

    def __init__(
        self,
        allowed: bool,
        step: Step,
        now_us: int,
        reason: str,
        retry_after: float | None,
        closed: tuple[str, ...] = (),
    ) -> None:
        super().__init__(allowed, step, now_us, (), 0)
        self.rules = ()
        self.degraded = True
        self.reason = reason
        self.fixed_retry = retry_after
        self.closed = closed

    @property
    def limits(self) -> tuple[LimitState, ...]:
        return ()

    @property
    def violated(self) -> tuple[str, ...]:
        """The fail-closed limits that denied the step while the store was away."""
        return () if self.allowed else self.closed
