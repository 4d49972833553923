"""The demo: one simulated day of API traffic through the engine, in a few milliseconds.

`simulate` drives a `Tollway` on the memory store with a `FakeClock` (it never sleeps) through
a scripted day: a few subjects on the free and pro plans of `DEMO_POLICY` (the text of
``src/tollway/demo/tollway.toml``, package data, which ``examples/tollway.toml`` links to).
The script is deterministic for a seed and shows, in one day:

- bursts hitting the GCRA ``burst`` limit;
- a free subject exhausting its ``hourly`` quota, 20% grace included, then its ``daily`` one;
- a pro subject whose ``enrich`` calls run its ``spend`` budget out;
- a subject moved from free to pro at noon, keeping the counts of same-named limits;
- reservations (``enrich``) committed below their estimate, the difference given back.

`tollway demo` renders the `DemoResult` (`tollway.demo.inbound_report`); tests read it directly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from importlib import resources

from tollway.client import Tollway
from tollway.clock import US
from tollway.demo.inbound_script import Call, script, subject_names
from tollway.engine.decision import Decision, LimitState
from tollway.errors import ConfigurationError
from tollway.policy import loads
from tollway.policy.model import Policy
from tollway.reservation import Reservation
from tollway.testing import FakeClock
from tollway.usage import Usage

POLICY_FILE = "tollway.toml"
"""The demo's policy, package data of `tollway.demo`; ``examples/tollway.toml`` is a symlink to
it, so the example a user reads is the very file the demo runs."""


def _policy_text() -> str:
    return resources.files("tollway.demo").joinpath(POLICY_FILE).read_text(encoding="utf-8")


DEMO_POLICY = _policy_text()
"""The demo's policy: the text of ``examples/tollway.toml`` (read from the package data)."""

DAY = datetime(2024, 6, 4, tzinfo=timezone.utc)
"""The simulated day (a Tuesday), midnight to midnight UTC."""
HOUR = 3600 * US
DAY_US = 24 * HOUR
NEEDED_PLANS = ("free", "pro")
NEEDED_OPERATIONS = ("geocode", "search", "enrich")


@dataclass(frozen=True, slots=True)
class Moment:
    """Something worth telling, when it first happened."""

    at: int
    subject: str
    text: str


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A plan change, with the counts of same-named window limits before and after it."""

    at: int
    subject: str
    old: str
    new: str
    carried: dict[str, tuple[int | Decimal, int | Decimal]]
    """Per limit name present in both plans: (used before, used after)."""


@dataclass(slots=True)
class SubjectStats:
    name: str
    role: str
    plans: list[str] = field(default_factory=list)
    """Every plan the subject was on during the day, in order."""
    attempts: int = 0
    allowed: int = 0
    denied: int = 0
    denied_by: Counter[str] = field(default_factory=Counter)
    """Denied attempts per violated limit (an attempt can violate several)."""
    units: list[int] = field(default_factory=lambda: [0] * 24)
    """Units allowed in each hour (acquires and reservations, at their requested cost)."""
    plan_by_hour: list[str] = field(default_factory=lambda: [""] * 24)
    """The plan in force at the end of each hour."""
    reservations: int = 0
    """Reservations committed."""
    estimated: int = 0
    committed: int = 0
    end: Usage | None = None
    """Where every limit of the subject's plan stands at 23:59:59."""


@dataclass(slots=True)
class HourStats:
    attempts: int = 0
    allowed: int = 0
    denied: int = 0


@dataclass(slots=True)
class DemoResult:
    seed: int
    policy: Policy
    subjects: list[SubjectStats]
    hours: list[HourStats]
    moments: list[Moment]
    upgrades: list[Upgrade]
    start: datetime = DAY

    @property
    def total_attempts(self) -> int:
        return sum(hour.attempts for hour in self.hours)


def demo_policy() -> Policy:
    return loads(DEMO_POLICY, source="examples/tollway.toml (built in)")


def check_policy(policy: Policy) -> None:
    """Refuse a policy the demo's script cannot run on, saying what is missing."""
    missing = [f"plan {name!r}" for name in NEEDED_PLANS if name not in policy.plans]
    missing += [
        f"operation {name!r}" for name in NEEDED_OPERATIONS if name not in policy.operations
    ]
    if missing:
        where = policy.source or "the policy"
        raise ConfigurationError(
            f"{where}: the demo needs plans free and pro and operations geocode, search and "
            f"enrich; missing: {', '.join(missing)}"
        )


# -- the run -----------------------------------------------------------------------------------


class _Day:
    """Runs the script through a `Tollway` and keeps the score."""

    def __init__(self, policy: Policy, seed: int, subjects: list[tuple[str, str]]) -> None:
        self.clock = FakeClock(DAY)
        self.start_us = self.clock()
        self.now = 0
        self.tw = Tollway(policy, store="memory://", clock=self.clock)
        self.stats = {name: SubjectStats(name, role) for name, role in subjects}
        self.result = DemoResult(
            seed, policy, list(self.stats.values()), [HourStats() for _ in range(24)], [], []
        )
        self.held: dict[int, Reservation] = {}
        self.seen: set[tuple[str, str]] = set()

    def at(self, when: int) -> None:
        self.clock.advance(us=when - self.now)
        self.now = when

    def tell(self, subject: str, text: str, key: str | None = None) -> None:
        """Record a moment; with ``key``, only the first one of its kind per subject."""
        if key is not None:
            if (subject, key) in self.seen:
                return
            self.seen.add((subject, key))
        self.result.moments.append(Moment(self.now, subject, text))

    def run(self, calls: list[Call]) -> DemoResult:
        for name, stats in self.stats.items():
            plan = "pro" if stats.role == "spender" else "free"
            self.tw.assign(name, plan)
            stats.plans.append(plan)
        for call in calls:
            self.at(call.at)
            if call.action == "assign":
                self.assign(call)
            elif call.action == "commit":
                self.commit(call)
            elif call.action == "reserve":
                reservation = self.tw.reserve(call.subject, call.operation)
                if reservation.allowed:
                    self.held[call.ref] = reservation
                self.count(call.subject, reservation.decision)
            else:
                self.count(call.subject, self.tw.acquire(call.subject, call.operation))
            stats = self.stats[call.subject]
            stats.plan_by_hour[call.at // HOUR] = stats.plans[-1]
        self.at(DAY_US - US)
        for stats in self.result.subjects:
            stats.end = self.tw.usage(stats.name)
            previous = stats.plans[0]
            for hour in range(24):  # an hour without a call keeps the plan of the hour before
                previous = stats.plan_by_hour[hour] = stats.plan_by_hour[hour] or previous
        self.tw.close()
        return self.result

    def count(self, subject: str, decision: Decision) -> None:
        stats = self.stats[subject]
        hour = self.result.hours[self.now // HOUR]
        stats.attempts += 1
        hour.attempts += 1
        if decision.allowed:
            stats.allowed += 1
            hour.allowed += 1
            stats.units[self.now // HOUR] += decision.cost
            for crossing in decision.crossings:
                state = decision.limit(crossing.limit, crossing.operation)
                percent = _percent(crossing.threshold)
                # Once per limit and threshold: a reservation committed below its estimate
                # gives units back, and the next step may cross the same threshold again.
                self.tell(
                    subject,
                    f"{crossing.limit} crossed {percent}: {_of(crossing.used, state)} used",
                    key=f"crossed:{crossing.limit}:{percent}",
                )
            return
        stats.denied += 1
        hour.denied += 1
        for name in decision.violated:
            stats.denied_by[name] += 1
            state = decision.limit(name)
            self.tell(
                subject,
                f"first denied by {name} ({decision.operation}): {_why(state, decision)}",
                key=f"denied:{name}",
            )

    def commit(self, call: Call) -> None:
        reservation = self.held.pop(call.ref, None)
        if reservation is None:  # the reservation was denied: nothing to settle
            return
        stats = self.stats[call.subject]
        estimate = reservation.estimate
        actual = min(call.units, estimate)
        reservation.commit(actual)
        stats.reservations += 1
        stats.estimated += estimate
        stats.committed += actual
        if actual < estimate:
            price = self.result.policy.operations[call.operation].price
            held = paid = ""
            if price is not None:
                held = f" ({price.amount * estimate} {price.currency})"
                paid = f" ({price.amount * actual} {price.currency})"
            self.tell(
                call.subject,
                f"{call.operation} reserved for {estimate} units{held}, "
                f"committed {actual}{paid}; the rest given back",
                key="commit",
            )

    def assign(self, call: Call) -> None:
        subject, new = call.subject, call.plan
        stats = self.stats[subject]
        before = self.tw.usage(subject)
        self.tw.assign(subject, new)
        after = self.tw.usage(subject)
        old = stats.plans[-1]
        stats.plans.append(new)
        carried: dict[str, tuple[int | Decimal, int | Decimal]] = {}
        kept = []
        for state in before.limits:
            if state.kind == "rate":  # a rate's state is a time, not a count
                continue
            now = next((s for s in after.limits if s.name == state.name), None)
            if now is None:  # not a limit of the new plan
                continue
            carried[state.name] = (state.used, now.used)
            kept.append(f"{state.name} {_of(state.used, state)} -> {_of(now.used, now)}")
        self.result.upgrades.append(Upgrade(self.now, subject, old, new, carried))
        self.tell(
            subject,
            f"moved from {old} to {new}; counts kept: " + ("; ".join(kept) or "none"),
        )


def _percent(fraction: Decimal) -> str:
    return f"{(fraction * 100).normalize():f}%"


def _of(used: int | Decimal, state: LimitState) -> str:
    """``used of limit``, with the currency of a budget."""
    text = f"{used} of {state.limit}"
    return f"{text} {state.currency}" if state.currency else text


def _why(state: LimitState, decision: Decision) -> str:
    if state.kind == "rate":
        return f"{state.used} of a burst of {state.limit} used"
    text = f"{_of(state.used, state)} used"
    if state.used > state.limit:
        text += " (grace included)"
    if state.kind == "budget" and decision.amount_decimal is not None:
        text += f", the call needs {decision.amount_decimal}"
    return text


def simulate(seed: int = 1, subjects: int = 4, policy: Policy | None = None) -> DemoResult:
    """Run the scripted day; ``policy`` defaults to `DEMO_POLICY`."""
    policy = demo_policy() if policy is None else policy
    check_policy(policy)
    names = subject_names(subjects)
    return _Day(policy, seed, names).run(script(seed, names))


__all__ = [
    "DEMO_POLICY",
    "POLICY_FILE",
    "DemoResult",
    "SubjectStats",
    "demo_policy",
    "simulate",
]
