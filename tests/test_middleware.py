"""The ASGI and WSGI middleware in front of real apps (Starlette, Flask), driven by httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import flask
import http_sf
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tollway import Tollway
from tollway.asgi import TollwayMiddleware
from tollway.keys import ApiKeys
from tollway.testing import FakeClock
from tollway.wsgi import TollwayWSGIMiddleware

SECRET = "test-secret-of-at-least-16-bytes"
POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {
        "geocode": {"cost": 1, "endpoints": ["GET /v1/geocode"]},
        "stream": {"cost": 1, "endpoints": ["GET /v1/stream"]},
    },
    "plans": {"free": {"limits": [{"name": "hourly", "quota": "3/hour"}]}},
}


def starlette_app() -> Starlette:
    async def geocode(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"a", b"b", b"c"):
                yield part

        return StreamingResponse(chunks())

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("up")

    return Starlette(
        routes=[
            Route("/v1/geocode", geocode),
            Route("/v1/stream", stream),
            Route("/health", health),
        ]
    )


def asgi_client(tw: Tollway, peer: str = "203.0.113.7", **options: Any) -> httpx.AsyncClient:
    app = TollwayMiddleware(starlette_app(), tollway=tw, exempt=["/health"], **options)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def parsed(value: str) -> dict[str, dict[str, Any]]:
    items = http_sf.parse(value.encode(), tltype="list")
    return {item[0]: item[1] for item in items}


async def test_quota_is_enforced_with_standard_headers_and_problem_body() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    async with asgi_client(tw) as client:
        answers = [await client.get("/v1/geocode") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [parsed(a.headers["ratelimit"])["hourly"]["r"] for a in answers[:3]] == [2, 1, 0]
    assert parsed(answers[0].headers["ratelimit-policy"])["hourly"] == {"q": 3, "w": 3600}
    denied = answers[3]
    assert denied.headers["content-type"] == "application/problem+json"
    body = json.loads(denied.content)
    assert body["status"] == 429
    assert body["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert body["violated-policies"] == ["hourly"]
    t = parsed(denied.headers["ratelimit"])["hourly"]["t"]
    assert int(denied.headers["retry-after"]) >= t > 0
    assert "retry-after" not in answers[0].headers
    assert tw.usage("ip:203.0.113.7").limit("hourly").used == 3  # the denial consumed nothing


async def test_exempt_and_unmapped_paths_pass_untouched() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    async with asgi_client(tw) as client:
        health = [await client.get("/health") for _ in range(5)]
        missing = await client.get("/nowhere")
    assert all(a.status_code == 200 and "ratelimit" not in a.headers for a in health)
    assert missing.status_code == 404 and "ratelimit" not in missing.headers
    assert tw.usage("ip:203.0.113.7").limit("hourly").used == 0


async def test_streaming_responses_stream_with_headers_added() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    async with asgi_client(tw) as client:
        answer = await client.get("/v1/stream")
    assert answer.status_code == 200
    assert answer.content == b"abc"
    assert "ratelimit" in answer.headers


async def test_non_http_scopes_pass_through() -> None:
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = TollwayMiddleware(app, tollway=Tollway(POLICY, clock=FakeClock()))
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "websocket", "path": "/v1/geocode"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


async def test_api_keys_map_to_their_subject_and_bad_keys_are_401() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    keys = ApiKeys(tw, secret=SECRET)
    issued = keys.create("acct_42")
    async with asgi_client(tw, api_keys=keys) as client:
        bearer = await client.get("/v1/geocode", headers={"Authorization": f"Bearer {issued.key}"})
        header = await client.get("/v1/geocode", headers={"X-API-Key": issued.key})
        unknown = await client.get("/v1/geocode", headers={"X-API-Key": issued.key[:-2] + "xx"})
        empty = await client.get("/v1/geocode", headers={"Authorization": "Bearer "})
        basic = await client.get("/v1/geocode", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        odd = await client.get("/v1/geocode", headers=[(b"x-api-key", b"tw_\xff\xfe")])
    assert (bearer.status_code, header.status_code) == (200, 200)
    assert tw.usage("acct_42").limit("hourly").used == 2
    for refused in (unknown, empty, odd):
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert basic.status_code == 200  # another scheme is the application's business
    assert tw.usage("ip:203.0.113.7").limit("hourly").used == 1  # only the Basic request


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    spoof = {"X-Forwarded-For": "198.51.100.1"}
    async with asgi_client(tw) as client:
        await client.get("/v1/geocode", headers=spoof)
    assert tw.usage("ip:203.0.113.7").limit("hourly").used == 1
    assert tw.usage("ip:198.51.100.1").limit("hourly").used == 0
    async with asgi_client(tw, peer="10.0.0.5", trusted_proxies=["10.0.0.0/8"]) as client:
        await client.get("/v1/geocode", headers=spoof)
    assert tw.usage("ip:198.51.100.1").limit("hourly").used == 1


@pytest.mark.parametrize("header_mode", ["closest", "none"])
async def test_header_modes(header_mode: str) -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    async with asgi_client(tw, headers=header_mode) as client:
        answer = await client.get("/v1/geocode")
    assert answer.status_code == 200
    assert ("ratelimit" in answer.headers) == (header_mode == "closest")


def flask_app(tw: Tollway, **options: Any) -> flask.Flask:
    app = flask.Flask("tollway-test")

    @app.get("/v1/geocode")
    def geocode() -> str:
        return "ok"

    @app.get("/health")
    def health() -> str:
        return "up"

    app.wsgi_app = TollwayWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, tollway=tw, exempt=["/health"], **options
    )
    return app


def test_flask_quota_and_keys() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    keys = ApiKeys(tw, secret=SECRET)
    issued = keys.create("acct_7")
    app = flask_app(tw, api_keys=keys)
    transport = httpx.WSGITransport(app=app, remote_addr="203.0.113.9")
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        answers = [client.get("/v1/geocode", headers={"X-API-Key": issued.key}) for _ in range(4)]
        health = client.get("/health")
        refused = client.get("/v1/geocode", headers={"X-API-Key": "tw_nope"})
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert parsed(answers[1].headers["ratelimit"])["hourly"]["r"] == 1
    assert json.loads(answers[3].content)["violated-policies"] == ["hourly"]
    assert int(answers[3].headers["retry-after"]) > 0
    assert health.status_code == 200 and "ratelimit" not in health.headers
    assert refused.status_code == 401
    assert tw.usage("acct_7").limit("hourly").used == 3


async def test_a_bearer_header_without_a_token_is_401() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    keys = ApiKeys(tw, secret=SECRET)
    async with asgi_client(tw, api_keys=keys) as client:
        bare = await client.get("/v1/geocode", headers={"Authorization": "Bearer"})
        spaced = await client.get("/v1/geocode", headers={"Authorization": "bearer    "})
    assert (bare.status_code, spaced.status_code) == (401, 401)
    assert tw.usage("ip:203.0.113.7").limit("hourly").used == 0
