"""Versioned policies: upload (validated), diff, activate, pilots with shadow evaluation,
rollback, and activations picked up by other processes within a second."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from processes import run_together

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only
    import tomli as tomllib
from tollway import Tollway
from tollway.admin.policies import Policies
from tollway.engine.cohort import Cohort
from tollway.errors import InvalidArgumentError, PolicyError, UnknownNameError
from tollway.metering.ledger import open_ledger
from tollway.stores.control import ACTIVE_KEY, SetValues, body_key
from tollway.testing import FakeClock
from tollway.watch import PolicyWatch

V1 = """
[defaults]
plan = "free"

[operations]
call = { cost = 1 }

[plans.free]
limits = [{ name = "hourly", quota = "3/hour" }]

[plans.pro]
limits = [{ name = "hourly", quota = "10/hour" }]
"""
V2 = V1.replace('"3/hour"', '"5/hour"').replace('"10/hour"', '"2/hour"')
NOW = 1_800_000_000.0


def tw_for(url: str, clock: FakeClock, shadow_every: int = 0) -> Tollway:
    watch = PolicyWatch(check_every=0, shadow_every=shadow_every)
    return Tollway(V1_DOC, url, clock=clock, policy_from=watch)


V1_DOC: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"call": {"cost": 1}},
    "plans": {"free": {"limits": [{"name": "hourly", "quota": "3/hour"}]}},
}


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url = str(request.getfixturevalue("redis_url"))
    redis.Redis.from_url(url).flushall()
    return url


@pytest.fixture
def ledger_path(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def setup(store_url: str, ledger_path: str) -> Iterator[tuple[Tollway, Policies, FakeClock]]:
    clock = FakeClock(NOW)
    with Tollway(V1_DOC, store_url, clock=clock, policy_from=PolicyWatch(check_every=0)) as tw:
        ledger = open_ledger(ledger_path)
        try:
            yield tw, Policies(ledger, tw.store, clock), clock
        finally:
            ledger.close()


def allowed(tw: Tollway, subject: str, n: int) -> list[bool]:
    return [tw.acquire(subject, "call").allowed for _ in range(n)]


# ------------------------------------------------------------------------ upload and diff


def test_an_invalid_upload_reports_every_problem_and_stores_nothing(ledger_path: str) -> None:
    policies = Policies(open_ledger(ledger_path), Tollway(V1_DOC).store)
    bad = """
[operations]
call = { cost = 0 }
[plans.free]
limits = [{ name = "h", quota = "3/hr" }, { name = "r", rate = "fast" }]
"""
    with pytest.raises(PolicyError) as caught:
        policies.upload(bad, "toml", by="ops")
    paths = {issue.path for issue in caught.value.issues}
    assert {"operations.call.cost", "plans.free.limits[0].quota", "plans.free.limits[1].rate"} <= (
        paths
    )
    with pytest.raises(PolicyError, match="invalid JSON"):
        policies.upload("{", "json", by="ops")
    with pytest.raises(InvalidArgumentError, match="format"):
        policies.upload(V1, "ini", by="ops")
    with pytest.raises(InvalidArgumentError, match="at most 1000000"):
        policies.upload("#" * 1_000_001, by="ops")
    with pytest.raises(InvalidArgumentError, match="by"):
        policies.upload(V1, by="")
    assert policies.versions() == []


def test_upload_is_idempotent_on_the_document_hash(ledger_path: str) -> None:
    policies = Policies(open_ledger(ledger_path), Tollway(V1_DOC).store)
    first = policies.upload(V1, by="ops", note="first")
    again = policies.upload(V1 + "\n# a comment changes no key\n", by="other")
    as_json = policies.upload(json.dumps(_doc(V1)), "json", by="other")
    assert first.version == again.version == as_json.version
    assert again.created_by == "ops" and again.note == "first"
    assert [v.version for v in policies.versions()] == [first.version]
    assert policies.get(first.version).body == V1
    with pytest.raises(UnknownNameError):
        policies.get("0" * 12)
    with pytest.raises(InvalidArgumentError, match="12 hex digits"):
        policies.get("../etc")


def _doc(text: str) -> Any:
    return tomllib.loads(text)


def test_diff_names_each_changed_key_path(ledger_path: str) -> None:
    policies = Policies(open_ledger(ledger_path), Tollway(V1_DOC).store)
    a = policies.upload(V1, by="ops").version
    b = policies.upload(
        V2 + '\n[plans.team]\nlimits = [{ name = "d", quota = "9/day" }]\n', by="ops"
    )
    changes = [(c.path, c.before, c.after) for c in policies.diff(a, b.version)]
    assert changes == [
        ("plans.free.limits[0].quota", "3/hour", "5/hour"),
        ("plans.pro.limits[0].quota", "10/hour", "2/hour"),
        ("plans.team", None, {"limits": [{"name": "d", "quota": "9/day"}]}),
    ]
    assert policies.diff(a, a) == []


# ------------------------------------------------------------------- activate and roll back


def test_activate_and_roll_back(setup: tuple[Tollway, Policies, FakeClock]) -> None:
    tw, policies, _ = setup
    start = tw.policy.version
    v1, v2 = policies.upload(V1, by="ops").version, policies.upload(V2, by="ops").version
    assert tw.acquire("a", "call").policy_version == start  # nothing active yet
    before, after = policies.activate(v1, by="ops")
    assert before is None and after.version == v1 and after.seq == 1
    assert allowed(tw, "a", 3) == [True, True, False]  # 3/hour, one taken above
    assert tw.acquire("a", "call").policy_version == v1
    policies.activate(v2, by="ops", note="more for free")
    decisions = [tw.acquire("a", "call") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]  # 5/hour: the count stays
    assert {d.policy_version for d in decisions} == {v2}
    assert decisions[0].to_dict()["policy_version"] == v2
    assert tw.usage("a").limits[0].limit == 5
    before, after = policies.rollback(by="ops")
    assert before.version == v2 and after.version == v1 and after.prior is None
    assert tw.acquire("b", "call").policy_version == v1
    assert allowed(tw, "b", 3) == [True, True, False]  # the old decisions again
    assert policies.active() == after
    assert [r.seq for r in policies.history()] == [3, 2, 1]
    with pytest.raises(InvalidArgumentError, match="no earlier activation"):
        policies.rollback(by="ops")


def test_activation_errors(setup: tuple[Tollway, Policies, FakeClock]) -> None:
    _, policies, _ = setup
    v1 = policies.upload(V1, by="ops").version
    with pytest.raises(UnknownNameError, match="not uploaded"):
        policies.activate("a" * 12, by="ops")
    with pytest.raises(InvalidArgumentError, match="needs a version active for everyone"):
        policies.activate(v1, Cohort(plan="pro"), by="ops")
    with pytest.raises(InvalidArgumentError, match="exactly one of"):
        Cohort(plan="pro", percent=5)
    with pytest.raises(InvalidArgumentError, match="percent"):
        Cohort(percent=0)
    assert policies.active() is None


def test_a_bad_publication_keeps_the_policy_in_force(
    setup: tuple[Tollway, Policies, FakeClock],
) -> None:
    tw, policies, _ = setup
    v1 = policies.upload(V1, by="ops").version
    policies.activate(v1, by="ops")
    assert tw.acquire("a", "call").policy_version == v1
    forged = json.dumps({"format": "toml", "body": V2})  # V2's text under another version
    other = "b" * 12
    active = json.dumps({"seq": 9, "version": other, "pilot": None, "cohort": None})
    tw.driver.run(_set(((body_key(other), forged), (ACTIVE_KEY, active))))
    assert tw.acquire("a", "call").policy_version == v1
    tw.driver.run(_set(((ACTIVE_KEY, "{not json"),)))
    assert tw.acquire("a", "call").policy_version == v1
    assert policies.publish() is not None  # the ledger's state, put back
    assert tw.acquire("a", "call").policy_version == v1


def _set(pairs: tuple[tuple[str, str], ...]) -> Any:
    from tollway.engine.requests import Control

    yield Control(SetValues(pairs))


# ---------------------------------------------------------------------------------- pilots


def test_a_pilot_cohort_of_subjects_gets_the_new_limits_and_no_one_else(
    setup: tuple[Tollway, Policies, FakeClock],
) -> None:
    tw, policies, _ = setup
    v1, v2 = policies.upload(V1, by="ops").version, policies.upload(V2, by="ops").version
    policies.activate(v1, by="ops")
    policies.activate(v2, Cohort(subjects=["p1", "p2"]), by="ops")
    assert allowed(tw, "p1", 6) == [True] * 5 + [False]
    assert allowed(tw, "other", 4) == [True] * 3 + [False]
    assert tw.acquire("p2", "call").policy_version == v2
    assert tw.acquire("other", "call").policy_version == v1
    assert tw.usage("p1").limits[0].limit == 5 and tw.usage("other").limits[0].limit == 3
    policies.rollback(by="ops")  # the pilot ends: everyone on v1 again
    assert tw.acquire("p2", "call").policy_version == v1
    assert allowed(tw, "p2", 3) == [True, False, False]  # 1 + 1 taken, 3/hour


def test_a_pilot_by_plan(setup: tuple[Tollway, Policies, FakeClock]) -> None:
    tw, policies, _ = setup
    v1, v2 = policies.upload(V1, by="ops").version, policies.upload(V2, by="ops").version
    policies.activate(v1, by="ops")
    tw.acquire("warm", "call")  # the plans exist in the process's policy now
    tw.assign("payer", "pro")
    policies.activate(v2, Cohort(plan="pro"), by="ops")
    assert allowed(tw, "payer", 3) == [True, True, False]  # v2's pro: 2/hour
    assert tw.acquire("payer", "call").policy_version == v2
    assert allowed(tw, "free1", 4) == [True, True, True, False]  # v1's free: 3/hour
    assert tw.acquire("free1", "call").policy_version == v1


def test_a_pilot_by_percentage_is_stable(setup: tuple[Tollway, Policies, FakeClock]) -> None:
    tw, policies, _ = setup
    v1, v2 = policies.upload(V1, by="ops").version, policies.upload(V2, by="ops").version
    policies.activate(v1, by="ops")
    policies.activate(v2, Cohort(percent=30), by="ops")
    subjects = [f"s{n}" for n in range(60)]

    def expected(subject: str) -> bool:
        head = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big")
        return head < 0.30 * 2**64

    got = {s: tw.acquire(s, "call").policy_version == v2 for s in subjects}
    assert got == {s: expected(s) for s in subjects}
    assert 5 < sum(got.values()) < 30
    again = {s: tw.acquire(s, "call").policy_version == v2 for s in subjects}
    assert again == got


def test_shadow_evaluation_counts_what_the_pilot_would_deny(
    store_url: str, ledger_path: str
) -> None:
    clock = FakeClock(NOW)
    with tw_for(store_url, clock, shadow_every=1) as tw, open_ledger(ledger_path) as ledger:
        policies = Policies(ledger, tw.store, clock)
        v1 = policies.upload(V1, by="ops").version
        strict = V1.replace('"3/hour"', '"1/hour"')
        v3 = policies.upload(strict, by="ops").version
        policies.activate(v1, by="ops")
        policies.activate(v3, Cohort(subjects=["pilot"]), by="ops")
        # Outside the cohort: v1 decides (3/hour); v3 (1/hour) would deny the 2nd and 3rd.
        assert allowed(tw, "out", 4) == [True, True, True, False]
        report = policies.shadow_report(v3)
        assert report == {"version": v3, "evaluated": 4, "would_deny": {"hourly": 3}}
        assert tw.shadow_report(v3) == report
        assert tw.usage("out").limits[0].used == 3  # the shadow consumed nothing
        assert policies.shadow_report(v1)["evaluated"] == 0


def test_shadow_evaluation_is_sampled(ledger_path: str) -> None:
    clock = FakeClock(NOW)
    with tw_for("memory://", clock, shadow_every=5) as tw, open_ledger(ledger_path) as ledger:
        policies = Policies(ledger, tw.store, clock)
        v1 = policies.upload(V1, by="ops").version
        v2 = policies.upload(V2, by="ops").version
        policies.activate(v1, by="ops")
        policies.activate(v2, Cohort(subjects=["pilot"]), by="ops")
        for n in range(20):
            tw.acquire(f"u{n}", "call")
        assert policies.shadow_report(v2)["evaluated"] == 4


@pytest.mark.postgres
def test_policies_on_postgres(billing_ledger_url: str) -> None:
    clock = FakeClock(NOW)
    with tw_for("memory://", clock) as tw, open_ledger(billing_ledger_url) as ledger:
        policies = Policies(ledger, tw.store, clock)
        v1, v2 = policies.upload(V1, by="ops").version, policies.upload(V2, by="ops").version
        policies.activate(v1, by="ops")
        policies.activate(v2, Cohort(subjects=["p"]), by="ops")
        assert tw.acquire("p", "call").policy_version == v2
        assert policies.active() is not None
        policies.rollback(by="ops")
        assert tw.acquire("p", "call").policy_version == v1
        assert {v.version for v in policies.versions()} == {v1, v2}


# ------------------------------------------------------ other processes, within a second


def _follower(url: str, index: int, barrier: Any, results: Any) -> None:
    try:
        with Tollway(V1_DOC, url, policy_from="ledger") as tw:
            first = tw.acquire(f"w{index}", "call").policy_version
            barrier.wait()
            redis.Redis.from_url(url).set(f"test:ready:{index}", "1")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                version = tw.acquire(f"w{index}", "call").policy_version
                if version != first:
                    results.put((index, version, time.time()))
                    return
            results.put((index, None, time.time()))
    except BaseException as exc:
        results.put(exc)


def test_four_other_processes_see_an_activation_within_a_second(
    redis_url: str, ledger_path: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    found: list[Any] = []
    runner = threading.Thread(
        target=lambda: found.extend(run_together(_follower, [(redis_url, i) for i in range(4)]))
    )
    with Tollway(V1_DOC, redis_url) as tw, open_ledger(ledger_path) as ledger:
        policies = Policies(ledger, tw.store)
        v2 = policies.upload(V2, by="ops").version
        runner.start()
        deadline = time.monotonic() + 60
        while len(client.keys("test:ready:*")) < 4:
            assert time.monotonic() < deadline, "the followers did not start"
            time.sleep(0.01)
        at = time.time()
        policies.activate(v2, by="ops")
        runner.join(timeout=60)
    assert sorted(i for i, _, _ in found) == [0, 1, 2, 3]
    assert {version for _, version, _ in found} == {v2}
    lags = [seen - at for _, _, seen in found]
    assert max(lags) < 1.0, lags


# ------------------------------------------------------------------ the async face, a cluster


async def test_the_async_face_follows_activations_and_pilots(
    store_url: str, ledger_path: str
) -> None:
    from tollway import AsyncTollway

    clock = FakeClock(NOW)
    watch = PolicyWatch(check_every=0, shadow_every=1)
    tw = AsyncTollway(V1_DOC, store_url, clock=clock, policy_from=watch)
    try:
        with open_ledger(ledger_path) as ledger, Tollway(V1_DOC, store_url) as admin:
            # The admin side writes through a sync client of the same store (memory: its own).
            store = tw.store.sync if store_url == "memory://" else admin.store  # type: ignore[attr-defined]
            policies = Policies(ledger, store, clock)
            v1, v2 = policies.upload(V1, by="ops").version, policies.upload(V2, by="ops").version
            policies.activate(v1, by="ops")
            assert (await tw.acquire("a", "call")).policy_version == v1
            policies.activate(v2, Cohort(subjects=["p"]), by="ops")
            got = [(await tw.acquire("p", "call")).allowed for _ in range(6)]
            assert got == [True] * 5 + [False]
            assert (await tw.usage("p")).limits[0].limit == 5
            assert (await tw.acquire("a", "call")).policy_version == v1
            assert (await tw.shadow_report(v2))["evaluated"] == 1
            policies.rollback(by="ops")
            assert (await tw.acquire("p", "call")).policy_version == v1
    finally:
        await tw.aclose()


def test_activation_on_a_cluster(
    redis_cluster_url: str, redis_cluster_client: Any, ledger_path: str
) -> None:
    clock = FakeClock(NOW)
    watch = PolicyWatch(check_every=0, shadow_every=1)
    with (
        Tollway(V1_DOC, redis_cluster_url, clock=clock, policy_from=watch) as tw,
        open_ledger(ledger_path) as ledger,
    ):
        policies = Policies(ledger, tw.store, clock)
        v1 = policies.upload(V1, by="ops").version
        v3 = policies.upload(V1.replace('"3/hour"', '"1/hour"'), by="ops").version
        policies.activate(v1, by="ops")
        policies.activate(v3, Cohort(percent=50), by="ops")
        subjects = [f"c{n}" for n in range(20)]
        versions = {s: tw.acquire(s, "call").policy_version for s in subjects}
        assert set(versions.values()) == {v1, v3}
        for s in subjects:
            tw.acquire(s, "call")
        report = policies.shadow_report(v3)
        outside = sum(1 for v in versions.values() if v == v1)
        assert report["evaluated"] == 2 * outside
        assert report["would_deny"] == {"hourly": outside}


def test_a_watched_client_with_the_store_away_still_decides(
    make_redis_server: Any, ledger_path: str
) -> None:
    server = make_redis_server()
    clock = FakeClock(NOW)
    watch = PolicyWatch(check_every=0, shadow_every=1)
    with (
        Tollway(V1_DOC, server.url, clock=clock, policy_from=watch) as tw,
        open_ledger(ledger_path) as ledger,
    ):
        policies = Policies(ledger, tw.store, clock)
        v1, v2 = policies.upload(V1, by="ops").version, policies.upload(V2, by="ops").version
        policies.activate(v1, by="ops")
        policies.activate(v2, Cohort(plan="pro"), by="ops")
        assert tw.acquire("a", "call").policy_version == v1
        server.kill()
        for subject in ("a", "never-seen"):
            decision = tw.acquire(subject, "call")
            assert decision.degraded and decision.allowed  # on_error = "open"
            assert decision.policy_version == v1  # the version in force, kept


def test_an_activation_stays_inside_its_store_prefix(redis_url: str, ledger_path: str) -> None:
    redis.Redis.from_url(redis_url).flushall()
    clock = FakeClock(NOW)
    watch = PolicyWatch(check_every=0)
    acme = {**V1_DOC, "store": {"url": redis_url, "prefix": "acme"}}
    umbrella = {**V1_DOC, "store": {"url": redis_url, "prefix": "umbrella"}}
    with (
        Tollway(acme, clock=clock, policy_from=watch) as a,
        Tollway(umbrella, clock=clock, policy_from=watch) as u,
        open_ledger(ledger_path) as ledger,
    ):
        policies = Policies(ledger, a.store, clock)
        v2 = policies.upload(V2, by="ops").version
        policies.activate(v2, by="ops")
        assert a.acquire("s", "call").policy_version == v2
        assert u.acquire("s", "call").policy_version == u.policy.version != v2
    keys = {key.decode() for key in redis.Redis.from_url(redis_url).scan_iter("*policy*")}
    assert keys and all(key.startswith("acme:tw:policy:") for key in keys)
