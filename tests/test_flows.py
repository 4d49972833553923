"""The flows and their drivers: one implementation of each operation, a typed driver for the
features, reply codes defined once, lookups that fail with tollway's own errors, and no module
reading another class's underscored attributes."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from typing import Any

import pytest
import redis

from tollway import AsyncTollway, Tollway, TollwayError, UnknownLimitError
from tollway.driver import AsyncDriver, Driver
from tollway.engine import flows
from tollway.engine.replies import ReplyCode, is_stale
from tollway.engine.requests import Flow
from tollway.engine.step import PEEK
from tollway.stores import redis_codec
from tollway.testing import FakeClock

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1}, "search": {"cost": 2}},
    "plans": {
        "free": {
            "limits": [
                {"name": "burst", "rate": "10/s", "burst": 10},
                {"name": "daily", "quota": "100/day", "operations": ["geocode"]},
                {"name": "per_op", "quota": "50/day", "per": "operation"},
            ]
        }
    },
    "providers": {"google": {"limits": [{"name": "daily", "quota": "5/day"}]}},
    "routes": {"geocoding": {"providers": ["google"]}},
}


@pytest.fixture
def tw() -> Tollway:
    return Tollway(POLICY, "memory://", clock=FakeClock(1_800_000_000))


# -- lookups fail with tollway's errors ---------------------------------------------------------


def test_decision_limit_names_the_unknown_limit_and_the_known_ones(tw: Tollway) -> None:
    decision = tw.acquire("alice", "geocode")
    with pytest.raises(UnknownLimitError) as caught:
        decision.limit("hourly")
    error = caught.value
    assert isinstance(error, TollwayError)
    assert isinstance(error, KeyError)  # what it raised before: old handlers still catch it
    text = str(error)
    assert text.startswith("limit: 'hourly' does not apply to 'alice' (plan 'free')")
    assert text.endswith("its limits: burst, daily, per_op")
    assert decision.limit("daily").used == 1


def test_usage_limit_raises_the_same_error_and_names_the_operation(tw: Tollway) -> None:
    tw.acquire("alice", "geocode")
    usage = tw.usage("alice")
    with pytest.raises(UnknownLimitError, match=r"limit: 'per_op' of operation 'export'"):
        usage.limit("per_op", "export")
    assert usage.limit("per_op", "geocode").used == 1
    with pytest.raises(KeyError):
        usage.limit("nope")


# -- reply codes: one definition, substituted into the Lua --------------------------------------


def test_the_lua_scripts_get_every_reply_code_from_the_enum() -> None:
    folder = resources.files("tollway.stores") / "lua"
    for name in ("step", "settle"):
        source = (folder / f"{name}.lua").read_text(encoding="utf-8")
        # No bare code: every reply starts with a named code.
        assert not re.search(r"return \{\d", source), name
        assert not re.search(r"reply = \{\d", source), name
    for script in (redis_codec.STEP, redis_codec.SETTLE, redis_codec.HEALTH):
        assert not re.search(r"__[A-Z_]+__", script.text), script.name
        for code in ReplyCode:
            assert f"{code.placeholder}" not in script.text
    declared = re.findall(r"local (\w+(?:, \w+)*) = (\d+(?:, \d+)*)\n", redis_codec.STEP.text)
    codes = {
        name: int(value)
        for names, values in declared
        for name, value in zip(names.split(", "), values.split(", "), strict=True)
    }
    assert {code.name: int(code) for code in ReplyCode}.items() <= codes.items()


def test_only_plan_and_window_replies_are_stale() -> None:
    stale = {code for code in ReplyCode if is_stale(code)}
    assert stale == {ReplyCode.PLAN_MISMATCH, ReplyCode.STALE_WINDOW, ReplyCode.EXPIRED}


# -- stale replies ----------------------------------------------------------------------------


def test_a_plan_changed_elsewhere_costs_one_round_trip_more(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The step built for the old plan is answered PLAN_MISMATCH; the flow learns the plan
    from that reply and the rebuilt step is taken: two steps, not three."""
    policy = {
        **POLICY,
        "plans": {**POLICY["plans"], "pro": {"limits": [{"name": "daily", "quota": "1000/day"}]}},
    }

    def steps_run() -> int:
        stats = redis_client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0))

    with Tollway(policy, redis_url) as admin, Tollway(policy, redis_url) as worker:
        assert worker.acquire("dave", "geocode").plan == "free"
        admin.assign("dave", "pro")
        before = steps_run()
        decision = worker.acquire("dave", "geocode")
        assert steps_run() - before == 2
        assert decision.plan == "pro"
        assert decision.limit("daily").used == 2  # same name, same counter


# -- the driver: the features' interface --------------------------------------------------------


def test_the_driver_runs_a_features_own_flow(tw: Tollway) -> None:
    driver = tw.driver
    assert isinstance(driver, Driver)
    assert driver.engine is tw.engine
    assert driver.policy is tw.policy
    assert driver.store is tw.store

    def two_acquires() -> Flow[int]:
        first = yield from flows.acquire(tw.engine, "bob", "geocode", None, None, None, None)
        second = yield from flows.acquire(tw.engine, "bob", "geocode", 3, None, None, None)
        return first.cost + second.cost

    assert driver.run(two_acquires()) == 4
    assert tw.usage("bob").limit("daily").used == 4
    peek = driver.decide(lambda: tw.engine.provider("google", None, None, PEEK))
    assert peek.limit("daily").used == 0
    taken = driver.take(lambda: tw.engine.provider("google", 2, None))
    assert taken.allowed
    assert (
        driver.decide(lambda: tw.engine.provider("google", None, None, PEEK)).limit("daily").used
        == 2
    )
    taken.release()
    assert (
        driver.decide(lambda: tw.engine.provider("google", None, None, PEEK)).limit("daily").used
        == 0
    )


def test_the_async_driver_runs_the_same_flows() -> None:
    async def scenario() -> None:
        async with AsyncTollway(POLICY, "memory://", clock=FakeClock(1_800_000_000)) as tw:
            assert isinstance(tw.driver, AsyncDriver)
            flow = flows.acquire(tw.engine, "bob", "search", None, None, None, None)
            decision = await tw.driver.run(flow)
            assert decision.allowed
            assert decision.cost == 2
            taken = await tw.driver.take(lambda: tw.engine.provider("google", 5, None))
            assert taken.allowed
            over = await tw.driver.take(lambda: tw.engine.provider("google", 1, None))
            assert not over.allowed
            assert (await taken.commit(4)).allowed
            assert (await tw.driver.take(lambda: tw.engine.provider("google", 1, None))).allowed

    asyncio.run(scenario())


def test_a_decision_exposes_what_the_features_read(tw: Tollway) -> None:
    assert tw.acquire("carol", "search", 8).allowed
    decision = tw.acquire("carol", "search", 2)
    assert decision.allowed
    decision = tw.acquire("carol", "search", 41)  # per_op holds 10 of 50
    assert not decision.allowed
    assert decision.step.cost == 41
    names = [rule.name for rule in decision.rules]
    assert names == ["burst", "per_op"]  # daily counts geocode only
    assert list(decision.values)[1] == 10  # as found: a denied step takes nothing
    assert decision.misfits & 0b10  # per_op did not fit
    assert "per_op" in decision.violated
