"""The two Redis stores run one set of flows: what the sync face can read, the async face reads
the same (on a real Redis: standalone and a 3-master Cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tollway import AsyncTollway, Tollway
from tollway.stores.redis import AsyncRedisStore, RedisStore

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1}},
    "plans": {"free": {"limits": [{"name": "daily", "quota": "100/day"}]}},
}


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(params=["redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_client")
        return str(request.getfixturevalue("redis_url"))
    request.getfixturevalue("redis_cluster_client")
    return str(request.getfixturevalue("redis_cluster_url"))


async def test_both_faces_read_the_same_holds_plan_and_deletes(url: str) -> None:
    with Tollway(POLICY, url) as tw:
        async with AsyncTollway(POLICY, url) as atw:
            sync, aio = tw.store, atw.store
            assert isinstance(sync, RedisStore) and isinstance(aio, AsyncRedisStore)
            held = tw.reserve("acct_1", "geocode", 7)
            await atw.reserve("acct_1", "geocode", 5)
            holds = sync.held("acct_1")
            assert list(holds.values()) == [12]
            assert await aio.held("acct_1") == holds
            assert sync.held("acct_2") == await aio.held("acct_2") == {}
            held.release()
            assert list((await aio.held("acct_1")).values()) == [5]

            await aio.assign("acct_1", "free")
            assert sync.assigned("acct_1") == await aio.assigned("acct_1") == "free"
            sync.assign("acct_1", None)
            assert await aio.assigned("acct_1") is None
            assert await aio.delete("acct_1", []) == sync.delete("acct_1", []) == 0
