"""API keys through the middleware: `AsyncApiKeys` on an `AsyncTollway` (memory and a real
Redis), awaited on the event loop (no worker thread), behind the middleware and in the FastAPI
dependency; the gate stays sans-IO (it imports no keys and no store); a dead store is a 503,
never a 401."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tollway import AsyncTollway, Tollway
from tollway.asgi import TollwayMiddleware
from tollway.errors import ConfigurationError
from tollway.fastapi import install, limit
from tollway.http.gate import Admission, Gate, KeyCheck, Verdict
from tollway.http.gate import Request as GateRequest
from tollway.keys import SECRET_ENV, AsyncApiKeys
from tollway.testing import FakeClock
from tollway.wsgi import TollwayWSGIMiddleware

SECRET = "test-secret-of-at-least-16-bytes"
POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1, "endpoints": ["GET /v1/geocode"]}},
    "plans": {"free": {"limits": [{"name": "hourly", "quota": "3/hour"}]}},
}


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(SECRET_ENV, raising=False)


def app() -> Starlette:
    async def geocode(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/v1/geocode", geocode)])


def client(tw: AsyncTollway, **options: Any) -> httpx.AsyncClient:
    middleware = TollwayMiddleware(app(), tollway=tw, **options)
    transport = httpx.ASGITransport(app=middleware, client=("203.0.113.7", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture(params=["memory", "redis"])
async def atw(request: pytest.FixtureRequest) -> AsyncIterator[AsyncTollway]:
    url = "memory://"
    if request.param == "redis":
        request.getfixturevalue("redis_client")
        url = request.getfixturevalue("redis_url")
    async with AsyncTollway(POLICY, url, clock=FakeClock()) as tw:
        yield tw


async def test_async_keys_are_awaited_on_the_loop_never_in_a_thread(
    atw: AsyncTollway, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = AsyncApiKeys(atw, secret=SECRET)
    issued = await keys.create("acct_1")
    revoked = await keys.create("acct_1")
    await keys.revoke(revoked.key_id)

    def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker thread was used")

    with monkeypatch.context() as patch:  # only around the requests (closing may use one)
        patch.setattr(asyncio, "to_thread", no_thread)
        async with client(atw, api_keys=keys, anonymous=False) as http:
            answers = [
                await http.get("/v1/geocode", headers={"X-API-Key": issued.key}) for _ in range(4)
            ]
            refused = await http.get("/v1/geocode", headers={"X-API-Key": revoked.key})
            without = await http.get("/v1/geocode")
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert refused.status_code == 401
    assert without.status_code == 401
    assert "an API key is required" in without.text
    assert (await atw.usage("acct_1")).limit("hourly").used == 3


async def test_a_dead_store_answers_503_not_401(make_redis_server: Any) -> None:
    server = make_redis_server()
    atw = AsyncTollway({**POLICY, "store": {"timeout_ms": 200}}, server.url)
    keys = AsyncApiKeys(atw, secret=SECRET)
    issued = await keys.create("acct_1")
    server.kill()
    async with client(atw, api_keys=keys) as http:
        answer = await http.get("/v1/geocode", headers={"X-API-Key": issued.key})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert "could not be checked" in answer.text
    await atw.aclose()


def test_a_key_without_keys_configured_is_refused() -> None:
    gate = Gate(Tollway(POLICY).policy)
    request = GateRequest("GET", "/v1/geocode", [(b"x-api-key", b"tw_whatever")], "203.0.113.7")
    verdict = gate.plan(request)
    assert isinstance(verdict, Verdict)
    assert verdict.status == 401
    assert b"not accepted here" in verdict.body


def test_the_gate_asks_for_the_key_and_finishes_with_the_answer() -> None:
    """The sans-IO protocol: `plan` returns a `KeyCheck`, `keyed` turns the answer into an
    `Admission` (or a 401/503 verdict); the gate never verifies a key itself."""
    from tollway.errors import StoreError

    gate = Gate(Tollway(POLICY).policy, accept_keys=True)
    request = GateRequest("GET", "/v1/geocode", [(b"x-api-key", b"tw_presented")], "198.51.100.1")
    check = gate.plan(request)
    assert isinstance(check, KeyCheck)
    assert check.key == "tw_presented"
    assert gate.keyed(check, "acct_7") == Admission("acct_7", "geocode", None, None)
    refused = gate.keyed(check, None)
    assert isinstance(refused, Verdict) and refused.status == 401
    away = gate.keyed(check, StoreError("down"))
    assert isinstance(away, Verdict) and away.status == 503


def test_the_gate_imports_no_keys_and_no_store() -> None:
    source = (resources.files("tollway.http") / "gate.py").read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not any(name.startswith(("tollway.keys", "tollway.stores")) for name in imported)
    assert "tollway.client" not in imported


def test_wsgi_refuses_async_keys_and_says_what_to_pass() -> None:
    keys = AsyncApiKeys(AsyncTollway(POLICY), secret=SECRET)

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        return [b""]

    with pytest.raises(ConfigurationError, match=r"pass ApiKeys\(tw\)"):
        TollwayWSGIMiddleware(wsgi_app, tollway=Tollway(POLICY), api_keys=keys)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ FastAPI


def fastapi_app(atw: AsyncTollway, dependency: Any) -> FastAPI:
    made = FastAPI()
    install(made, atw)

    @made.get("/v1/geocode", dependencies=[Depends(dependency)])
    async def geocode() -> dict[str, str]:
        return {"result": "ok"}

    return made


async def test_the_fastapi_dependency_counts_for_the_keys_owner(
    atw: AsyncTollway, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = AsyncApiKeys(atw, secret=SECRET)
    first, second = (await keys.create("acct_1")).key, (await keys.create("acct_1")).key
    revoked = await keys.create("acct_2")
    await keys.revoke(revoked.key_id)
    app = fastapi_app(atw, limit("geocode", api_keys=keys, anonymous=False))

    def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker thread was used")

    with monkeypatch.context() as patch:
        patch.setattr(asyncio, "to_thread", no_thread)
        async with client_of(app) as http:
            answers = [
                await http.get("/v1/geocode", headers={"X-API-Key": key})
                for key in (first, second, first, second)
            ]
            bearer = await http.get(
                "/v1/geocode", headers={"Authorization": f"Bearer {revoked.key}"}
            )
            without = await http.get("/v1/geocode")
            malformed = await http.get("/v1/geocode", headers={"X-API-Key": ""})
    assert [a.status_code for a in answers] == [200, 200, 200, 429]  # one owner, one quota
    for refused in (bearer, without, malformed):
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "an API key is required" in without.text
    assert (await atw.usage("acct_1")).limit("hourly").used == 3
    assert (await atw.usage("acct_2")).limit("hourly").used == 0


async def test_the_fastapi_dependency_with_keys_and_inline_limits() -> None:
    atw = AsyncTollway(POLICY, clock=FakeClock())  # where the keys live
    keys = AsyncApiKeys(atw, secret=SECRET)
    key = (await keys.create("acct_1")).key
    app = fastapi_app(atw, limit(quota="2/hour", api_keys=keys, name="geo"))
    async with client_of(app) as http:
        keyed = [(await http.get("/v1/geocode", headers={"X-API-Key": key})).status_code]
        keyed.append((await http.get("/v1/geocode", headers={"X-API-Key": key})).status_code)
        keyed.append((await http.get("/v1/geocode", headers={"X-API-Key": key})).status_code)
        anonymous = await http.get("/v1/geocode")  # anonymous=True: counted by address
    assert keyed == [200, 200, 429]
    assert anonymous.status_code == 200


async def test_the_fastapi_dependency_answers_503_when_keys_cannot_be_checked(
    make_redis_server: Any,
) -> None:
    server = make_redis_server()
    atw = AsyncTollway({**POLICY, "store": {"timeout_ms": 200}}, server.url)
    keys = AsyncApiKeys(atw, secret=SECRET)
    issued = await keys.create("acct_1")
    server.kill()
    async with client_of(fastapi_app(atw, limit("geocode", api_keys=keys))) as http:
        answer = await http.get("/v1/geocode", headers={"X-API-Key": issued.key})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    await atw.aclose()


def client_of(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")
