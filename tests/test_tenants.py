"""``[store] prefix``: two deployments share one Redis (standalone, and a real 3-master
cluster) without seeing each other's counters, plans, grants, API keys, request ids or event
streams; a drain with a prefix drains only its own. No prefix: the keys as they always were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tollway import Tollway
from tollway.errors import PolicyError
from tollway.keys import ApiKeys
from tollway.keyspace import check_prefix, prefixed
from tollway.metering.drain import Drain
from tollway.metering.ledger import open_ledger
from tollway.metering.reconcile import store_subjects
from tollway.metering.streams import connect
from tollway.policy.parse import build_policy

SECRET = b"s" * 32
CENT = 10_000


def policy(prefix: str | None, ledger: str) -> dict[str, Any]:
    # A generous timeout: a cluster client's first connection is slow on a loaded machine.
    store: dict[str, Any] = {"timeout_ms": 5000}
    if prefix is not None:
        store["prefix"] = prefix
    return {
        "store": store,
        "defaults": {"plan": "free"},
        "operations": {"call": {"price": "0.01 USD"}},
        "plans": {
            "free": {"limits": [{"name": "daily", "quota": "3/day"}]},
            "pro": {
                "limits": [
                    {"name": "daily", "quota": "100/day"},
                    {"credits": "USD", "operations": ["call"]},
                ]
            },
        },
        "ledger": {"url": ledger, "partitions": 4},
    }


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(params=["standalone", "cluster"])
def shared(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """A store URL and a raw client on it (flushed)."""
    if request.param == "standalone":
        return str(request.getfixturevalue("redis_url")), request.getfixturevalue("redis_client")
    url = str(request.getfixturevalue("redis_cluster_url"))
    return url, request.getfixturevalue("redis_cluster_client")


def all_keys(client: Any) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(match="*", count=1000))


def test_two_prefixes_on_one_redis_see_nothing_of_each_other(
    shared: tuple[str, Any], tmp_path: Path
) -> None:
    url, client = shared
    acme = Tollway(policy("acme", f"sqlite:///{tmp_path / 'acme.db'}"), url)
    beta = Tollway(policy("beta", f"sqlite:///{tmp_path / 'beta.db'}"), url)
    try:
        # Counters: acme's alice spends her quota; beta's alice (the same name) has all of it.
        assert [acme.acquire("alice", "call").allowed for _ in range(4)] == [1, 1, 1, 0]
        assert beta.usage("alice").limit("daily").used == 0
        assert beta.acquire("alice", "call").allowed
        assert acme.usage("alice").limit("daily").used == 3
        # Plans and grants.
        acme.assign("bob", "pro")
        assert beta.plan_of("bob") == "free" and acme.plan_of("bob") == "pro"
        assert acme.driver.grant("bob", "USD", "g1", 5 * CENT) is True
        assert beta.driver.balance("bob", "USD")[0] == 0
        assert acme.driver.balance("bob", "USD")[0] == 5 * CENT
        # Request ids: the same id is new in the other namespace.
        assert acme.acquire("carol", "call", id="r-1").allowed
        first = beta.acquire("carol", "call", id="r-1")
        assert first.allowed and not first.duplicate
        # API keys: acme's key is unknown to beta.
        issued = ApiKeys(acme, secret=SECRET).create("dave")
        assert ApiKeys(acme, secret=SECRET).verify(issued.key) == "dave"
        assert ApiKeys(beta, secret=SECRET).verify(issued.key) is None
        assert ApiKeys(beta, secret=SECRET).list("dave") == []
        # The store's subjects, as reconcile lists them: each its own.
        assert set(store_subjects(acme.store)) >= {"alice", "bob", "carol"}
        assert set(store_subjects(beta.store)) == {"alice", "carol"}
    finally:
        acme.close()
        beta.close()
    # Every key is in one of the two namespaces; none unprefixed.
    keys = all_keys(client)
    assert keys and all(k.startswith(("acme:tw:", "beta:tw:")) for k in keys), keys
    assert any(k.startswith("acme:tw:{alice}") for k in keys)
    assert any(k.startswith("acme:tw:key:{") for k in keys)


def test_a_prefixed_drain_drains_only_its_own_streams(
    shared: tuple[str, Any], tmp_path: Path
) -> None:
    url, client = shared
    docs = {
        name: policy(prefix, f"sqlite:///{tmp_path / f'{name}.db'}")
        for name, prefix in (("acme", "acme"), ("beta", "beta"), ("plain", None))
    }
    made = {name: Tollway(doc, url) for name, doc in docs.items()}
    try:
        for n, tw in enumerate(made.values()):
            for i in range(n + 1):  # acme 1 event, beta 2, plain 3: on the same subjects
                assert tw.acquire(f"s{i}", "call").allowed
        for name, doc in docs.items():
            pol = build_policy(doc)
            assert pol.ledger.url is not None
            raw, cluster = connect(url)
            with open_ledger(pol.ledger.url) as ledger:
                drain = Drain(raw, ledger, cluster=cluster, policy=pol, block_ms=0)
                drain.run(until_idle=True)
                drain.close()
                got = sorted(ledger.subjects(0))
            raw.close()
            expected = {"acme": ["s0"], "beta": ["s0", "s1"], "plain": ["s0", "s1", "s2"]}
            assert got == expected[name], name
    finally:
        for tw in made.values():
            tw.close()
    keys = all_keys(client)
    # The unprefixed deployment's keys are where they always were.
    assert any(k == "tw:{s2}" for k in keys)
    assert not any(k.startswith("tw:") and "acme" in k for k in keys)


def test_a_prefix_keeps_the_subjects_slot_on_a_cluster(redis_cluster_client: Any) -> None:
    slot = redis_cluster_client.keyslot
    for subject in ("alice", "provider:here", "x{y}z"):
        from tollway.stores.redis_codec import state_key

        assert slot(state_key(subject, "acme")) == slot(state_key(subject))


def test_no_prefix_leaves_every_key_as_it_was() -> None:
    from tollway.events import stream_key
    from tollway.stores.key_ops import index_key, record_key
    from tollway.stores.redis_codec import state_key, subject_of

    assert state_key("alice") == "tw:{alice}"
    assert state_key("alice", "acme") == "acme:tw:{alice}"
    assert record_key("k1", "acme") == "acme:tw:key:{k1}"
    assert index_key("alice", "acme") == "acme:tw:{alice}:keys"
    assert stream_key("alice", cluster=False, partitions=4, prefix="acme").startswith(
        "acme:tw:events:"
    )
    assert subject_of("acme:tw:{alice}", "acme") == "alice"
    assert subject_of("acme:tw:{alice}") is None  # not an unprefixed subject's hash
    assert subject_of("tw:{alice}", "acme") is None
    assert prefixed("", "tw:{a}") == "tw:{a}"


@pytest.mark.parametrize(
    "bad", ["", "a:b", "a{b}", "x" * 33, "acme\n", "ac me", "é", "a*", 7, True]
)
def test_a_bad_prefix_is_a_policy_error_naming_the_key(bad: object) -> None:
    with pytest.raises(PolicyError) as caught:
        build_policy({"store": {"prefix": bad}})
    assert "store.prefix" in str(caught.value)


def test_a_good_prefix_is_accepted() -> None:
    for good in ("acme", "A-1_b", "x" * 32, "tw"):
        assert check_prefix(good) == good
        assert build_policy({"store": {"prefix": good}}).store.prefix == good


async def test_the_async_face_keeps_to_its_prefix(shared: tuple[str, Any], tmp_path: Path) -> None:
    from tollway import AsyncTollway
    from tollway.keys import AsyncApiKeys

    url, client = shared
    async with AsyncTollway(policy("acme", f"sqlite:///{tmp_path / 'a.db'}"), url) as acme:
        assert [(await acme.acquire("alice", "call")).allowed for _ in range(4)] == [1, 1, 1, 0]
        await acme.assign("bob", "pro")
        issued = await AsyncApiKeys(acme, secret=SECRET).create("bob")
        assert await AsyncApiKeys(acme, secret=SECRET).verify(issued.key) == "bob"
    with Tollway(policy(None, f"sqlite:///{tmp_path / 'p.db'}"), url) as plain:
        assert plain.acquire("alice", "call").allowed  # its own alice, with its own quota
        assert ApiKeys(plain, secret=SECRET).verify(issued.key) is None
    keys = all_keys(client)
    assert any(k.startswith("acme:tw:{alice}") for k in keys)
    assert {k for k in keys if not k.startswith("acme:")} >= {"tw:{alice}"}
    assert not any(k.startswith("tw:key:") for k in keys)
