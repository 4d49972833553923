"""`AsyncTollway` on the memory store: the same decisions as `Tollway`, awaited."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from tollway import (
    AsyncReservation,
    AsyncTollway,
    InvalidArgumentError,
    LimitExceeded,
    ReservationError,
    Tollway,
    UnknownLimitError,
    UnknownOperationError,
    UnknownPlanError,
)
from tollway.testing import FakeClock

START = datetime(2026, 1, 15, 10, 59, 50, tzinfo=timezone.utc)

POLICY: dict[str, Any] = {
    "store": {"hold_ttl_ms": 5000},
    "defaults": {"plan": "free"},
    "operations": {
        "geocode": {"cost": 1, "price": "0.005 USD"},
        "search": {"cost": 3, "price": "0.01 USD"},
    },
    "plans": {
        "free": {
            "limits": [
                {"name": "burst", "rate": "5/s", "burst": 10},
                {"name": "hourly", "quota": "20/hour", "grace": "10%", "thresholds": [0.5, 1]},
                {"name": "searches", "quota": "5/minute", "per": "operation",
                 "operations": ["search"]},
                {"name": "spend", "budget": "0.10 USD/day", "thresholds": ["90%"]},
                {"name": "trial", "quota": "5/hour", "shadow": True},
            ]
        },
        "pro": {"limits": [{"name": "hourly", "quota": "1000/hour"}]},
    },
}  # fmt: skip

# (seconds to advance first, subject, operation, cost, amount); "assign" rows change plans.
SCRIPT: list[tuple[Any, ...]] = [
    (0, "a", "geocode", None, None),
    (0, "a", "geocode", 4, None),
    (0, "a", "search", None, None),
    (0, "a", "search", 1, None),
    (0, "a", "search", 1, None),  # the per-operation minute quota is spent, the burst too
    (0, "a", "geocode", 5, None),
    (0.2, "a", "geocode", None, None),
    (0.2, "a", "geocode", 2, None),
    (1, "a", "geocode", None, Decimal("0.0123")),  # crosses 90% of the budget
    (0, "a", "search", 1, None),
    (0, "b", "geocode", 11, None),
    (0, "b", "geocode", 10, None),
    (10, "a", "search", None, None),  # a new minute and a new hour; the day's budget is short
    (0, "a", "geocode", 3, Decimal("0.05")),
    (0, "a", "geocode", 1, None),
    ("assign", "a", "pro"),
    (0, "a", "geocode", 1, None),
    ("assign", "a", None),
    (3, "a", "geocode", 1, None),
    (86_400, "a", "geocode", 10, None),
    (0, "a", "geocode", 1, None),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def run_sync() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    clock = FakeClock(START)
    tw = Tollway(POLICY, clock=clock)
    decisions: list[dict[str, Any]] = []
    for row in SCRIPT:
        if row[0] == "assign":
            tw.assign(row[1], row[2])
            continue
        clock.advance(row[0])
        decisions.append(tw.acquire(row[1], row[2], row[3], amount=row[4]).to_dict())
    usages = [tw.usage(s).to_dict() for s in ("a", "b", "c")]
    return decisions, usages


async def run_async() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    clock = FakeClock(START)
    async with AsyncTollway(POLICY, clock=clock) as tw:
        decisions: list[dict[str, Any]] = []
        for row in SCRIPT:
            if row[0] == "assign":
                await tw.assign(row[1], row[2])
                continue
            clock.advance(row[0])
            decision = await tw.acquire(row[1], row[2], row[3], amount=row[4])
            decisions.append(decision.to_dict())
        usages = [(await tw.usage(s)).to_dict() for s in ("a", "b", "c")]
    return decisions, usages


async def test_async_gives_the_same_decisions_as_sync() -> None:
    sync_decisions, sync_usages = run_sync()
    async_decisions, async_usages = await run_async()
    assert async_decisions == sync_decisions
    assert async_usages == sync_usages
    # The script is not trivial: it is allowed, denied, crosses and shadow-violates.
    assert [d["allowed"] for d in sync_decisions] == [
        True, True, True, True, True, False, True, False, True, False, False, True, False,
        False, True, True, False, True, False,
    ]  # fmt: skip
    assert any("crossings" in d for d in sync_decisions)
    assert any("shadow_violated" in d for d in sync_decisions)
    assert [tuple(d["violated"]) for d in sync_decisions if not d["allowed"]] == [
        ("burst",),
        ("burst",),
        ("searches", "spend"),
        ("burst",),
        ("spend",),
        ("spend",),
        ("spend",),
        ("burst",),
    ]


async def test_async_quota_figures(clock: FakeClock) -> None:
    tw = AsyncTollway(POLICY, clock=clock)
    decision = await tw.acquire("a", "geocode", 4)
    assert decision.allowed
    assert decision.plan == "free"
    assert decision.limit("hourly").used == 4
    assert decision.limit("hourly").reset_after == 10.0
    assert decision.limit("spend").used == Decimal("0.02")
    assert decision.limit("burst").remaining == 6
    await tw.aclose()


async def test_async_usage_reset_assign(clock: FakeClock) -> None:
    async with AsyncTollway(POLICY, clock=clock) as tw:
        await tw.acquire("a", "geocode", 4)
        first = await tw.usage("a")
        assert await tw.usage("a") == first
        assert first.limit("hourly").used == 4
        assert await tw.reset("a", limit="hourly") == 1
        usage = await tw.usage("a")
        assert usage.limit("hourly").used == 0
        assert usage.limit("spend").used == Decimal("0.02")
        with pytest.raises(UnknownLimitError, match="'nope'"):
            await tw.reset("a", limit="nope")
        assert await tw.plan_of("a") == "free"
        await tw.assign("a", "pro")
        assert await tw.plan_of("a") == "pro"
        assert (await tw.acquire("a", "geocode")).limit("hourly").used == 1
        await tw.assign("a", None)
        assert await tw.plan_of("a") == "free"
        with pytest.raises(UnknownPlanError, match="gold"):
            await tw.assign("a", "gold")
        assert await tw.reset("a") >= 2
        assert [s.used for s in (await tw.usage("a")).limits] == [0, 0, 0, Decimal("0"), 0]


async def test_async_bad_input_raises_and_consumes_nothing(clock: FakeClock) -> None:
    tw = AsyncTollway(POLICY, clock=clock)
    await tw.acquire("a", "geocode")
    with pytest.raises(UnknownOperationError, match="geocode, search"):
        await tw.acquire("a", "nope")
    with pytest.raises(InvalidArgumentError, match="cost"):
        await tw.acquire("a", "geocode", 0)
    with pytest.raises(InvalidArgumentError, match="subject"):
        await tw.acquire("a\nb", "geocode")
    with pytest.raises(InvalidArgumentError, match="amount"):
        await tw.reserve("a", "geocode", amount=0.1)  # type: ignore[arg-type]
    assert (await tw.usage("a")).limit("hourly").used == 1


async def test_many_tasks_share_a_quota_exactly(clock: FakeClock) -> None:
    policy = {
        "defaults": {"plan": "free"},
        "operations": {"call": {"cost": 1}},
        "plans": {"free": {"limits": [{"name": "hourly", "quota": "1000/hour"}]}},
    }
    tw = AsyncTollway(policy, clock=clock)
    decisions = await asyncio.gather(*(tw.acquire("shared", "call") for _ in range(2500)))
    assert sum(d.allowed for d in decisions) == 1000
    assert (await tw.usage("shared")).limit("hourly").used == 1000


# -- reservations ----------------------------------------------------------------------------------


async def test_async_reserve_commit_release(clock: FakeClock) -> None:
    tw = AsyncTollway(POLICY, clock=clock)
    reservation = await tw.reserve("a", "geocode", 3)
    assert isinstance(reservation, AsyncReservation)
    assert reservation.allowed
    assert (await tw.usage("a")).limit("hourly").used == 3
    decision = await reservation.commit(2)
    assert decision.cost == 2
    assert decision.limit("hourly").used == 2
    assert decision.limit("spend").used == Decimal("0.01")
    with pytest.raises(ReservationError):
        await reservation.commit(2)
    other = await tw.reserve("a", "geocode", 5)
    assert (await tw.usage("a")).limit("hourly").used == 7
    await other.release()
    assert (await tw.usage("a")).limit("hourly").used == 2
    with pytest.raises(ReservationError):
        await other.release()


async def test_async_commit_past_the_limit_and_hold_expiry(clock: FakeClock) -> None:
    tw = AsyncTollway(POLICY, clock=clock)
    await tw.acquire("a", "geocode", 8)
    clock.advance(2)
    big = await tw.reserve("a", "geocode", 2)
    assert big.decision.limit("burst").remaining == 8
    committed = await big.commit(10)  # more than the estimate: taken even past the limit
    assert committed.limit("burst").remaining == 0
    assert committed.limit("burst").reset_after == 2.0
    assert (await tw.usage("a")).limit("hourly").used == 18
    assert (await tw.acquire("a", "geocode")).retry_after == 0.2
    clock.advance(2)
    forgotten = await tw.reserve("a", "geocode", 2)
    assert forgotten.allowed
    assert (await tw.usage("a")).limit("hourly").used == 20
    assert (await tw.usage("a")).limit("spend").used == Decimal("0.10")
    clock.advance(5.000001)  # hold_ttl_ms = 5000
    assert (await tw.usage("a")).limit("hourly").used == 18
    await forgotten.commit(1)  # after expiry: the whole actual cost
    assert (await tw.usage("a")).limit("hourly").used == 19
    assert (await tw.usage("a")).limit("spend").used == Decimal("0.095")


async def test_async_denied_reservation(clock: FakeClock) -> None:
    tw = AsyncTollway(POLICY, clock=clock)
    denied = await tw.reserve("a", "geocode", 11)
    assert not denied.allowed
    assert denied.decision.violated == ("burst",)
    assert denied.decision.retry_after is None
    with pytest.raises(ReservationError, match="denied"):
        await denied.commit()
    with pytest.raises(LimitExceeded) as caught:
        async with denied:
            pytest.fail("entered a denied reservation")
    assert caught.value.decision is denied.decision
    assert (await tw.usage("a")).limit("hourly").used == 0


async def test_async_context_manager(clock: FakeClock) -> None:
    async with AsyncTollway(POLICY, clock=clock) as tw:
        async with await tw.reserve("a", "geocode", 3) as reservation:
            assert (await tw.usage("a")).limit("hourly").used == 3
        assert reservation.settled
        assert (await tw.usage("a")).limit("hourly").used == 3
        with pytest.raises(RuntimeError, match="boom"):
            async with await tw.reserve("a", "geocode", 4) as failed:
                assert (await tw.usage("a")).limit("hourly").used == 7
                raise RuntimeError("boom")
        assert failed.settled
        assert (await tw.usage("a")).limit("hourly").used == 3
        async with await tw.reserve("a", "geocode", 4) as explicit:
            await explicit.commit(1)
        assert (await tw.usage("a")).limit("hourly").used == 4


async def test_async_budget_reservation_with_amounts(clock: FakeClock) -> None:
    tw = AsyncTollway(POLICY, clock=clock)
    reservation = await tw.reserve("a", "geocode", 1, amount=Decimal("0.06"))
    assert (await tw.usage("a")).limit("spend").used == Decimal("0.06")
    assert not (await tw.acquire("a", "geocode", amount=Decimal("0.05"))).allowed
    decision = await reservation.commit(amount=Decimal("0.0125"))
    assert decision.amount_decimal == Decimal("0.0125")
    assert (await tw.usage("a")).limit("spend").used == Decimal("0.0125")
