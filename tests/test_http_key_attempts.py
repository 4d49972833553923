"""Failed API-key attempts, limited per client address (issue 11, item 9), over real HTTP:
uvicorn serving the ASGI middleware and the FastAPI dependency, waitress serving the WSGI
middleware, on the memory store and a real Redis. A flood of wrong keys from one address is
answered 401 N times, then 429 (valid keys from that address too, so a 200 cannot tell a
guesser which key is right); another address is not affected; successful requests never
count; after the window the valid key works again. The count is the store's, so it holds
across processes (two apps with their own tollways on one Redis)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from http_support import uvicorn_serving, waitress_serving
from tollway import AsyncTollway, Tollway
from tollway.asgi import TollwayMiddleware, decide_attempt
from tollway.fastapi import install, limit
from tollway.http.attempts import SUBJECT_PREFIX, KeyAttempts
from tollway.http.gate import Gate, KeyAttempt, KeyCheck, Verdict
from tollway.http.gate import Request as GateRequest
from tollway.keys import SECRET_ENV, ApiKeys, AsyncApiKeys
from tollway.testing import FakeClock
from tollway.wsgi import TollwayWSGIMiddleware

SECRET = "test-secret-of-at-least-16-bytes"
FAILURES = 3
START = 1_700_002_800.0  # on the hour: the window of the test is a whole hour
POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1, "endpoints": ["GET /v1/geocode"]}},
    "plans": {"free": {"limits": [{"name": "hourly", "quota": "100/hour"}]}},
    "keys": {"failed_attempts": f"{FAILURES}/hour"},
}
FLOODER = "198.51.100.1"
OTHER = "198.51.100.2"
WRONG = "tw_this-key-was-never-issued"


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(SECRET_ENV, raising=False)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    request.getfixturevalue("redis_client")  # flushed
    url: str = request.getfixturevalue("redis_url")
    clear_of_the_hour_edge()
    return url


def clear_of_the_hour_edge(margin: float = 20.0) -> None:
    """Redis counts in its own hours: a run that straddles an hour's end would see two."""
    left = 3600 - time.time() % 3600
    if left < margin:
        time.sleep(left + 0.5)


def get(base: str, address: str, key: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": address}
    if key is not None:
        headers["X-API-Key"] = key
    return httpx.get(f"{base}/v1/geocode", headers=headers, timeout=10.0)


def assert_blocked(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["cache-control"] == "no-store"
    assert 0 < int(answer.headers["retry-after"]) <= 3600
    body = json.loads(answer.content)
    assert body["status"] == 429
    assert body["title"] == "Too many failed API key attempts"
    assert "www-authenticate" not in answer.headers


def flood_and_check(base: str, good: str) -> None:
    """The scenario every face must pass, from a fresh count."""
    assert get(base, FLOODER, good).status_code == 200  # successes never count
    first = [get(base, FLOODER, WRONG) for _ in range(FAILURES)]
    assert [a.status_code for a in first] == [401] * FAILURES
    assert all(a.headers["www-authenticate"].startswith("Bearer") for a in first)
    assert_blocked(get(base, FLOODER, WRONG))
    assert_blocked(get(base, FLOODER, good))  # a valid key too: no oracle
    assert get(base, FLOODER).status_code == 200  # no key presented: not a key attempt
    assert get(base, OTHER, good).status_code == 200  # another address is not affected
    assert get(base, OTHER, WRONG).status_code == 401


# ------------------------------------------------------------------------------ the ASGI face


def starlette_app() -> Starlette:
    async def geocode(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/v1/geocode", geocode)])


def async_tollway(store: str, clock: FakeClock) -> tuple[AsyncTollway, str]:
    """An `AsyncTollway` and a key issued for ``acct_1`` in its store. On Redis the key is made
    through a sync client: the async one must only ever run on the server's loop."""
    atw = AsyncTollway(POLICY, store, clock=clock)
    if store == "memory://":
        key = asyncio.run(AsyncApiKeys(atw, secret=SECRET).create("acct_1")).key
    else:
        with Tollway(POLICY, store) as tw:
            key = ApiKeys(tw, secret=SECRET).create("acct_1").key
    return atw, key


def test_asgi_middleware_limits_failed_keys_per_address(store: str) -> None:
    clock = FakeClock(START)
    atw, good = async_tollway(store, clock)
    keys = AsyncApiKeys(atw, secret=SECRET)
    app = TollwayMiddleware(
        starlette_app(), tollway=atw, api_keys=keys, trusted_proxies=["127.0.0.1"]
    )
    with uvicorn_serving(app, proxy_headers=False, close=atw.aclose) as base:
        flood_and_check(base, good)
        if store == "memory://":  # the window passes on the injected clock
            clock.advance(3600)
            assert get(base, FLOODER, good).status_code == 200
            assert get(base, FLOODER, WRONG).status_code == 401


def test_the_count_is_shared_by_processes_on_one_redis(redis_client: Any, redis_url: str) -> None:
    clear_of_the_hour_edge()
    apps, goods = [], []
    for _ in range(2):  # two tollways: two engines, two local memories, one store
        atw, good = async_tollway(redis_url, FakeClock(START))
        goods.append(good)
        keys = AsyncApiKeys(atw, secret=SECRET)
        middleware = TollwayMiddleware(
            starlette_app(), tollway=atw, api_keys=keys, trusted_proxies=["127.0.0.1"]
        )
        apps.append((middleware, atw))
    (one, one_tw), (two, two_tw) = apps
    with (
        uvicorn_serving(one, proxy_headers=False, close=one_tw.aclose) as a,
        uvicorn_serving(two, proxy_headers=False, close=two_tw.aclose) as b,
    ):
        assert [get(a, FLOODER, WRONG).status_code for _ in range(FAILURES - 1)] == [401] * (
            FAILURES - 1
        )
        assert get(b, FLOODER, WRONG).status_code == 401  # the last one allowed, on the other
        assert_blocked(get(a, FLOODER, WRONG))
        assert_blocked(get(b, FLOODER, goods[0]))  # b never refused it: it asked the store
        assert get(b, OTHER, goods[1]).status_code == 200


# ------------------------------------------------------------------------------ FastAPI


def test_fastapi_dependency_limits_failed_keys_behind_uvicorn_proxy_headers(store: str) -> None:
    # uvicorn's default proxy_headers=True trusts 127.0.0.1 and sets the ASGI client from
    # X-Forwarded-For: the dependency, which trusts no proxy itself, sees each address.
    clock = FakeClock(START)
    atw, good = async_tollway(store, clock)
    keys = AsyncApiKeys(atw, secret=SECRET)
    app = FastAPI()
    install(app, atw)

    @app.get("/v1/geocode", dependencies=[Depends(limit("geocode", api_keys=keys))])
    async def geocode() -> dict[str, str]:
        return {"result": "ok"}

    with uvicorn_serving(app, close=atw.aclose) as base:
        flood_and_check(base, good)
        if store == "memory://":
            clock.advance(3600)
            assert get(base, FLOODER, good).status_code == 200


# ------------------------------------------------------------------------------ the WSGI face


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_wsgi_middleware_limits_failed_keys_per_address(store: str) -> None:
    clock = FakeClock(START)
    with Tollway(POLICY, store, clock=clock) as tw:
        keys = ApiKeys(tw, secret=SECRET)
        good = keys.create("acct_1").key
        app = TollwayWSGIMiddleware(
            wsgi_app, tollway=tw, api_keys=keys, trusted_proxies=["127.0.0.1"]
        )
        # waitress drops X-Forwarded-* unless told which proxy to trust; here tollway is.
        with waitress_serving(app, clear_untrusted_proxy_headers=False) as base:
            flood_and_check(base, good)
            # The two served requests only: a blocked valid key consumed nothing.
            assert tw.usage("acct_1").limit("hourly").used == 2
            if store == "memory://":
                clock.advance(3600)
                assert get(base, FLOODER, good).status_code == 200


# ------------------------------------------------------------------------------ the gate


def gate_for(policy: dict[str, Any], clock: FakeClock) -> tuple[Tollway, Gate, ApiKeys]:
    tw = Tollway(policy, clock=clock)
    attempts = KeyAttempts.of(tw.driver.engine)
    return tw, Gate(tw.policy, accept_keys=True, key_attempts=attempts), ApiKeys(tw, secret=SECRET)


def attempt(tw: Tollway, gate: Gate, keys: ApiKeys, key: str, peer: str) -> int:
    """One request through the gate's protocol, as a face drives it: the status answered."""
    request = GateRequest("GET", "/v1/geocode", [(b"x-api-key", key.encode())], peer)
    plan = gate.plan(request)
    if isinstance(plan, KeyCheck):
        keyed = gate.keyed(plan, keys.verify(plan.key))
        if isinstance(keyed, KeyAttempt):
            keyed = gate.attempted(keyed, tw.driver.decide(keyed.attempt.build))
        if isinstance(keyed, Verdict):
            return keyed.status
        return 200
    assert isinstance(plan, Verdict)
    return plan.status


def test_on_by_default_twenty_per_minute() -> None:
    clock = FakeClock(START)
    policy = {key: value for key, value in POLICY.items() if key != "keys"}
    tw, gate, keys = gate_for(policy, clock)
    statuses = [attempt(tw, gate, keys, WRONG, FLOODER) for _ in range(21)]
    assert statuses == [401] * 20 + [429]
    clock.advance(60)
    assert attempt(tw, gate, keys, WRONG, FLOODER) == 401


def test_off_when_the_policy_says_false() -> None:
    policy = {**POLICY, "keys": {"failed_attempts": False}}
    tw, gate, keys = gate_for(policy, FakeClock(START))
    assert KeyAttempts.of(tw.driver.engine) is None
    assert gate.key_attempts is None
    assert [attempt(tw, gate, keys, WRONG, FLOODER) for _ in range(50)] == [401] * 50
    middleware = TollwayMiddleware(starlette_app(), tollway=AsyncTollway(policy))
    assert middleware.gate.key_attempts is None


def test_a_blocked_address_costs_no_store_call_in_the_process_that_saw_it() -> None:
    clock = FakeClock(START)
    tw, gate, keys = gate_for(POLICY, clock)
    for _ in range(FAILURES + 1):
        attempt(tw, gate, keys, WRONG, FLOODER)
    request = GateRequest("GET", "/v1/geocode", [(b"x-api-key", WRONG.encode())], FLOODER)
    blocked = gate.plan(request)  # answered before any key check or store step
    assert isinstance(blocked, Verdict) and blocked.status == 429
    wait = int(dict(blocked.headers)["Retry-After"])
    assert 0 < wait <= 3600
    clock.advance(wait)  # the window it was refused in has ended
    assert isinstance(gate.plan(request), KeyCheck)


def test_failures_count_under_an_internal_subject_and_write_no_usage() -> None:
    clock = FakeClock(START)
    tw, gate, keys = gate_for(POLICY, clock)
    attempt(tw, gate, keys, WRONG, "2001:db8:1:2::1")
    attempt(tw, gate, keys, WRONG, "2001:db8:1:2::99")  # one /64: one client
    attempt(tw, gate, keys, WRONG, "2001:db8:1:2::7")
    assert attempt(tw, gate, keys, WRONG, "2001:db8:1:2:ffff::1") == 429
    assert attempt(tw, gate, keys, WRONG, "2001:db8:1:3::1") == 401
    assert KeyAttempts.subject("ip:2001:db8:1:2::/64") == SUBJECT_PREFIX + "ip:2001:db8:1:2::/64"


def test_a_store_that_cannot_count_skips_the_limit(make_redis_server: Any) -> None:
    # Never a 500 for this limit: the failed-attempts step finds no store, the answer that
    # stands (the 401, or the admission) is given.
    server = make_redis_server()
    with Tollway({**POLICY, "store": {"timeout_ms": 200}}, server.url) as on_redis:
        keys = ApiKeys(on_redis, secret=SECRET)
        attempts = KeyAttempts.of(on_redis.driver.engine)
        assert attempts is not None
        server.kill()
        failure = attempts.failure(KeyAttempts.subject("ip:" + FLOODER))
        assert asyncio.run(decide_attempt(keys, failure)) is None
        assert attempts.refusal(failure, None) is None


def test_the_count_on_a_redis_cluster(redis_cluster_client: Any, redis_cluster_url: str) -> None:
    clear_of_the_hour_edge()
    with Tollway(POLICY, redis_cluster_url) as tw:
        gate = Gate(tw.policy, accept_keys=True, key_attempts=KeyAttempts.of(tw.driver.engine))
        keys = ApiKeys(tw, secret=SECRET)
        good = keys.create("acct_1").key
        statuses = [attempt(tw, gate, keys, WRONG, FLOODER) for _ in range(FAILURES + 1)]
        assert statuses == [401] * FAILURES + [429]
        # Another process (a gate of its own, no memory of the refusal) asks the store.
        other = Gate(tw.policy, accept_keys=True, key_attempts=KeyAttempts.of(tw.driver.engine))
        assert attempt(tw, other, keys, good, FLOODER) == 429
        assert attempt(tw, other, keys, good, OTHER) == 200
