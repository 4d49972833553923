"""Property tests: the memory store, standalone Redis and Redis Cluster against `model.py`.

Random policies and random sequences of acquire / reserve / commit / release / assign / usage
(and, in memory, clock advances) are run through tollway and through the reference model,
and every decision is compared: allowed, violated (and shadow-violated) limits, and per limit
its limit, used, remaining and allowed; in memory also retry-after and reset-after.

Redis time cannot be faked (the scripts read Redis ``TIME``), so the Redis runs use only limits
whose outcome does not move during a test: rates of at most one unit per hour, quotas and
budgets per hour or longer, holds that outlive the test. The model is fed the store's own
clock (``decision.now_us``) for every step that reports one. When a calendar boundary (an
hour, a local midnight) falls inside one example, the few operations that report no clock
(usage, release) could be judged in another window than the store's: such an example is
thrown away with ``assume`` rather than failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from model import (
    MDecision,
    MLimit,
    Model,
    OpSpec,
    PolicySpec,
    RateSpec,
    Spec,
    WindowSpec,
    limit_view,
    window,
    window_start_us,
)
from tollway import Tollway
from tollway.errors import ReservationError
from tollway.testing import FakeClock

SUBJECTS = ("alice", "bob", "ü{x}")
TIMEZONES = ("UTC", "America/New_York", "Asia/Kolkata")
# Instants near edges: an ordinary day, New York's spring-forward and fall-back nights, the end
# of a 31-day month, the 29th of February.
STARTS = (
    1_700_000_000,
    1_710_053_940,  # 2024-03-10 06:59:00 UTC
    1_730_611_800,  # 2024-11-03 05:30:00 UTC
    1_706_745_570,  # 2024-01-31 23:59:30 UTC
    1_709_164_800,  # 2024-02-29 00:00:00 UTC
)
ADVANCES = (0, 1, 999_999, 1_000_000, 59_000_000, 3_600_000_000, 86_400_000_000)


# -- strategies -----------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn, *, redis_safe: bool) -> PolicySpec:
    """Two operations and two plans; a limit name means one kind, period and timezone in
    both plans, while the numbers (count, burst, grace, shadow, scope) may differ."""
    ops = (
        OpSpec("geo", draw(st.integers(1, 2)), draw(st.sampled_from((1_000, 5_000)))),
        OpSpec("search", draw(st.integers(1, 4)), draw(st.sampled_from((2_000, 10_000)))),
    )
    op_names = tuple(op.name for op in ops)
    if redis_safe:
        periods = ("hour", "day", "week", "month")
        units = ("h", "d", "2h")  # emission of an hour or more: nothing refills in a test
    else:
        periods = ("minute", "hour", "day", "week", "month")
        units = ("s", "10s", "m", "h", "d")
    catalog: dict[str, dict[str, Any]] = {
        "burst": {"kind": "rate", "unit": draw(st.sampled_from(units))},
        "slow": {"kind": "rate", "unit": draw(st.sampled_from(units))},
        "short": {"kind": "quota", "period": draw(st.sampled_from(periods))},
        "long": {"kind": "quota", "period": draw(st.sampled_from(periods))},
        "spend": {"kind": "budget", "period": draw(st.sampled_from(periods))},
    }
    for entry in catalog.values():
        if entry["kind"] != "rate":
            entry["timezone"] = draw(st.sampled_from(TIMEZONES))
            entry["anchor"] = (
                draw(st.sampled_from((None, 15, 31))) if (entry["period"] == "month") else None
            )

    def limit(name: str) -> Spec:
        entry = catalog[name]
        shadow = draw(st.booleans()) if draw(st.integers(0, 4)) == 0 else False
        operations = draw(st.sampled_from((None, None, ("geo",), ("search",), op_names)))
        per = draw(st.sampled_from(("subject", "subject", "operation")))
        if entry["kind"] == "rate":
            unit = entry["unit"]
            if redis_safe:
                count = 1 if unit != "d" else draw(st.integers(1, 24))
            else:
                count = draw(st.integers(1, 5))
            burst = draw(st.one_of(st.none(), st.integers(1, 8)))
            return RateSpec(name, count, unit, burst, shadow, operations, per)
        grace_percent = grace_abs = None
        choice = draw(st.integers(0, 3))
        if entry["kind"] == "quota":
            amount = draw(st.integers(1, 20))
            if choice == 1:
                grace_percent = draw(st.sampled_from((10, 20, 50)))
            elif choice == 2:
                grace_abs = draw(st.integers(0, 3))
        else:
            amount = draw(st.sampled_from((5_000, 20_000, 50_000, 100_000)))
            if choice == 1:
                grace_percent = draw(st.sampled_from((10, 20, 50)))
            elif choice == 2:
                grace_abs = draw(st.sampled_from((1_000, 10_000)))
        return WindowSpec(
            name,
            entry["kind"],
            amount,
            entry["period"],
            entry["timezone"],
            entry["anchor"],
            grace_percent,
            grace_abs,
            shadow,
            operations,
            per,
        )

    plans = {}
    for plan in ("free", "pro"):
        names = draw(
            st.lists(st.sampled_from(sorted(catalog)), min_size=1, max_size=4, unique=True)
        )
        plans[plan] = tuple(limit(name) for name in names)
    hold_ttl = 3_600_000 if redis_safe else draw(st.sampled_from((1_000, 60_000, 3_600_000)))
    return PolicySpec(ops, plans, "free", hold_ttl)


def commands(*, advances: bool) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    subject = st.sampled_from(SUBJECTS)
    op = st.sampled_from(("geo", "search"))
    cost = st.one_of(st.none(), st.integers(1, 6))
    amount = st.one_of(st.none(), st.none(), st.sampled_from((Decimal("0.01"), Decimal("0.002"))))
    actual = st.one_of(st.none(), st.integers(0, 8))
    acquire = st.tuples(st.just("acquire"), subject, op, cost, amount)
    reserve = st.tuples(st.just("reserve"), subject, op, cost)
    commit = st.tuples(st.just("commit"), st.integers(0, 9), actual)
    release = st.tuples(st.just("release"), st.integers(0, 9))
    kinds = [acquire, acquire, acquire, reserve, reserve, commit, commit, release]
    kinds.append(st.tuples(st.just("assign"), subject, st.sampled_from(("free", "pro", None))))
    kinds.append(st.tuples(st.just("usage"), subject))
    if advances:
        moves = st.one_of(st.sampled_from(ADVANCES), st.integers(0, 7_200_000_000))
        kinds += [st.tuples(st.just("advance"), moves)] * 2
    return st.lists(st.one_of(kinds), min_size=3, max_size=40)


# -- running one example ------------------------------------------------------------------------


def _check_decision(got: Any, want: MDecision, *, timing: bool, where: str) -> None:
    assert got.allowed == want.allowed, where
    assert got.violated == want.violated, where
    assert got.shadow_violated == want.shadow_violated, where
    assert [limit_view(s, timing=timing) for s in got.limits] == [
        limit_view(s, timing=timing) for s in want.limits
    ], where
    assert [window_start_us(s) for s in got.limits] == [s.window_start for s in want.limits], where
    if timing:
        expected = None if want.retry_after is None else round(want.retry_after, 6)
        actual = None if got.retry_after is None else round(got.retry_after, 6)
        assert actual == expected, where


@dataclass
class Run:
    """One tollway instance and the model, driven by the same commands."""

    tw: Tollway
    model: Model
    clock: Callable[[], int]
    """Where the model's clock comes from when the store reports none (usage, release)."""
    fake: FakeClock | None = None
    """Set in memory: the model is then exact in time, and clock advances are allowed."""
    open: list[list[Any]] = field(default_factory=list)
    """[reservation, model hold id (None: denied), settled by a commit or release]"""
    log: list[str] = field(default_factory=list)

    @property
    def timing(self) -> bool:
        return self.fake is not None

    def now_of(self, decision: Any) -> int:
        if self.fake is not None:
            assert decision.now_us == self.fake()
        return int(decision.now_us)

    def step(self, command: tuple[Any, ...]) -> None:
        self.log.append(repr(command))
        where = " -> ".join(self.log)
        kind = command[0]
        if kind == "acquire":
            _, subject, op, cost, amount = command
            got = self.tw.acquire(subject, op, cost, amount=amount)
            want, _ = self.model.acquire(subject, op, cost, amount, self.now_of(got))
            _check_decision(got, want, timing=self.timing, where=where)
            event("acquire denied" if not want.allowed else "acquire allowed")
            if want.shadow_violated:
                event("shadow limit would have denied")
        elif kind == "reserve":
            _, subject, op, cost = command
            reservation = self.tw.reserve(subject, op, cost)
            got = reservation.decision
            want, hold = self.model.acquire(subject, op, cost, None, self.now_of(got), hold=True)
            _check_decision(got, want, timing=self.timing, where=where)
            assert reservation.allowed == want.allowed
            self.open.append([reservation, hold, False])
        elif kind in ("commit", "release"):
            if not self.open:
                return
            entry = self.open[command[1] % len(self.open)]
            reservation, hold, settled = entry
            if hold is None or settled:
                # denied at reserve time, or settled already: there is nothing to settle
                with pytest.raises(ReservationError):
                    if kind == "commit":
                        reservation.commit(command[2])
                    else:
                        reservation.release()
                return
            if kind == "commit":
                done = reservation.commit(command[2])
                now = self.now_of(done)
                live = self.model.commit(hold, command[2], now)
                event("commit" if live else "commit after the hold expired")
                want_values = self.model.committed_values(hold, now)
                for state, (spec, value) in zip(done.limits, want_values, strict=True):
                    if value is None:
                        continue  # the hold's window is over: its count is history
                    expected = Model._state(
                        spec, reservation.decision.operation, value, 0, now, True
                    )
                    assert state.used == expected.used, where
            else:
                reservation.release()
                self.model.release(hold, self.fake() if self.fake else self.clock())
            entry[2] = True
            assert reservation.settled
        elif kind == "assign":
            _, subject, plan = command
            self.tw.assign(subject, plan)
            self.model.assign(subject, plan)
            assert self.tw.plan_of(subject) == (plan or "free")
        elif kind == "usage":
            _, subject = command
            usage = self.tw.usage(subject)
            assert usage.plan == self.model.plan_of(subject)
            now = self.fake() if self.fake else self.clock()
            want = self.model.usage(subject, now)
            assert [limit_view(s, timing=self.timing) for s in usage.limits] == [
                limit_view(s, timing=self.timing) for s in want
            ], where
        elif kind == "advance":
            assert self.fake is not None
            self.fake.advance(us=command[1])
        else:  # pragma: no cover
            raise AssertionError(command)


def _windows(spec: PolicySpec, now: int) -> list[tuple[int, int]]:
    return [
        window(limit.period, limit.timezone, limit.anchor, now)
        for limits in spec.plans.values()
        for limit in limits
        if isinstance(limit, WindowSpec)
    ]


def _local_now() -> int:
    return time.time_ns() // 1000


def run_on_redis(url: str, spec: PolicySpec, script: list[tuple[Any, ...]]) -> None:
    started = _local_now()
    run = Run(Tollway(spec.to_policy(), url), Model(spec), _local_now)
    try:
        for command in script:
            run.step(command)
    except AssertionError:
        # A calendar boundary inside the example makes the clock-less steps ambiguous.
        assume(_windows(spec, started) == _windows(spec, _local_now()))
        raise
    finally:
        run.tw.close()


@pytest.fixture
def private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail-open journal written here goes to a temporary folder, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


# -- the properties ---------------------------------------------------------------------------


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=policies(redis_safe=False),
    script=commands(advances=True),
    start=st.sampled_from(STARTS),
    offset=st.integers(0, 86_400_000_000),
)
def test_memory_store_matches_the_model(
    spec: PolicySpec, script: list[tuple[Any, ...]], start: int, offset: int
) -> None:
    clock = FakeClock(start)
    clock.advance(us=offset)
    run = Run(Tollway(spec.to_policy(), "memory://", clock=clock), Model(spec), clock, clock)
    for command in script:
        run.step(command)


@pytest.mark.redis
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=policies(redis_safe=True), script=commands(advances=False))
@pytest.mark.usefixtures("private_journal")
def test_redis_store_matches_the_model(
    redis_url: str, redis_client: redis.Redis, spec: PolicySpec, script: list[tuple[Any, ...]]
) -> None:
    redis_client.flushall()
    run_on_redis(redis_url, spec, script)


@pytest.mark.cluster
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=policies(redis_safe=True), script=commands(advances=False))
@pytest.mark.usefixtures("private_journal")
def test_redis_cluster_matches_the_model(
    redis_cluster_url: str,
    redis_cluster_client: redis.cluster.RedisCluster,
    spec: PolicySpec,
    script: list[tuple[Any, ...]],
) -> None:
    redis_cluster_client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    run_on_redis(redis_cluster_url, spec, script)


# -- the model itself, on cases worked out by hand ---------------------------------------------


def test_model_gcra_by_hand() -> None:
    spec = PolicySpec(
        (OpSpec("geo", 1, 1_000),), {"free": (RateSpec("burst", 3, "s", burst=2),)}, "free"
    )
    model = Model(spec)
    t = 1_700_000_000 * 1_000_000
    # emission = ceil(1 s / 3) = 333_334 us, capacity = 2 * emission
    first, _ = model.acquire("a", "geo", None, None, t)
    second, _ = model.acquire("a", "geo", None, None, t)
    third, _ = model.acquire("a", "geo", None, None, t)
    assert [first.allowed, second.allowed, third.allowed] == [True, True, False]
    assert third.limits[0].retry_after == pytest.approx(0.333334)
    later, _ = model.acquire("a", "geo", None, None, t + 333_334)
    assert later.allowed


def test_model_all_or_nothing_and_shadow_by_hand() -> None:
    spec = PolicySpec(
        (OpSpec("geo", 1, 5_000),),
        {
            "free": (
                WindowSpec("short", "quota", 3, "hour"),
                WindowSpec("spend", "budget", 10_000, "day"),
                WindowSpec("long", "quota", 1, "day", shadow=True),
            )
        },
        "free",
    )
    model = Model(spec)
    t = 1_700_000_000 * 1_000_000
    results = [model.acquire("a", "geo", None, None, t)[0] for _ in range(3)]
    assert [d.allowed for d in results] == [True, True, False]
    assert results[1].shadow_violated == ("long",)
    assert results[2].violated == ("spend",)
    short: MLimit = model.usage("a", t)[0]
    assert short.used == 2  # the denied third call took nothing from the quota
