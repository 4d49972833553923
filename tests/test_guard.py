"""`tollway.guard`: limits for background work, on the memory store and a fake clock.

The injected ``sleep`` records each wait and advances the fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tollway import (
    AsyncTollway,
    ConfigurationError,
    Decision,
    InvalidArgumentError,
    LimitExceeded,
    Tollway,
)
from tollway.guard import guard, guard_sync, limited
from tollway.testing import FakeClock

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"job": {"cost": 1}, "export": {"cost": 1}},
    "plans": {
        "free": {
            "limits": [
                {"name": "burst", "rate": "2/s", "burst": 2, "operations": ["job"]},
                {"name": "hourly", "quota": "3/hour", "operations": ["export"]},
            ]
        },
    },
}


class Sleeper:
    """A ``sleep`` that advances the fake clock and remembers every wait."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)


class AsyncSleeper(Sleeper):
    async def __call__(self, seconds: float) -> None:  # type: ignore[override]
        super().__call__(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tw(clock: FakeClock) -> Tollway:
    return Tollway(POLICY, clock=clock)


@pytest.fixture
def atw(clock: FakeClock) -> AsyncTollway:
    return AsyncTollway(POLICY, clock=clock)


@pytest.fixture
def sleeper(clock: FakeClock) -> Sleeper:
    return Sleeper(clock)


@pytest.fixture
def asleeper(clock: FakeClock) -> AsyncSleeper:
    return AsyncSleeper(clock)


# --------------------------------------------------------------------- raising on denial


def test_sync_decorator_allows_the_quota_then_raises_with_the_decision(tw: Tollway) -> None:
    calls: list[int] = []

    @limited(tw, "export", subject="a")
    def export(n: int) -> int:
        calls.append(n)
        return n * 10

    assert [export(1), export(2), export(3)] == [10, 20, 30]
    with pytest.raises(LimitExceeded) as caught:
        export(4)
    assert calls == [1, 2, 3]  # the denied call never ran
    decision = caught.value.decision
    assert isinstance(decision, Decision)
    assert not decision.allowed
    assert decision.violated == ("hourly",)
    assert decision.subject == "a"
    assert decision.operation == "export"
    assert decision.retry_after is not None and decision.retry_after > 0
    assert tw.usage("a").limit("hourly").used == 3  # nothing consumed by the denial


async def test_async_decorator_allows_the_quota_then_raises_with_the_decision(
    atw: AsyncTollway,
) -> None:
    calls: list[int] = []

    @limited(atw, "export", subject="a")
    async def export(n: int) -> int:
        calls.append(n)
        await asyncio.sleep(0)
        return n * 10

    assert [await export(1), await export(2), await export(3)] == [10, 20, 30]
    with pytest.raises(LimitExceeded) as caught:
        await export(4)
    assert calls == [1, 2, 3]
    assert caught.value.decision.violated == ("hourly",)
    assert not caught.value.decision.allowed
    assert (await atw.usage("a")).limit("hourly").used == 3


def test_subjects_are_limited_separately(tw: Tollway) -> None:
    @limited(tw, "export", subject=lambda who: who)
    def export(who: str) -> str:
        return who

    for _ in range(3):
        export("a")
    with pytest.raises(LimitExceeded):
        export("a")
    assert export("b") == "b"


# --------------------------------------------------------------------- waiting for capacity


def test_sync_waits_exactly_the_retry_after_of_a_rate(tw: Tollway, sleeper: Sleeper) -> None:
    @limited(tw, "job", subject="a", max_wait=1.0, sleep=sleeper)
    def job() -> str:
        return "done"

    assert job() == "done"
    assert job() == "done"
    assert sleeper.waits == []
    assert job() == "done"  # "2/s" burst 2: the third call waits half a second
    assert sleeper.waits == [pytest.approx(0.5)]


def test_sync_wait_matches_the_denied_decision(tw: Tollway, sleeper: Sleeper) -> None:
    tw.acquire("a", "job")
    tw.acquire("a", "job")
    denied = tw.acquire("a", "job")
    assert not denied.allowed and denied.retry_after == pytest.approx(0.5)

    with guard_sync(tw, "a", "job", max_wait=0.5, sleep=sleeper) as decision:
        assert decision.allowed
    assert sleeper.waits == [denied.retry_after]


async def test_async_waits_exactly_the_retry_after_of_a_rate(
    atw: AsyncTollway, asleeper: AsyncSleeper
) -> None:
    @limited(atw, "job", subject="a", max_wait=1.0, sleep=asleeper)
    async def job() -> str:
        return "done"

    assert [await job(), await job()] == ["done", "done"]
    assert asleeper.waits == []
    assert await job() == "done"
    assert asleeper.waits == [pytest.approx(0.5)]


async def test_async_accepts_a_plain_function_as_sleep(atw: AsyncTollway, sleeper: Sleeper) -> None:
    @limited(atw, "job", subject="a", max_wait=1.0, sleep=sleeper)
    async def job() -> None:
        return None

    for _ in range(3):
        await job()
    assert sleeper.waits == [pytest.approx(0.5)]


def test_a_wait_longer_than_max_wait_raises_without_sleeping(tw: Tollway, sleeper: Sleeper) -> None:
    @limited(tw, "job", subject="a", max_wait=0.4, sleep=sleeper)
    def job() -> None:
        return None

    job()
    job()
    with pytest.raises(LimitExceeded) as caught:
        job()
    assert caught.value.decision.retry_after == pytest.approx(0.5)
    assert sleeper.waits == []


async def test_async_wait_longer_than_max_wait_raises_without_sleeping(
    atw: AsyncTollway, asleeper: AsyncSleeper
) -> None:
    @limited(atw, "job", subject="a", max_wait=0.4, sleep=asleeper)
    async def job() -> None:
        return None

    await job()
    await job()
    with pytest.raises(LimitExceeded):
        await job()
    assert asleeper.waits == []


def test_max_wait_zero_never_waits(tw: Tollway, sleeper: Sleeper) -> None:
    @limited(tw, "job", subject="a", sleep=sleeper)
    def job() -> None:
        return None

    job()
    job()
    with pytest.raises(LimitExceeded):
        job()
    assert sleeper.waits == []


def test_retry_after_none_never_waits(tw: Tollway, sleeper: Sleeper) -> None:
    @limited(tw, "job", subject="a", cost=3, max_wait=3600.0, sleep=sleeper)
    def job() -> None:
        raise AssertionError("must not run")

    with pytest.raises(LimitExceeded) as caught:
        job()
    assert caught.value.decision.retry_after is None  # cost 3 never fits a burst of 2
    assert sleeper.waits == []


async def test_async_retry_after_none_never_waits(
    atw: AsyncTollway, asleeper: AsyncSleeper
) -> None:
    with pytest.raises(LimitExceeded) as caught:
        async with guard(atw, "a", "job", cost=3, max_wait=3600.0, sleep=asleeper):
            raise AssertionError("must not run")
    assert caught.value.decision.retry_after is None
    assert asleeper.waits == []


def test_total_wait_is_bounded_by_max_wait(tw: Tollway, clock: FakeClock) -> None:
    """A competitor takes the freed slot during every wait: the waits add up against
    max_wait, and the call gives up once the next wait would exceed it."""
    waits: list[float] = []

    def contested(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)
        assert tw.acquire("a", "job").allowed  # someone else got there first

    tw.acquire("a", "job")
    tw.acquire("a", "job")
    with pytest.raises(LimitExceeded), guard_sync(tw, "a", "job", max_wait=1.2, sleep=contested):
        raise AssertionError("must not run")
    assert waits == [pytest.approx(0.5), pytest.approx(0.5)]


def test_waits_add_up_until_capacity(tw: Tollway, clock: FakeClock) -> None:
    waits: list[float] = []

    def contested_once(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)
        if len(waits) == 1:
            assert tw.acquire("a", "job").allowed

    tw.acquire("a", "job")
    tw.acquire("a", "job")
    with guard_sync(tw, "a", "job", max_wait=1.0, sleep=contested_once) as decision:
        assert decision.allowed
    assert waits == [pytest.approx(0.5), pytest.approx(0.5)]


def test_default_sleep_is_time_sleep(tw: Tollway, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    tw.acquire("a", "job")
    tw.acquire("a", "job")
    with pytest.raises(LimitExceeded), guard_sync(tw, "a", "job", max_wait=0.5):
        pass  # the fake clock never moves: after one wait the next would exceed max_wait
    assert slept == [pytest.approx(0.5)]


async def test_default_async_sleep_is_asyncio_sleep(
    atw: AsyncTollway, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    await atw.acquire("a", "job")
    await atw.acquire("a", "job")
    with pytest.raises(LimitExceeded):
        async with guard(atw, "a", "job", max_wait=0.5):
            pass
    assert slept == [pytest.approx(0.5)]


# --------------------------------------------------------------------- arguments


def test_subject_and_cost_callables_see_the_arguments(tw: Tollway) -> None:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def who(account: str, rows: list[int], *, tag: str = "") -> str:
        seen.append(((account, rows), {"tag": tag}))
        return account

    def how_much(account: str, rows: list[int], *, tag: str = "") -> int:
        return len(rows)

    @limited(tw, "export", subject=who, cost=how_much)
    def export(account: str, rows: list[int], *, tag: str = "") -> int:
        return len(rows)

    assert export("acct", [1, 2], tag="x") == 2
    assert seen == [(("acct", [1, 2]), {"tag": "x"})]
    assert tw.usage("acct").limit("hourly").used == 2
    with pytest.raises(LimitExceeded) as caught:
        export("acct", [1, 2])
    assert caught.value.decision.cost == 2
    assert caught.value.decision.subject == "acct"


async def test_async_subject_and_cost_callables_see_the_arguments(atw: AsyncTollway) -> None:
    @limited(atw, "export", subject=lambda a, n: a, cost=lambda a, n: n)
    async def export(account: str, n: int) -> str:
        return account

    assert await export("x", 3) == "x"
    assert (await atw.usage("x")).limit("hourly").used == 3
    assert await export("y", 1) == "y"


def test_wraps_keeps_name_and_doc(tw: Tollway, atw: AsyncTollway) -> None:
    @limited(tw, "job", subject="a")
    def sync_job() -> None:
        """Sync docs."""

    @limited(atw, "job", subject="a")
    async def async_job() -> None:
        """Async docs."""

    assert sync_job.__name__ == "sync_job"
    assert sync_job.__doc__ == "Sync docs."
    assert async_job.__name__ == "async_job"
    assert async_job.__doc__ == "Async docs."
    assert asyncio.iscoroutinefunction(async_job)
    assert sync_job.__wrapped__ is not None  # type: ignore[attr-defined]


# --------------------------------------------------------------------- context managers


def test_sync_context_manager(tw: Tollway) -> None:
    ran = []
    for _ in range(3):
        with guard_sync(tw, "a", "export") as decision:
            assert decision.allowed
            ran.append(decision.limit("hourly").used)
    assert ran == [1, 2, 3]
    with pytest.raises(LimitExceeded) as caught, guard_sync(tw, "a", "export"):
        raise AssertionError("must not run")
    assert caught.value.decision.violated == ("hourly",)


def test_sync_context_manager_lets_errors_of_the_block_through(tw: Tollway) -> None:
    with pytest.raises(KeyError), guard_sync(tw, "a", "export", cost=2):
        raise KeyError("boom")
    assert tw.usage("a").limit("hourly").used == 2  # acquired: the work was attempted


async def test_async_context_manager(atw: AsyncTollway) -> None:
    for _ in range(3):
        async with guard(atw, "a", "export") as decision:
            assert decision.allowed
    with pytest.raises(LimitExceeded) as caught:
        async with guard(atw, "a", "export"):
            raise AssertionError("must not run")
    assert caught.value.decision.violated == ("hourly",)


async def test_async_context_manager_waits(atw: AsyncTollway, asleeper: AsyncSleeper) -> None:
    await atw.acquire("a", "job")
    await atw.acquire("a", "job")
    async with guard(atw, "a", "job", max_wait=0.5, sleep=asleeper) as decision:
        assert decision.allowed
    assert asleeper.waits == [pytest.approx(0.5)]


async def test_guard_is_concurrency_safe(atw: AsyncTollway) -> None:
    async def one() -> bool:
        try:
            async with guard(atw, "a", "export"):
                await asyncio.sleep(0)
        except LimitExceeded:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(10)))
    assert sum(results) == 3


# --------------------------------------------------------------------- mismatches, bad input


def test_sync_function_with_async_tollway_is_a_configuration_error(atw: AsyncTollway) -> None:
    decorate = limited(atw, "job", subject="a")
    with pytest.raises(ConfigurationError, match="AsyncTollway"):

        def job() -> None:
            return None

        decorate(job)  # type: ignore[arg-type]


def test_async_function_with_sync_tollway_is_a_configuration_error(tw: Tollway) -> None:
    async def job() -> None:
        return None

    with pytest.raises(ConfigurationError, match="Tollway"):
        limited(tw, "job", subject="a")(job)


async def test_context_managers_refuse_the_wrong_facade(tw: Tollway, atw: AsyncTollway) -> None:
    with pytest.raises(ConfigurationError):
        guard(tw, "a", "job")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        guard_sync(atw, "a", "job")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        limited(object(), "job", subject="a")  # type: ignore[call-overload]


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), True, "1"])
def test_bad_max_wait_is_refused(tw: Tollway, bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="max_wait"):
        limited(tw, "job", subject="a", max_wait=bad)
    with pytest.raises(InvalidArgumentError, match="max_wait"):
        guard_sync(tw, "a", "job", max_wait=bad)


def test_bad_subject_from_a_callable_raises_before_the_call(tw: Tollway) -> None:
    @limited(tw, "job", subject=lambda: "bad\nsubject")
    def job() -> None:
        raise AssertionError("must not run")

    with pytest.raises(InvalidArgumentError):
        job()


def test_public_names() -> None:
    import tollway.guard

    assert tollway.guard.__all__ == ["guard", "guard_sync", "limited"]
