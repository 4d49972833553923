"""`AsyncApiKeys` on an `AsyncTollway` (memory, real Redis standalone and a 3-master Cluster):
the same flows as `ApiKeys`, awaited; records are interchangeable between the two faces and
with records written by earlier versions; the scripts go through EVALSHA and survive a
SCRIPT FLUSH."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tollway import AsyncTollway, Tollway
from tollway.errors import ConfigurationError, InvalidArgumentError, StoreError, UnknownNameError
from tollway.keys import SECRET_ENV, ApiKeys, AsyncApiKeys, index_key, record_key
from tollway.stores import AsyncMemoryStore
from tollway.stores.memory import MemoryStore
from tollway.testing import FakeClock

SECRET = b"k" * 32
POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1}},
    "plans": {"free": {"limits": [{"name": "daily", "quota": "10/day"}]}},
}


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(SECRET_ENV, raising=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000)


@pytest.fixture(params=["memory", "redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        request.getfixturevalue("redis_client")  # flushed
        return str(request.getfixturevalue("redis_url"))
    request.getfixturevalue("redis_cluster_client")
    return str(request.getfixturevalue("redis_cluster_url"))


@pytest.fixture
async def atw(url: str, clock: FakeClock) -> AsyncIterator[AsyncTollway]:
    async with AsyncTollway(POLICY, url, clock=clock) as tw:
        yield tw


async def test_the_whole_lifecycle_awaited(atw: AsyncTollway, clock: FakeClock) -> None:
    keys = AsyncApiKeys(atw, secret=SECRET)
    first = await keys.create("alice", label="laptop")
    assert await keys.verify(first.key) == "alice"
    assert await keys.verify(first.key[:-1] + "x") is None
    assert await keys.verify("not a key") is None
    clock.advance(5)
    second = await keys.create("alice", expires_in=60)
    listed = await keys.list("alice")
    assert [info.key_id for info in listed] == [first.key_id, second.key_id]
    assert (await keys.get(first.key_id)).label == "laptop"

    revoked = await keys.revoke(second.key_id)
    assert revoked.state == "revoked"
    assert await keys.verify(second.key) is None

    new = await keys.rotate(first.key_id, overlap=10)
    assert await keys.verify(new.key) == "alice"
    clock.advance(10)
    assert await keys.verify(first.key) is None
    states = {info.key_id: info.state for info in await keys.list("alice")}
    assert states == {first.key_id: "expired", second.key_id: "revoked", new.key_id: "active"}
    assert await keys.list("bob") == []


async def test_async_errors_are_the_sync_ones(atw: AsyncTollway) -> None:
    keys = AsyncApiKeys(atw, secret=SECRET)
    with pytest.raises(UnknownNameError, match="abcdefgh"):
        await keys.revoke("abcdefgh")
    with pytest.raises(InvalidArgumentError, match="key id"):
        await keys.get("nope")
    with pytest.raises(InvalidArgumentError, match="subject"):
        await keys.create("")
    revoked = await keys.create("alice")
    await keys.revoke(revoked.key_id)
    with pytest.raises(InvalidArgumentError, match="is revoked"):
        await keys.rotate(revoked.key_id, overlap=1)
    assert [info.key_id for info in await keys.list("alice")] == [revoked.key_id]


async def test_a_key_from_one_face_verifies_on_the_other(url: str, clock: FakeClock) -> None:
    if url == "memory://":
        sync = Tollway(POLICY, url, clock=clock)
        store = sync.store
        assert isinstance(store, MemoryStore)
        atw = AsyncTollway(POLICY, AsyncMemoryStore(store), clock=clock)
    else:
        sync = Tollway(POLICY, url, clock=clock)
        atw = AsyncTollway(POLICY, url, clock=clock)
    keys, akeys = ApiKeys(sync, secret=SECRET), AsyncApiKeys(atw, secret=SECRET)
    made_sync = keys.create("alice")
    made_async = await akeys.create("alice")
    assert await akeys.verify(made_sync.key) == "alice"
    assert keys.verify(made_async.key) == "alice"
    assert {i.key_id for i in keys.list("alice")} == {made_sync.key_id, made_async.key_id}
    await akeys.revoke(made_sync.key_id)
    assert keys.verify(made_sync.key) is None
    sync.close()
    await atw.aclose()


async def test_records_written_by_earlier_versions_still_verify(
    redis_url: str, redis_client: Any, clock: FakeClock
) -> None:
    """The layout is unchanged: a record written field by field as tollway 0.x wrote it."""
    key = "tw_abcdefgh_" + "A" * 43
    digest = hmac.new(SECRET, key.encode(), hashlib.sha256).hexdigest()
    redis_client.hset(
        "tw:key:{abcdefgh}",
        mapping={"digest": digest, "subject": "acct_1", "created_at": "1700000000000000"},
    )
    redis_client.sadd("tw:{acct_1}:keys", "abcdefgh")
    async with AsyncTollway(POLICY, redis_url, clock=clock) as atw:
        assert await AsyncApiKeys(atw, secret=SECRET).verify(key) == "acct_1"
    with Tollway(POLICY, redis_url, clock=clock) as tw:
        keys = ApiKeys(tw, secret=SECRET)
        assert keys.verify(key) == "acct_1"
        assert [info.key_id for info in keys.list("acct_1")] == ["abcdefgh"]
        keys.revoke("abcdefgh")
    assert set(redis_client.hgetall("tw:key:{abcdefgh}")) == {
        b"digest",
        b"subject",
        b"created_at",
        b"revoked_at",
    }

    memory = Tollway(POLICY, "memory://", clock=clock)
    store = memory.store
    assert isinstance(store, MemoryStore)
    fields = {"digest": digest, "subject": "acct_1", "created_at": "1700000000000000"}
    store.records[record_key("abcdefgh")] = json.dumps(fields)
    store.records[index_key("acct_1")] = json.dumps(["abcdefgh"])
    assert ApiKeys(memory, secret=SECRET).verify(key) == "acct_1"
    atw = AsyncTollway(POLICY, AsyncMemoryStore(store), clock=clock)
    assert await AsyncApiKeys(atw, secret=SECRET).verify(key) == "acct_1"


async def test_the_key_scripts_are_loaded_again_after_a_script_flush(
    redis_url: str, redis_client: Any
) -> None:
    redis_client.config_resetstat()
    with Tollway(POLICY, redis_url) as tw:
        keys = ApiKeys(tw, secret=SECRET)
        issued = keys.create("alice")
        redis_client.script_flush()
        assert keys.verify(keys.create("alice").key) == "alice"
        redis_client.script_flush()
        keys.revoke(issued.key_id)
    async with AsyncTollway(POLICY, redis_url) as atw:
        akeys = AsyncApiKeys(atw, secret=SECRET)
        redis_client.script_flush()
        made = await akeys.create("bob")
        redis_client.script_flush()
        await akeys.rotate(made.key_id, overlap=0)
        assert await akeys.verify(made.key) is None
    # EVALSHA, never EVAL: the scripts are cached on the server by their sha.
    assert redis_client.info("commandstats").get("cmdstat_eval") is None


def test_each_face_refuses_the_other_client_and_says_which_to_use() -> None:
    with pytest.raises(ConfigurationError, match=r"AsyncApiKeys\(tw\)"):
        ApiKeys(AsyncTollway(POLICY), secret=SECRET)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"ApiKeys\(tw\)"):
        AsyncApiKeys(Tollway(POLICY), secret=SECRET)  # type: ignore[arg-type]


async def test_a_dead_store_is_an_error_not_a_refusal(make_redis_server: Any) -> None:
    server = make_redis_server()
    atw = AsyncTollway({**POLICY, "store": {"timeout_ms": 200}}, server.url)
    keys = AsyncApiKeys(atw, secret=SECRET)
    issued = await keys.create("alice")
    server.kill()
    with pytest.raises(StoreError):
        await keys.verify(issued.key)
    assert await keys.verify("not a key") is None
    await atw.aclose()
