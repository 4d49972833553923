"""A small reference model of tollway's decisions, written to be obviously correct, not fast.

It knows nothing of tollway's internals: it is built from plain specs (the same ones the
property tests turn into a policy document) and keeps its own counters:

- rate (GCRA, integer microseconds): emission = ceil(period / count), capacity = burst *
  emission; a rate keeps a theoretical arrival time (TAT); a cost fits when
  ``max(tat, now) + cost * emission - now <= capacity``;
- quota / budget: a count per calendar window (in the limit's timezone); a cost fits when
  ``count + cost <= limit + grace``; a budget counts micro-units of money (units * price, or
  the explicit amount);
- all or nothing: when any enforcing limit does not fit, nothing is consumed; a shadow limit
  never denies (and counts only what fits it);
- counters carry the limit's identity (kind, name, operation when counted per operation) and
  the window, not the limit's numbers, so a plan change keeps same-named counters;
- reserve = acquire + a hold that expires ``hold_ttl`` after it was taken (and is then given
  back); commit(actual) adjusts every counter by actual - held while the hold lives, and takes
  the whole actual cost once it has expired; release gives the hold back (nothing once expired).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

US = 1_000_000
MICROS = 1_000_000  # micro-units of money per unit of currency


# -- specs (what the tests generate; each one turns into a policy entry) ----------------------


@dataclass(frozen=True)
class RateSpec:
    name: str
    count: int
    unit: str  # "s", "m", "h", "d" or e.g. "10s"
    burst: int | None = None
    shadow: bool = False
    operations: tuple[str, ...] | None = None
    per: str = "subject"

    kind = "rate"

    @property
    def period_us(self) -> int:
        digits = "".join(c for c in self.unit if c.isdigit())
        letter = self.unit[len(digits) :]
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[letter]
        return (int(digits) if digits else 1) * seconds * US

    @property
    def emission_us(self) -> int:
        return -(-self.period_us // self.count)

    @property
    def burst_units(self) -> int:
        return self.burst if self.burst is not None else self.count

    @property
    def capacity_us(self) -> int:
        return self.burst_units * self.emission_us

    def to_policy(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "rate": f"{self.count}/{self.unit}"}
        if self.burst is not None:
            out["burst"] = self.burst
        return _common(self, out)


@dataclass(frozen=True)
class WindowSpec:
    name: str
    kind: str  # "quota" or "budget"
    amount: int  # units for a quota, micro-units of money for a budget
    period: str  # minute, hour, day, week, month
    timezone: str = "UTC"
    anchor: int | None = None
    grace_percent: int | None = None
    grace_abs: int | None = None  # units (quota) or micro-units (budget)
    shadow: bool = False
    operations: tuple[str, ...] | None = None
    per: str = "subject"

    @property
    def hard(self) -> int:
        extra = 0
        if self.grace_percent is not None:
            extra = self.amount * self.grace_percent // 100
        elif self.grace_abs is not None:
            extra = self.grace_abs
        return self.amount + extra

    def to_policy(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.kind == "quota":
            out["quota"] = f"{self.amount}/{self.period}"
        else:
            out["budget"] = f"{money_text(self.amount)} USD/{self.period}"
        if self.timezone != "UTC":
            out["timezone"] = self.timezone
        if self.anchor is not None:
            out["anchor"] = self.anchor
        if self.grace_percent is not None:
            out["grace"] = f"{self.grace_percent}%"
        elif self.grace_abs is not None:
            out["grace"] = (
                self.grace_abs if self.kind == "quota" else f"{money_text(self.grace_abs)} USD"
            )
        return _common(self, out)


Spec = RateSpec | WindowSpec


def _common(spec: Spec, out: dict[str, Any]) -> dict[str, Any]:
    if spec.shadow:
        out["shadow"] = True
    if spec.operations is not None:
        out["operations"] = list(spec.operations)
    if spec.per != "subject":
        out["per"] = spec.per
    return out


def money_text(micros: int) -> str:
    return str(Decimal(micros) / MICROS)


@dataclass(frozen=True)
class OpSpec:
    name: str
    cost: int
    price_micros: int


@dataclass(frozen=True)
class PolicySpec:
    operations: tuple[OpSpec, ...]
    plans: dict[str, tuple[Spec, ...]]
    default_plan: str
    hold_ttl_ms: int = 60_000

    def to_policy(self, **store: Any) -> dict[str, Any]:
        return {
            "store": {"hold_ttl_ms": self.hold_ttl_ms, **store},
            "defaults": {"plan": self.default_plan},
            "operations": {
                op.name: {"cost": op.cost, "price": f"{money_text(op.price_micros)} USD"}
                for op in self.operations
            },
            "plans": {
                name: {"limits": [spec.to_policy() for spec in limits]}
                for name, limits in self.plans.items()
            },
        }


# -- calendar windows -------------------------------------------------------------------------


def _midnight(day: date, tz: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()) * US


def _month_start(year: int, month: int, anchor: int) -> date:
    if month == 12:
        last = 31
    else:
        last = (date(year, month + 1, 1) - timedelta(days=1)).day
    return date(year, month, min(anchor, last))


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def window(period: str, tz_name: str, anchor: int | None, now_us: int) -> tuple[int, int]:
    """[start, end) in microseconds of the calendar window holding ``now_us``."""
    tz = ZoneInfo(tz_name)
    local = datetime.fromtimestamp(now_us // US, tz=timezone.utc).astimezone(tz)
    if period == "minute":
        # the window began when the local clock last showed hh:mm:00
        start = now_us - local.second * US - now_us % US
        return start, start + 60 * US
    if period == "hour":
        start = now_us - (local.minute * 60 + local.second) * US - now_us % US
        return start, start + 3600 * US
    today = local.date()
    if period == "day":
        first, after = today, today + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    else:
        day = anchor or 1
        this = _month_start(today.year, today.month, day)
        if today >= this:
            first, after = this, _month_start(*_next_month(today.year, today.month), day)
        else:
            first, after = _month_start(*_previous_month(today.year, today.month), day), this
    return _midnight(first, tz), _midnight(after, tz)


# -- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLimit:
    """The model's view of one limit, with the fields of `tollway`'s LimitState."""

    name: str
    kind: str
    operation: str | None
    limit: int | Decimal
    used: int | Decimal
    remaining: int | Decimal
    allowed: bool
    shadow: bool
    retry_after: float | None
    reset_after: float
    window_start: int | None = None  # us


@dataclass(frozen=True)
class MDecision:
    allowed: bool
    violated: tuple[str, ...]
    shadow_violated: tuple[str, ...]
    limits: tuple[MLimit, ...]
    retry_after: float | None


@dataclass
class Hold:
    subject: str
    operation: str
    expires_us: int
    # per rule: (spec, counter key, held amount in the rule's unit, shadow misfit)
    entries: list[tuple[Spec, tuple[Any, ...], int, bool]]
    settled: bool = False


def _key(spec: Spec, operation: str, now_us: int) -> tuple[Any, ...]:
    """A counter's identity: kind letter, name, operation (per-operation limits), window."""
    op = operation if spec.per == "operation" else None
    if isinstance(spec, RateSpec):
        return ("r", spec.name, op)
    letter = "q" if spec.kind == "quota" else "b"
    start, _ = window(spec.period, spec.timezone, spec.anchor, now_us)
    return (letter, spec.name, op, start)


@dataclass
class Model:
    policy: PolicySpec
    plans: dict[str, str] = field(default_factory=dict)  # subject -> assigned plan
    tats: dict[tuple[str, tuple[Any, ...]], int] = field(default_factory=dict)
    counts: dict[tuple[str, tuple[Any, ...]], int] = field(default_factory=dict)
    holds: dict[int, Hold] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]

    # -- helpers

    def plan_of(self, subject: str) -> str:
        return self.plans.get(subject, self.policy.default_plan)

    def op(self, name: str) -> OpSpec:
        return next(op for op in self.policy.operations if op.name == name)

    def rules(self, subject: str, operation: str) -> list[Spec]:
        return [
            spec
            for spec in self.policy.plans[self.plan_of(subject)]
            if spec.operations is None or operation in spec.operations
        ]

    def _value(self, subject: str, key: tuple[Any, ...]) -> int:
        store = self.tats if key[0] == "r" else self.counts
        return store.get((subject, key), 0)

    def _charge(self, subject: str, key: tuple[Any, ...], delta: int, now: int) -> None:
        """Add ``delta`` (may be negative) to a counter, as settling and hold expiry do."""
        if delta == 0:
            return
        if key[0] == "r":
            tat = self.tats.get((subject, key), 0)
            if delta > 0:
                self.tats[(subject, key)] = max(tat, now) + delta
            elif tat > now:  # a refund to a bucket that is already full is nothing
                self.tats[(subject, key)] = tat + delta
        else:
            count = self.counts.get((subject, key), 0)
            self.counts[(subject, key)] = max(0, count + delta)

    def expire(self, now: int) -> None:
        """Give back every unsettled hold whose time is up."""
        for hold in self.holds.values():
            if not hold.settled and hold.expires_us <= now:
                hold.settled = True
                for _, key, held, _ in hold.entries:
                    self._charge(hold.subject, key, -held, now)

    @staticmethod
    def _state(
        spec: Spec, operation: str | None, value: int, cost: int, now: int, fits: bool
    ) -> MLimit:
        op = operation if spec.per == "operation" else None
        if isinstance(spec, RateSpec):
            tat = max(value, now)
            remaining = max(0, (spec.capacity_us - (tat - now)) // spec.emission_us)
            retry: float | None = 0.0
            if not fits:
                need = cost * spec.emission_us
                retry = (
                    None if need > spec.capacity_us else (tat + need - spec.capacity_us - now) / US
                )
            return MLimit(
                spec.name,
                "rate",
                op,
                spec.burst_units,
                spec.burst_units - remaining,
                remaining,
                fits,
                spec.shadow,
                retry,
                (tat - now) / US,
            )
        start, end = window(spec.period, spec.timezone, spec.anchor, now)
        retry = 0.0 if fits else (None if cost > spec.hard else (end - now) / US)
        limit: int | Decimal = spec.amount
        used: int | Decimal = value
        remaining_w: int | Decimal = max(0, spec.amount - value)
        if spec.kind == "budget":
            limit, used, remaining_w = (Decimal(v) / MICROS for v in (limit, used, remaining_w))
        return MLimit(
            spec.name,
            spec.kind,
            op,
            limit,
            used,
            remaining_w,
            fits,
            spec.shadow,
            retry,
            (end - now) / US,
            start,
        )

    # -- operations

    def acquire(
        self,
        subject: str,
        operation: str,
        cost: int | None,
        amount: Decimal | None,
        now: int,
        *,
        hold: bool = False,
    ) -> tuple[MDecision, int | None]:
        self.expire(now)
        op = self.op(operation)
        units = op.cost if cost is None else cost
        micros = units * op.price_micros if amount is None else int(amount * MICROS)
        rows = []
        for spec in self.rules(subject, operation):
            key = _key(spec, operation, now)
            value = self._value(subject, key)
            if isinstance(spec, RateSpec):
                c = units
                fits = max(value, now) + c * spec.emission_us - now <= spec.capacity_us
            else:
                c = units if spec.kind == "quota" else micros
                fits = value + c <= spec.hard
            rows.append((spec, key, value, c, fits))
        allowed = all(fits or spec.shadow for spec, _, _, _, fits in rows)
        states = []
        entries = []
        for spec, key, value, c, fits in rows:
            shown = value
            if allowed and fits:
                if isinstance(spec, RateSpec):
                    shown = max(value, now) + c * spec.emission_us
                    self.tats[(subject, key)] = shown
                    entries.append((spec, key, c * spec.emission_us, False))
                else:
                    shown = value + c
                    self.counts[(subject, key)] = shown
                    entries.append((spec, key, c, False))
            else:
                entries.append((spec, key, 0, True))
            states.append(self._state(spec, operation, shown, c, now, fits))
        hold_id = None
        if hold and allowed:
            hold_id = next(self._ids)
            self.holds[hold_id] = Hold(
                subject, operation, now + self.policy.hold_ttl_ms * 1000, entries
            )
        return _decision(allowed, states), hold_id

    def commit(self, hold_id: int, actual: int | None, now: int) -> bool:
        """Settle at ``actual`` units (None: the estimate); True when the hold was still live."""
        self.expire(now)
        hold = self.holds[hold_id]
        op = self.op(hold.operation)
        live = not hold.settled
        hold.settled = True
        for spec, key, held, misfit in hold.entries:
            units = actual if actual is not None else None
            if units is None:
                new = held  # the estimate, as it was held
            elif misfit:
                new = 0
            elif isinstance(spec, RateSpec):
                new = units * spec.emission_us
            elif spec.kind == "quota":
                new = units
            else:
                new = units * op.price_micros
            self._charge(hold.subject, key, new - held if live else new, now)
        return live

    def release(self, hold_id: int, now: int) -> bool:
        self.expire(now)
        hold = self.holds[hold_id]
        live = not hold.settled
        hold.settled = True
        if live:
            for _, key, held, _ in hold.entries:
                self._charge(hold.subject, key, -held, now)
        return live

    def usage(self, subject: str, now: int) -> tuple[MLimit, ...]:
        self.expire(now)
        states = []
        for spec in self.policy.plans[self.plan_of(subject)]:
            if spec.per == "operation":
                ops = [
                    o.name
                    for o in self.policy.operations
                    if spec.operations is None or o.name in spec.operations
                ]
            else:
                ops = [self.policy.operations[0].name]
            for op in ops:
                key = _key(spec, op, now)
                value = self._value(subject, key)
                if isinstance(spec, RateSpec):
                    fits = max(value, now) - now <= spec.capacity_us
                else:
                    fits = value <= spec.hard
                states.append(self._state(spec, op, value, 0, now, fits))
        return tuple(states)

    def assign(self, subject: str, plan: str | None) -> None:
        if plan is None:
            self.plans.pop(subject, None)
        else:
            self.plans[subject] = plan

    def committed_values(self, hold_id: int, now: int) -> list[tuple[Spec, int | None]]:
        """Per rule of a settled hold: the counter's value now (None: its window is over)."""
        hold = self.holds[hold_id]
        out: list[tuple[Spec, int | None]] = []
        for spec, key, _, _ in hold.entries:
            if key[0] != "r" and _key(spec, hold.operation, now) != key:
                out.append((spec, None))
            else:
                out.append((spec, self._value(hold.subject, key)))
        return out


def _decision(allowed: bool, states: list[MLimit]) -> MDecision:
    violated = () if allowed else tuple(s.name for s in states if not s.allowed and not s.shadow)
    shadow_violated = tuple(s.name for s in states if s.shadow and not s.allowed)
    retry: float | None = 0.0
    if not allowed:
        waits = [s.retry_after for s in states if not s.allowed and not s.shadow]
        retry = None if any(w is None for w in waits) else max(w for w in waits if w is not None)
    return MDecision(allowed, violated, shadow_violated, tuple(states), retry)


# -- comparing with tollway -------------------------------------------------------------------


def limit_view(state: Any, *, timing: bool) -> dict[str, Any]:
    """The fields of a tollway LimitState (or an MLimit) that the model predicts."""
    out = {
        "name": state.name,
        "kind": state.kind,
        "operation": state.operation,
        "limit": state.limit,
        "used": state.used,
        "remaining": state.remaining,
        "allowed": state.allowed,
        "shadow": state.shadow,
    }
    if timing:
        out["retry_after"] = None if state.retry_after is None else round(state.retry_after, 6)
        out["reset_after"] = round(state.reset_after, 6)
    return out


def window_start_us(state: Any) -> int | None:
    """The window start of a tollway LimitState, in microseconds (None for a rate)."""
    start = getattr(state, "window_start", None)
    if start is None or isinstance(start, int):
        return start
    return int(start.timestamp()) * US


# -- helpers for tests on a real clock ----------------------------------------------------------

# Fixed-offset zones whose hours start at :00, :15 and :30 past the UTC hour.
_HOUR_ZONES = ("UTC", "Asia/Kathmandu", "Asia/Kolkata")


def hour_safe_timezone(now_us: int | None = None) -> str:
    """A timezone whose current hour window ends as far from ``now`` as can be (at least
    7.5 minutes either side), so a test of a few seconds on Redis time stays in one window."""
    import time

    now = time.time_ns() // 1000 if now_us is None else now_us

    def margin(tz: str) -> int:
        start, end = window("hour", tz, None, now)
        return min(now - start, end - now)

    return max(_HOUR_ZONES, key=margin)


def day_safe_timezone(now_us: int | None = None) -> str:
    """A fixed-offset timezone where it is about noon now: its day (and its week and month)
    is hours away from ending or starting."""
    import time

    now = time.time_ns() // 1000 if now_us is None else now_us
    hour = datetime.fromtimestamp(now // US, tz=timezone.utc).hour
    offset = 12 - hour  # local = UTC + offset; Etc/GMT-N means UTC+N
    if offset > 12:
        offset -= 24
    if offset < -12:
        offset += 24
    if offset == 0:
        return "Etc/GMT"
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
