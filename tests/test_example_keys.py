"""``examples/fastapi_redis_keys.py``, run as written against the real redis-server of the test
setup: the lifespan opens and closes the `AsyncTollway`; a request without a key is 401; two
keys of one account share one quota (the quota belongs to the key's owner)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tollway import AsyncTollway
from tollway.keys import SECRET_ENV, AsyncApiKeys

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_redis_keys.py"
SECRET = "example-secret-of-at-least-16-bytes"


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(SECRET_ENV, raising=False)


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_redis_keys", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app's ASGI lifespan (startup before, shutdown after) around an httpx client."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def send(message: dict[str, str]) -> None:
        await outbox.put(message)

    task = asyncio.create_task(app({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


async def issue(redis_url: str, *subjects: str) -> list[str]:
    async with AsyncTollway(example().POLICY, redis_url) as tw:
        keys = AsyncApiKeys(tw, secret=SECRET)
        return [(await keys.create(subject)).key for subject in subjects]


async def test_two_keys_of_one_account_share_its_quota(
    redis_url: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, other = await issue(redis_url, "acct_1", "acct_1", "acct_2")
    policy = json.loads(json.dumps(example().POLICY))
    policy["plans"]["free"]["limits"][1]["quota"] = "3/hour"  # small, to reach it
    monkeypatch.setenv("TOLLWAY_STORE", redis_url)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    app = example().create_app(policy=policy)

    async with running(app) as http:  # the lifespan: ping at startup, aclose at shutdown
        anonymous = await http.get("/v1/geocode", params={"q": "Paris"})
        health = await http.get("/health")
        by_key = [
            await http.get("/v1/geocode", params={"q": "Paris"}, headers={"X-API-Key": key})
            for key in (first, second, first, second)
        ]
        bearer = await http.get(
            "/v1/geocode", params={"q": "Rome"}, headers={"Authorization": f"Bearer {other}"}
        )
        forged = await http.get("/v1/geocode", params={"q": "x"}, headers={"X-API-Key": first[:-1]})
        serving = len(redis_client.client_list())
    # The lifespan closed the app's AsyncTollway: its connections to Redis are gone.
    assert len(redis_client.client_list()) < serving

    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "an API key is required" in anonymous.json()["detail"]
    assert health.status_code == 200
    # Two keys, one owner, one quota of 3: the fourth request is refused, whichever key.
    assert [answer.status_code for answer in by_key] == [200, 200, 200, 429]
    assert by_key[0].json() == {"query": "Paris", "result": "48.8566,2.3522"}
    assert by_key[3].json()["violated-policies"] == ["hourly"]
    assert bearer.status_code == 200  # another account has a quota of its own
    assert forged.status_code == 401
    # The counts are in Redis, under the owner (not the key).
    assert redis_client.exists("tw:{acct_1}") and redis_client.exists("tw:{acct_2}")
    assert not redis_client.exists("tw:{ip:203.0.113.7}")
    async with AsyncTollway(policy, redis_url) as fresh:
        assert (await fresh.usage("acct_1")).limit("hourly").used == 3
