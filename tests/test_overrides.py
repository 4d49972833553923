"""Per-subject overrides: a limit raised (or added) for one subject for a time, applied by
every client following the active policy, shown in its standing, ended by the clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from tollway import Tollway
from tollway.admin.policies import Policies
from tollway.errors import InvalidArgumentError, PolicyError
from tollway.metering.ledger import open_ledger
from tollway.testing import FakeClock
from tollway.watch import PolicyWatch

V1 = """
[defaults]
plan = "free"

[operations]
call = { cost = 1 }
other = { cost = 1 }

[plans.free]
limits = [{ name = "hourly", quota = "3/hour" }]
"""
DOC: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"call": {"cost": 1}, "other": {"cost": 1}},
    "plans": {"free": {"limits": [{"name": "hourly", "quota": "3/hour"}]}},
}
NOW = 1_800_000_000.0  # on the hour: the windows below stay whole while the clock moves


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url = str(request.getfixturevalue("redis_url"))
    redis.Redis.from_url(url).flushall()
    return url


@pytest.fixture
def setup(store_url: str, tmp_path: Path) -> Iterator[tuple[Tollway, Policies, FakeClock]]:
    clock = FakeClock(NOW)
    watch = PolicyWatch(check_every=0)
    with (
        Tollway(DOC, store_url, clock=clock, policy_from=watch) as tw,
        open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger,
    ):
        policies = Policies(ledger, tw.store, clock)
        policies.activate(policies.upload(V1, by="ops").version, by="ops")
        yield tw, policies, clock


def allowed(tw: Tollway, subject: str, n: int, op: str = "call") -> list[bool]:
    return [tw.acquire(subject, op).allowed for _ in range(n)]


def test_an_override_raises_one_subjects_limit_until_it_expires(
    setup: tuple[Tollway, Policies, FakeClock],
) -> None:
    tw, policies, clock = setup
    assert allowed(tw, "vip", 4) == [True, True, True, False]
    before, after = policies.override(
        "vip", "hourly", {"quota": "6/hour"}, timedelta(minutes=10), by="support"
    )
    assert before is None and after.spec == {"quota": "6/hour"} and after.by == "support"
    assert allowed(tw, "vip", 4) == [True, True, True, False]  # 3 more: 6 in all
    assert allowed(tw, "plain", 4) == [True, True, True, False]  # no one else
    standing = {s.name: (s.limit, s.used) for s in tw.usage("vip").limits}
    assert standing == {"hourly": (6, 6)}
    assert tw.usage("plain").limits[0].limit == 3
    clock.advance(10 * 60)  # the override's end, on the engine's clock
    assert tw.usage("vip").limits[0].limit == 3
    assert allowed(tw, "vip", 1) == [False]
    assert policies.overrides() == []


def test_an_override_adds_a_limit_and_a_new_one_replaces_it(
    setup: tuple[Tollway, Policies, FakeClock],
) -> None:
    tw, policies, _ = setup
    policies.override(
        "cap", "calls", {"quota": "2/day", "operations": ["other"]}, timedelta(hours=1), by="s"
    )
    assert allowed(tw, "cap", 3, "other") == [True, True, False]
    assert allowed(tw, "cap", 1) == [True]  # "calls" covers "other" only
    names = [s.name for s in tw.usage("cap").limits]
    assert names == ["hourly", "calls"]
    before, after = policies.override(
        "cap", "calls", {"quota": "5/day", "operations": ["other"]}, timedelta(hours=2), by="s"
    )
    assert before is not None and before.spec["quota"] == "2/day"
    assert after.created_at_us > before.created_at_us
    assert {s.name: s.limit for s in tw.usage("cap").limits} == {"hourly": 3, "calls": 5}
    assert tw.acquire("cap", "other").violated == ("hourly",)  # "calls" fits now: 2 of 5
    assert [o.spec["quota"] for o in policies.overrides("cap")] == ["5/day"]
    policies.end_override("cap", "calls", by="s")
    assert [s.name for s in tw.usage("cap").limits] == ["hourly"]
    assert policies.overrides() == []


def test_an_invalid_override_is_refused_with_its_key_path(
    setup: tuple[Tollway, Policies, FakeClock],
) -> None:
    tw, policies, _ = setup
    with pytest.raises(PolicyError) as caught:
        policies.override(
            "x", "hourly", {"quota": "6/hr", "operations": ["nope"]}, timedelta(hours=1), by="s"
        )
    assert {i.path for i in caught.value.issues} == {"override.quota", "override.operations[0]"}
    with pytest.raises(InvalidArgumentError, match="expires"):
        policies.override("x", "hourly", {"quota": "6/hour"}, timedelta(0), by="s")
    with pytest.raises(InvalidArgumentError, match="expires"):
        policies.override("x", "hourly", {"quota": "6/hour"}, timedelta(days=400), by="s")
    with pytest.raises(InvalidArgumentError, match="subject"):
        policies.override("a\nb", "hourly", {"quota": "6/hour"}, timedelta(hours=1), by="s")
    assert policies.overrides() == []
    assert allowed(tw, "x", 4) == [True, True, True, False]


def test_overrides_survive_an_activation(setup: tuple[Tollway, Policies, FakeClock]) -> None:
    tw, policies, _ = setup
    policies.override("vip", "hourly", {"quota": "6/hour"}, timedelta(hours=1), by="s")
    v2 = policies.upload(V1.replace('"3/hour"', '"4/hour"'), by="ops").version
    policies.activate(v2, by="ops")
    decision = tw.acquire("vip", "call")
    assert decision.policy_version == v2 and decision.limit("hourly").limit == 6
    assert tw.acquire("plain", "call").limit("hourly").limit == 4
