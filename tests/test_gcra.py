"""GCRA rate limits through `Tollway.acquire` on the memory store, with exact numbers.

``"5/s"`` with ``burst = 10``: the emission interval is 200,000 µs and the capacity (the
tolerance) is 10 intervals, 2,000,000 µs. Time only moves when the FakeClock is told to.
"""

from __future__ import annotations

from typing import Any

import pytest

from tollway import Decision, Tollway
from tollway.policy import load
from tollway.testing import FakeClock

US = 1_000_000
START = 1_767_225_600  # 2026-01-01T00:00:00Z, a whole second


def rate_policy(rate: str, burst: int | None = None) -> dict[str, Any]:
    limit: dict[str, Any] = {"name": "burst", "rate": rate}
    if burst is not None:
        limit["burst"] = burst
    return {
        "defaults": {"plan": "free"},
        "operations": {"call": {"cost": 1}},
        "plans": {"free": {"limits": [limit]}},
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def tw(clock: FakeClock) -> Tollway:
    return Tollway(rate_policy("5/s", burst=10), clock=clock)


def take(tw: Tollway, n: int, subject: str = "alice", cost: int | None = None) -> list[Decision]:
    return [tw.acquire(subject, "call", cost) for _ in range(n)]


def seconds(us: int) -> float:
    """What the engine reports for ``us`` microseconds (integer division, exactly rounded)."""
    return us / US


# -- burst -----------------------------------------------------------------------------------------


def test_exactly_burst_pass_at_once_with_remaining_and_reset_after_each_step(
    tw: Tollway,
) -> None:
    for k in range(1, 11):
        decision = tw.acquire("alice", "call")
        assert decision.allowed, k
        state = decision.limit("burst")
        assert state.kind == "rate"
        assert state.limit == 10
        assert state.used == k
        assert state.remaining == 10 - k
        assert state.reset_after == seconds(k * 200_000)
        assert state.retry_after == 0.0
        assert decision.retry_after == 0.0
        assert decision.violated == ()


def test_eleventh_is_denied_with_retry_after_one_emission_interval(tw: Tollway) -> None:
    take(tw, 10)
    denied = tw.acquire("alice", "call")
    assert not denied.allowed
    assert not denied
    assert denied.violated == ("burst",)
    assert denied.retry_after == 0.2
    state = denied.limit("burst")
    assert state.allowed is False
    assert state.remaining == 0
    assert state.used == 10
    assert state.reset_after == 2.0
    assert state.retry_after == 0.2


def test_after_exactly_one_interval_exactly_one_more_passes(tw: Tollway, clock: FakeClock) -> None:
    take(tw, 10)
    assert not tw.acquire("alice", "call")
    clock.advance(us=199_999)
    almost = tw.acquire("alice", "call")
    assert not almost.allowed
    assert almost.retry_after == 0.000001
    clock.advance(us=1)
    passed = tw.acquire("alice", "call")
    assert passed.allowed
    assert passed.limit("burst").remaining == 0
    assert passed.limit("burst").reset_after == 2.0
    again = tw.acquire("alice", "call")
    assert not again.allowed
    assert again.retry_after == 0.2


def test_steady_refill_one_unit_per_interval(tw: Tollway, clock: FakeClock) -> None:
    allowed = sum(d.allowed for d in take(tw, 10))
    assert allowed == 10
    for step in range(50):
        clock.advance(0.2)
        first, second = take(tw, 2)
        assert first.allowed, step
        assert not second.allowed, step
        assert second.retry_after == 0.2
        allowed += 1
    # 10 at once, then one per 0.2 s for 10 s.
    assert allowed == 60


def test_refill_after_idle_time_is_proportional_and_capped_at_burst(
    tw: Tollway, clock: FakeClock
) -> None:
    take(tw, 10)
    clock.advance(1.0)
    assert [d.allowed for d in take(tw, 6)] == [True] * 5 + [False]
    clock.advance(60.0)
    assert sum(d.allowed for d in take(tw, 15)) == 10


def test_partial_refill_shows_in_usage_without_consuming(tw: Tollway, clock: FakeClock) -> None:
    take(tw, 10)
    clock.advance(0.5)
    for _ in range(3):
        state = tw.usage("alice").limit("burst")
        # 2.5 units have dripped back: 2 whole units are available, the TAT is 1.5 s away.
        assert state.remaining == 2
        assert state.used == 8
        assert state.reset_after == 1.5
    assert [d.allowed for d in take(tw, 3)] == [True, True, False]


def test_fresh_subject_usage_is_whole(tw: Tollway) -> None:
    state = tw.usage("nobody").limit("burst")
    assert state.remaining == 10
    assert state.used == 0
    assert state.reset_after == 0.0


def test_subjects_have_independent_buckets(tw: Tollway) -> None:
    assert sum(d.allowed for d in take(tw, 12, "alice")) == 10
    assert sum(d.allowed for d in take(tw, 12, "bob")) == 10


# -- costs -----------------------------------------------------------------------------------------


def test_cost_above_one_consumes_several_units(tw: Tollway, clock: FakeClock) -> None:
    three = tw.acquire("alice", "call", 3)
    assert three.allowed
    assert three.cost == 3
    assert three.limit("burst").remaining == 7
    assert three.limit("burst").used == 3
    assert three.limit("burst").reset_after == seconds(600_000)
    seven = tw.acquire("alice", "call", 7)
    assert seven.allowed
    assert seven.limit("burst").remaining == 0
    assert seven.limit("burst").reset_after == 2.0
    one = tw.acquire("alice", "call", 1)
    assert not one.allowed
    assert one.retry_after == 0.2
    clock.advance(0.4)
    # Two units are back: a cost of 3 must wait one more interval, a cost of 2 fits.
    too_many = tw.acquire("alice", "call", 3)
    assert not too_many.allowed
    assert too_many.retry_after == 0.2
    assert tw.acquire("alice", "call", 2).allowed
    assert tw.usage("alice").limit("burst").remaining == 0


def test_denied_cost_consumes_nothing(tw: Tollway) -> None:
    take(tw, 8)
    denied = tw.acquire("alice", "call", 3)
    assert not denied.allowed
    assert denied.retry_after == 0.2
    assert tw.usage("alice").limit("burst").remaining == 2
    assert tw.acquire("alice", "call", 2).allowed


def test_cost_equal_to_burst_fits_a_full_bucket(tw: Tollway) -> None:
    decision = tw.acquire("alice", "call", 10)
    assert decision.allowed
    assert decision.limit("burst").remaining == 0


def test_cost_above_burst_is_denied_forever(tw: Tollway, clock: FakeClock) -> None:
    decision = tw.acquire("alice", "call", 11)
    assert not decision.allowed
    assert decision.violated == ("burst",)
    assert decision.retry_after is None
    assert decision.limit("burst").retry_after is None
    # Nothing was consumed, and waiting does not help.
    assert tw.usage("alice").limit("burst").remaining == 10
    clock.advance(3600)
    assert tw.acquire("alice", "call", 11).retry_after is None
    assert tw.acquire("alice", "call", 10).allowed


# -- emission intervals that are not whole microseconds --------------------------------------------


@pytest.mark.parametrize(
    ("rate", "emission_us"),
    [
        ("5/s", 200_000),
        ("3/s", 333_334),  # 333,333.33... rounded up
        ("7/min", 8_571_429),  # 8,571,428.57... rounded up
        ("1000000/s", 1),
        ("10/5s", 500_000),
    ],
)
def test_emission_interval_is_rounded_up(rate: str, emission_us: int) -> None:
    policy = load(rate_policy(rate))
    parsed = policy.plans["free"].limits[0].rate
    assert parsed is not None
    assert parsed.emission_us == emission_us


def test_three_per_second_never_allows_more_than_the_text(clock: FakeClock) -> None:
    tw = Tollway(rate_policy("3/s"), clock=clock)
    first = take(tw, 4)
    assert [d.allowed for d in first] == [True, True, True, False]
    assert first[2].limit("burst").limit == 3  # burst defaults to the rate's count
    assert first[3].retry_after == 0.333334
    clock.advance(us=333_333)
    short = tw.acquire("alice", "call")
    assert not short.allowed
    assert short.retry_after == 0.000001
    clock.advance(us=1)
    assert tw.acquire("alice", "call").allowed


def test_three_per_second_over_ten_seconds_allows_32_not_33(clock: FakeClock) -> None:
    """Retry exactly when told, for 10 s: 3 at once, then one per 333,334 µs (29 of them);
    an interval of 333,333 µs would have let a 30th through at 9,999,990 µs."""
    tw = Tollway(rate_policy("3/s"), clock=clock)
    end = clock() + 10 * US
    allowed = 0
    while True:
        decision = tw.acquire("alice", "call")
        if decision.allowed:
            allowed += 1
            continue
        assert decision.retry_after is not None
        wait = round(decision.retry_after * US)
        assert wait == 333_334
        if clock() + wait > end:
            break
        clock.advance(us=wait)
    assert allowed == 32
