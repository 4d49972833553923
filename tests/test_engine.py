"""The atomic step through `Tollway` on the memory store: quotas with grace, money budgets,
all-or-nothing, operations, shadow limits, thresholds, plans, usage/reset, threads, memory."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tollway import (
    Crossing,
    InvalidArgumentError,
    Tollway,
    TollwayError,
    UnknownLimitError,
    UnknownPlanError,
)
from tollway.testing import FakeClock

US = 1_000_000


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    return int(moment.timestamp()) * US


def clock_at(us: int) -> FakeClock:
    clock = FakeClock(0)
    clock.advance(us=us)
    return clock


def plan_policy(*limits: dict[str, Any], **operations: dict[str, Any]) -> dict[str, Any]:
    return {
        "defaults": {"plan": "free"},
        "operations": operations or {"call": {"cost": 1}},
        "plans": {"free": {"limits": list(limits)}},
    }


@pytest.fixture
def clock() -> FakeClock:
    return clock_at(utc(2026, 1, 15, 10))  # 10:00 UTC: an hour window starts, 14 h of day left


def used(tw: Tollway, subject: str) -> dict[tuple[str, str | None], int | Decimal]:
    return {(s.name, s.operation): s.used for s in tw.usage(subject).limits}


def test_the_design_policy_file_drives_the_engine(clock: FakeClock) -> None:
    path = Path(__file__).parent / "data" / "policies" / "design.toml"
    tw = Tollway(path, clock=clock)
    decision = tw.acquire("a", "search")
    assert decision.allowed
    assert decision.cost == 5
    assert decision.amount_decimal == Decimal("0.01")
    assert [(s.name, s.used) for s in decision.limits] == [
        ("burst", 5),
        ("hourly", 5),
        ("monthly", 5),
    ]
    tw.assign("a", "pro")
    pro = tw.acquire("a", "search")
    assert pro.limit("spend").used == Decimal("0.01")
    assert pro.limit("daily").window_start == datetime(2026, 1, 15, 5, tzinfo=timezone.utc)


# -- quota and grace -------------------------------------------------------------------------------


def test_quota_with_20_percent_grace_allows_1200(clock: FakeClock) -> None:
    tw = Tollway(plan_policy({"name": "hourly", "quota": "1000/hour", "grace": "20%"}), clock=clock)
    for k in range(1, 1001):
        state = tw.acquire("a", "call").limit("hourly")
        assert state.allowed
        assert (state.used, state.remaining) == (k, 1000 - k)
    for k in range(1001, 1201):
        decision = tw.acquire("a", "call")
        assert decision.allowed, k
        state = decision.limit("hourly")
        assert state.limit == 1000
        assert state.used == k
        assert state.remaining == 0
    denied = tw.acquire("a", "call")
    assert not denied.allowed
    assert denied.violated == ("hourly",)
    assert denied.retry_after == 3600.0
    assert denied.limit("hourly").used == 1200
    assert tw.usage("a").limit("hourly").used == 1200


def test_grace_as_a_number_of_units(clock: FakeClock) -> None:
    tw = Tollway(plan_policy({"name": "hourly", "quota": "10/hour", "grace": 5}), clock=clock)
    assert tw.acquire("a", "call", 15).allowed
    assert not tw.acquire("a", "call").allowed
    assert tw.usage("a").limit("hourly").used == 15


def test_cost_above_quota_plus_grace_is_never_allowed(clock: FakeClock) -> None:
    tw = Tollway(plan_policy({"name": "hourly", "quota": "10/hour", "grace": "20%"}), clock=clock)
    decision = tw.acquire("a", "call", 13)
    assert not decision.allowed
    assert decision.retry_after is None
    assert decision.limit("hourly").retry_after is None
    assert tw.acquire("a", "call", 12).allowed


# -- budgets ---------------------------------------------------------------------------------------


def budget_tollway(clock: FakeClock, budget: str = "0.05 USD/day") -> Tollway:
    policy = {
        "defaults": {"plan": "free"},
        "operations": {
            "geocode": {"cost": 1, "price": "0.005 USD"},
            "llm": {"cost": 1, "price": "explicit"},
        },
        "plans": {"free": {"limits": [{"name": "spend", "budget": budget}]}},
    }
    return Tollway(policy, clock=clock)


def test_budget_of_five_cents_at_half_a_cent_allows_exactly_ten(clock: FakeClock) -> None:
    tw = budget_tollway(clock)
    decisions = [tw.acquire("a", "geocode") for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    first = decisions[0]
    assert first.amount_decimal == Decimal("0.005")
    state = first.limit("spend")
    assert state.kind == "budget"
    assert state.currency == "USD"
    assert state.limit == Decimal("0.05")
    assert state.used == Decimal("0.005")
    assert state.remaining == Decimal("0.045")
    assert isinstance(state.used, Decimal)
    last = decisions[9].limit("spend")
    assert (last.used, last.remaining) == (Decimal("0.05"), Decimal("0"))
    assert decisions[10].violated == ("spend",)
    assert decisions[10].retry_after == 14 * 3600.0


def test_budget_counts_cost_times_price(clock: FakeClock) -> None:
    tw = budget_tollway(clock)
    decision = tw.acquire("a", "geocode", 4)
    assert decision.amount_decimal == Decimal("0.02")
    assert decision.limit("spend").used == Decimal("0.02")
    assert not tw.acquire("a", "geocode", 7).allowed
    assert tw.acquire("a", "geocode", 6).allowed
    assert tw.usage("a").limit("spend").used == Decimal("0.05")


def test_explicit_amount(clock: FakeClock) -> None:
    tw = budget_tollway(clock, "1.00 USD/day")
    decision = tw.acquire("a", "llm", amount=Decimal("0.0123"))
    assert decision.allowed
    assert decision.amount_decimal == Decimal("0.0123")
    assert decision.limit("spend").used == Decimal("0.0123")
    assert decision.limit("spend").remaining == Decimal("0.9877")
    # An explicit amount replaces the operation's price.
    priced = tw.acquire("a", "geocode", amount=Decimal("0.1"))
    assert priced.limit("spend").used == Decimal("0.1123")
    assert not tw.acquire("a", "llm", amount=Decimal("0.887701")).allowed
    assert tw.acquire("a", "llm", amount=Decimal("0.8877")).allowed
    assert tw.usage("a").limit("spend").used == Decimal("1.00")


def test_budget_without_price_needs_an_amount(clock: FakeClock) -> None:
    tw = budget_tollway(clock, "1.00 USD/day")
    with pytest.raises(InvalidArgumentError, match="amount") as caught:
        tw.acquire("a", "llm")
    assert "llm" in str(caught.value)
    assert tw.usage("a").limit("spend").used == Decimal("0")


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        (Decimal("0.0000001"), ["amount", "0.0000001", "6 decimal"]),  # plain notation, not 1E-7
        (Decimal("0.0123456789"), ["amount", "0.0123456789"]),
        (0.01, ["amount", "0.01", "float"]),
        (Decimal("-0.01"), ["amount", "-0.01"]),
        (Decimal("NaN"), ["amount", "NaN"]),
        ("0.01", ["amount", "0.01"]),
    ],
)
def test_bad_amounts_raise_and_consume_nothing(
    clock: FakeClock, amount: Any, words: list[str]
) -> None:
    tw = budget_tollway(clock, "1.00 USD/day")
    tw.acquire("a", "llm", amount=Decimal("0.25"))
    with pytest.raises(InvalidArgumentError) as caught:
        tw.acquire("a", "llm", amount=amount)
    for word in words:
        assert word in str(caught.value)
    assert tw.usage("a").limit("spend").used == Decimal("0.25")


# -- all or nothing --------------------------------------------------------------------------------


def three_limits(clock: FakeClock) -> Tollway:
    policy = plan_policy(
        {"name": "burst", "rate": "1/s", "burst": 10},
        {"name": "hourly", "quota": "100/hour"},
        {"name": "daily", "quota": "12/day"},
    )
    return Tollway(policy, clock=clock)


def test_denied_attempt_consumes_nothing_on_the_other_limits(clock: FakeClock) -> None:
    tw = three_limits(clock)
    assert tw.acquire("a", "call", 9).allowed
    before = tw.usage("a").limits
    denied = tw.acquire("a", "call", 4)
    assert not denied.allowed
    # burst: 9 + 4 > 10; daily: 9 + 4 > 12; hourly: 13 <= 100 fits.
    assert denied.violated == ("burst", "daily")
    assert denied.limit("hourly").allowed
    assert denied.limit("burst").retry_after == 3.0
    assert denied.limit("daily").retry_after == 14 * 3600.0
    assert denied.retry_after == 14 * 3600.0
    assert tw.usage("a").limits == before
    assert used(tw, "a") == {
        ("burst", None): 9,
        ("hourly", None): 9,
        ("daily", None): 9,
    }


def test_violated_names_exactly_the_limits_that_do_not_fit(clock: FakeClock) -> None:
    tw = three_limits(clock)
    tw.acquire("a", "call", 9)
    only_burst = tw.acquire("a", "call", 3)  # daily 12 <= 12 fits, burst 12 > 10 does not
    assert only_burst.violated == ("burst",)
    assert only_burst.retry_after == 2.0
    clock.advance(3)
    assert tw.acquire("a", "call", 3).allowed  # burst 6 + 3, daily 12
    only_daily = tw.acquire("a", "call", 1)
    assert only_daily.violated == ("daily",)
    assert only_daily.limit("burst").allowed
    assert only_daily.retry_after == 14 * 3600.0 - 3
    assert used(tw, "a") == {("burst", None): 9, ("hourly", None): 12, ("daily", None): 12}


def test_retry_after_is_the_longest_wait_of_the_violated_limits() -> None:
    clock = clock_at(utc(2026, 1, 15, 23, 59, 58))
    tw = three_limits(clock)
    tw.acquire("a", "call", 9)
    denied = tw.acquire("a", "call", 4)
    assert denied.violated == ("burst", "daily")
    assert denied.limit("burst").retry_after == 3.0
    assert denied.limit("daily").retry_after == 2.0
    assert denied.retry_after == 3.0
    clock.advance(us=2_999_999)
    assert not tw.acquire("a", "call", 4).allowed
    clock.advance(us=1)
    after = tw.acquire("a", "call", 4)
    assert after.allowed
    assert after.limit("daily").used == 4


# -- operations ------------------------------------------------------------------------------------


OPS = {"geocode": {"cost": 1}, "search": {"cost": 5}, "export": {"cost": 1}}


def test_operations_restrict_a_limit(clock: FakeClock) -> None:
    tw = Tollway(
        plan_policy(
            {"name": "searches", "quota": "10/hour", "operations": ["search"]},
            {"name": "all", "quota": "100/hour"},
            **OPS,
        ),
        clock=clock,
    )
    geocode = tw.acquire("a", "geocode")
    assert [s.name for s in geocode.limits] == ["all"]
    search = tw.acquire("a", "search")
    assert search.cost == 5
    assert [s.name for s in search.limits] == ["searches", "all"]
    assert tw.acquire("a", "search").allowed
    denied = tw.acquire("a", "search")
    assert denied.violated == ("searches",)
    assert used(tw, "a") == {("searches", None): 10, ("all", None): 11}
    assert tw.acquire("a", "geocode").allowed
    assert used(tw, "a") == {("searches", None): 10, ("all", None): 12}


def test_per_operation_counts_each_operation_separately(clock: FakeClock) -> None:
    tw = Tollway(
        plan_policy(
            {
                "name": "per-op",
                "quota": "3/hour",
                "per": "operation",
                "operations": ["geocode", "search"],
            },
            **OPS,
        ),
        clock=clock,
    )
    geocodes = [tw.acquire("a", "geocode") for _ in range(4)]
    assert [d.allowed for d in geocodes] == [True, True, True, False]
    assert geocodes[0].limit("per-op").operation == "geocode"
    assert geocodes[3].violated == ("per-op",)
    searches = [tw.acquire("a", "search", 1) for _ in range(4)]
    assert [d.allowed for d in searches] == [True, True, True, False]
    assert searches[2].limit("per-op").operation == "search"
    assert searches[2].limit("per-op").used == 3
    assert tw.acquire("a", "export").allowed  # not covered by the limit
    usage = tw.usage("a")
    assert [(s.name, s.operation) for s in usage.limits] == [
        ("per-op", "geocode"),
        ("per-op", "search"),
    ]
    assert usage.limit("per-op", "geocode").used == 3
    assert usage.limit("per-op", "search").used == 3


# -- shadow limits ---------------------------------------------------------------------------------


def test_shadow_limit_never_denies_and_reports_what_it_would_have_done(clock: FakeClock) -> None:
    tw = Tollway(
        plan_policy(
            {"name": "real", "quota": "5/hour"},
            {"name": "trial", "quota": "2/hour", "shadow": True},
        ),
        clock=clock,
    )
    decisions = [tw.acquire("a", "call") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    for d in decisions[:2]:
        assert d.shadow_violated == ()
        assert d.limit("trial").shadow is True
        assert d.limit("trial").allowed
    for d in decisions[2:5]:
        assert d.violated == ()
        assert d.shadow_violated == ("trial",)
        assert d.limit("trial").shadow is True
        assert d.limit("trial").allowed is False
        assert d.limit("real").shadow is False
    assert decisions[5].violated == ("real",)
    assert decisions[5].shadow_violated == ("trial",)
    assert [s.name for s in decisions[5].limits] == ["real", "trial"]


def test_shadow_limit_does_not_change_retry_after() -> None:
    clock = clock_at(utc(2026, 1, 15, 10, 59, 30))
    tw = Tollway(
        plan_policy(
            {"name": "real", "quota": "2/hour"},
            {"name": "trial", "rate": "1/min", "shadow": True},
        ),
        clock=clock,
    )
    assert tw.acquire("a", "call").allowed
    second = tw.acquire("a", "call")
    assert second.allowed
    assert second.shadow_violated == ("trial",)
    denied = tw.acquire("a", "call")
    assert denied.violated == ("real",)
    assert denied.limit("trial").retry_after == 60.0
    assert denied.retry_after == 30.0


def test_shadow_only_plan_allows_everything(clock: FakeClock) -> None:
    tw = Tollway(plan_policy({"name": "trial", "quota": "1/hour", "shadow": True}), clock=clock)
    decisions = [tw.acquire("a", "call") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert [d.shadow_violated for d in decisions] == [()] + [("trial",)] * 4
    assert all(d.retry_after == 0.0 for d in decisions)


# -- thresholds ------------------------------------------------------------------------------------


def test_thresholds_are_crossed_once_per_window(clock: FakeClock) -> None:
    tw = Tollway(
        plan_policy({"name": "hourly", "quota": "10/hour", "thresholds": [0.5, 0.8, 1.0]}),
        clock=clock,
    )
    crossed = {k: tw.acquire("a", "call").crossings for k in range(1, 11)}
    assert crossed == {
        1: (),
        2: (),
        3: (),
        4: (),
        5: (Crossing("hourly", Decimal("0.5"), 5),),
        6: (),
        7: (),
        8: (Crossing("hourly", Decimal("0.8"), 8),),
        9: (),
        10: (Crossing("hourly", Decimal("1.0"), 10),),
    }
    denied = tw.acquire("a", "call")
    assert not denied.allowed
    assert denied.crossings == ()
    # The next window crosses them again, once.
    clock.advance(3600)
    again = [tw.acquire("a", "call").crossings for _ in range(5)]
    assert again == [(), (), (), (), (Crossing("hourly", Decimal("0.5"), 5),)]


def test_one_step_can_cross_several_thresholds(clock: FakeClock) -> None:
    tw = Tollway(
        plan_policy(
            {
                "name": "hourly",
                "quota": "10/hour",
                "grace": "50%",
                "thresholds": [0.5, 0.8, 1.0, 1.5],
            }
        ),
        clock=clock,
    )
    assert tw.acquire("a", "call", 6).crossings == (Crossing("hourly", Decimal("0.5"), 6),)
    assert tw.acquire("a", "call", 4).crossings == (
        Crossing("hourly", Decimal("0.8"), 10),
        Crossing("hourly", Decimal("1.0"), 10),
    )
    assert tw.acquire("a", "call", 4).crossings == ()
    assert tw.acquire("a", "call", 1).crossings == (Crossing("hourly", Decimal("1.5"), 15),)


def test_budget_threshold_reports_money(clock: FakeClock) -> None:
    policy = {
        "defaults": {"plan": "free"},
        "operations": {"call": {"cost": 1, "price": "0.10 USD"}},
        "plans": {"free": {"limits": [{"name": "spend", "budget": "1.00 USD/day",
                                       "thresholds": ["80%"]}]}},
    }  # fmt: skip
    tw = Tollway(policy, clock=clock)
    crossings = [tw.acquire("a", "call").crossings for _ in range(10)]
    assert crossings[7] == (Crossing("spend", Decimal("0.8"), Decimal("0.80")),)
    assert sum(len(c) for c in crossings) == 1


def test_per_operation_crossings_name_the_operation(clock: FakeClock) -> None:
    tw = Tollway(
        plan_policy(
            {"name": "per-op", "quota": "2/hour", "per": "operation", "thresholds": [1.0]},
            **OPS,
        ),
        clock=clock,
    )
    tw.acquire("a", "geocode")
    assert tw.acquire("a", "geocode").crossings == (
        Crossing("per-op", Decimal("1.0"), 2, "geocode"),
    )
    assert tw.acquire("a", "export", 2).crossings == (
        Crossing("per-op", Decimal("1.0"), 2, "export"),
    )


# -- plans -----------------------------------------------------------------------------------------


PLANS = {
    "defaults": {"plan": "free"},
    "operations": {"call": {"cost": 1}},
    "plans": {
        "free": {"limits": [{"name": "burst", "rate": "5/s", "burst": 10},
                            {"name": "hourly", "quota": "10/hour"}]},
        "pro": {"limits": [{"name": "burst", "rate": "50/s", "burst": 100},
                           {"name": "hourly", "quota": "100/hour"},
                           {"name": "daily", "quota": "1000/day"}]},
    },
}  # fmt: skip


def test_plan_change_keeps_counts_of_same_named_limits(clock: FakeClock) -> None:
    tw = Tollway(PLANS, clock=clock)
    assert tw.plan_of("s") == "free"
    assert tw.acquire("s", "call", 8).plan == "free"
    clock.advance(10)
    tw.assign("s", "pro")
    assert tw.plan_of("s") == "pro"
    pro = tw.acquire("s", "call")
    assert pro.plan == "pro"
    assert [s.name for s in pro.limits] == ["burst", "hourly", "daily"]
    assert pro.limit("hourly").used == 9
    assert pro.limit("hourly").limit == 100
    assert pro.limit("daily").used == 1
    clock.advance(10)
    tw.assign("s", None)
    assert tw.plan_of("s") == "free"
    back = tw.acquire("s", "call")
    assert back.plan == "free"
    assert back.limit("hourly").used == 10
    clock.advance(10)
    denied = tw.acquire("s", "call")
    assert denied.violated == ("hourly",)


def test_assignment_is_seen_by_every_facade_on_the_store(clock: FakeClock) -> None:
    tw = Tollway(PLANS, clock=clock)
    other = Tollway(PLANS, store=tw.store, clock=clock)
    assert other.acquire("s", "call").plan == "free"  # `other` now believes "free"
    tw.assign("s", "pro")
    assert other.acquire("s", "call").plan == "pro"
    assert other.plan_of("s") == "pro"
    tw.assign("s", None)
    assert other.acquire("s", "call").plan == "free"
    assert tw.usage("s").limit("hourly").used == 3


def test_unknown_plan_is_refused(clock: FakeClock) -> None:
    tw = Tollway(PLANS, clock=clock)
    with pytest.raises(UnknownPlanError) as caught:
        tw.assign("s", "gold")
    assert "gold" in str(caught.value)
    assert "free, pro" in str(caught.value)
    assert tw.plan_of("s") == "free"


def test_plan_of_without_default_plan_is_none(clock: FakeClock) -> None:
    policy = {**PLANS, "defaults": {}}
    tw = Tollway(policy, clock=clock)
    assert tw.plan_of("s") is None
    tw.assign("s", "pro")
    assert tw.plan_of("s") == "pro"
    assert tw.acquire("s", "call").plan == "pro"


# -- usage and reset -------------------------------------------------------------------------------


def usage_tollway(clock: FakeClock) -> Tollway:
    return Tollway(
        plan_policy(
            {"name": "burst", "rate": "5/s", "burst": 10},
            {"name": "hourly", "quota": "1000/hour"},
            {"name": "daily", "quota": "5000/day"},
        ),
        clock=clock,
    )


def test_usage_consumes_nothing(clock: FakeClock) -> None:
    tw = usage_tollway(clock)
    tw.acquire("a", "call", 3)
    first = tw.usage("a")
    for _ in range(20):
        assert tw.usage("a") == first
    assert first.subject == "a"
    assert first.plan == "free"
    assert [(s.name, s.used) for s in first.limits] == [("burst", 3), ("hourly", 3), ("daily", 3)]
    assert tw.acquire("a", "call", 7).allowed  # the whole rest of the burst is still there
    assert first.to_dict()["limits"][1]["used"] == 3


def test_reset_clears_every_counter(clock: FakeClock) -> None:
    tw = usage_tollway(clock)
    tw.acquire("a", "call", 3)
    tw.acquire("b", "call", 2)
    assert tw.reset("a") == 3
    assert used(tw, "a") == {("burst", None): 0, ("hourly", None): 0, ("daily", None): 0}
    assert used(tw, "b") == {("burst", None): 2, ("hourly", None): 2, ("daily", None): 2}
    assert tw.acquire("a", "call", 10).allowed
    assert tw.reset("never-seen") == 0


def test_reset_one_limit_only(clock: FakeClock) -> None:
    tw = usage_tollway(clock)
    tw.acquire("a", "call", 3)
    assert tw.reset("a", limit="hourly") == 1
    assert used(tw, "a") == {("burst", None): 3, ("hourly", None): 0, ("daily", None): 3}
    after = tw.acquire("a", "call")
    assert (after.limit("hourly").used, after.limit("daily").used) == (1, 4)


def test_reset_unknown_limit(clock: FakeClock) -> None:
    tw = usage_tollway(clock)
    tw.acquire("a", "call", 3)
    with pytest.raises(UnknownLimitError) as caught:
        tw.reset("a", limit="monthly")
    message = str(caught.value)
    assert "monthly" in message
    assert "burst, daily, hourly" in message
    assert isinstance(caught.value, TollwayError)
    assert used(tw, "a") == {("burst", None): 3, ("hourly", None): 3, ("daily", None): 3}


# -- threads ---------------------------------------------------------------------------------------


def hammer(tw: Tollway, operation: str, threads: int, attempts: int) -> int:
    allowed = [0] * threads
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        barrier.wait()
        count = 0
        for _ in range(attempts):
            if tw.acquire("shared", operation).allowed:
                count += 1
        allowed[index] = count

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(allowed)


def test_eight_threads_share_a_quota_exactly(clock: FakeClock) -> None:
    tw = Tollway(plan_policy({"name": "hourly", "quota": "1000/hour"}), clock=clock)
    assert hammer(tw, "call", threads=8, attempts=625) == 1000  # 5,000 attempts
    assert tw.usage("shared").limit("hourly").used == 1000


def test_eight_threads_share_a_money_budget_exactly(clock: FakeClock) -> None:
    policy = {
        "defaults": {"plan": "free"},
        "operations": {"call": {"cost": 1, "price": "0.005 USD"}},
        "plans": {"free": {"limits": [{"name": "spend", "budget": "50.00 USD/day"}]}},
    }
    tw = Tollway(policy, clock=clock)
    assert hammer(tw, "call", threads=8, attempts=1500) == 10_000  # 12,000 attempts
    state = tw.usage("shared").limit("spend")
    assert state.used == Decimal("50.00")
    assert state.remaining == Decimal("0")


# -- memory stays bounded --------------------------------------------------------------------------


def memory_tollway(clock: FakeClock, **store: Any) -> Tollway:
    policy = plan_policy(
        {"name": "burst", "rate": "5/s", "burst": 10},
        {"name": "hourly", "quota": "10/hour"},
    )
    policy["plans"]["pro"] = {"limits": [{"name": "hourly", "quota": "100/hour"}]}
    if store:
        policy["store"] = store
    return Tollway(policy, clock=clock)


def test_memory_drops_subjects_whose_windows_ended(clock: FakeClock) -> None:
    tw = memory_tollway(clock)
    size = tw.store.size  # type: ignore[attr-defined]
    for i in range(500):
        assert tw.acquire(f"user-{i}", "call").allowed
    tw.assign("keeper", "pro")
    tw.acquire("keeper", "call")
    assert size() == 501
    # The hour ends at 11:00; counters are kept for a retention margin after that.
    clock.advance(4 * 3600)
    tw.acquire("late", "call")
    assert size() == 2  # the assigned subject and the new one
    assert tw.usage("keeper").limit("hourly").used == 0


def test_memory_drops_expired_holds(clock: FakeClock) -> None:
    tw = memory_tollway(clock, hold_ttl_ms=1000)
    size = tw.store.size  # type: ignore[attr-defined]
    for i in range(100):
        assert tw.reserve(f"user-{i}", "call").allowed
    assert size() == 200  # 100 subjects, 100 holds
    clock.advance(2)
    tw.acquire("late", "call")
    assert size() == 101  # the holds are gone at once, the counters later
    clock.advance(4 * 3600)
    tw.acquire("later", "call")
    assert size() == 1


def test_memory_drops_subjects_that_were_only_read_or_denied(clock: FakeClock) -> None:
    tw = memory_tollway(clock)
    size = tw.store.size  # type: ignore[attr-defined]
    for i in range(100):
        assert tw.usage(f"reader-{i}").limit("hourly").used == 0
        assert not tw.acquire(f"denied-{i}", "call", 11).allowed
    clock.advance(4 * 3600)
    tw.acquire("late", "call")
    assert size() == 1
