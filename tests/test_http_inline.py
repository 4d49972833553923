"""Inline limits, no policy file: ``Depends(limit(rate="5/s", burst=10))`` on a FastAPI route
and ``TollwayMiddleware(app, limits="5/s; 1000/hour")``, on the memory store and on a real
Redis (shared between two apps as between two processes), driven by httpx; mistakes are the
loader's `PolicyError` with a key path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flask
import http_sf
import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tollway.asgi import TollwayMiddleware
from tollway.errors import ConfigurationError, PolicyError
from tollway.fastapi import TollwayHTTPException, exception_handler, limit
from tollway.inline import inline_limits, inline_policy
from tollway.wsgi import TollwayWSGIMiddleware

PEER = "203.0.113.7"


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def parsed(value: str) -> dict[str, dict[str, Any]]:
    items = http_sf.parse(value.encode(), tltype="list")
    return {item[0]: item[1] for item in items}


def client(app: Any, peer: str = PEER) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def fastapi_app(**inline: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/search", dependencies=[Depends(limit(**inline))])
    async def search() -> dict[str, str]:
        return {"result": "ok"}

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"result": "free"}

    return app


# ------------------------------------------------------------------------------ FastAPI


async def test_the_readme_example_lets_the_burst_through_then_429() -> None:
    app = fastapi_app(rate="5/s", burst=10)
    async with client(app) as http:
        answers = [await http.get("/search") for _ in range(30)]
        free = await http.get("/free")
    codes = [answer.status_code for answer in answers]
    assert codes[:10] == [200] * 10  # the burst, at once
    assert 429 in codes  # then the rate: 5 a second, far slower than these requests
    denied = answers[codes.index(429)]
    assert denied.headers["content-type"] == "application/json"  # FastAPI's own handler
    assert float(denied.headers["retry-after"]) > 0
    # Each inline dependency counts on its own: the limit is named for it (``limit-N``).
    (named,) = parsed(denied.headers["ratelimit"])
    assert named.startswith("5-per-s:limit-")
    assert free.status_code == 200 and "ratelimit" not in free.headers


async def test_an_inline_quota_counts_exactly_and_the_problem_handler_applies() -> None:
    app = fastapi_app(limits="1/m; 3/hour", name="search")
    app.add_exception_handler(TollwayHTTPException, exception_handler)  # no tollway needed
    async with client(app) as http:
        answers = [await http.get("/search") for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert answers[1].headers["content-type"] == "application/problem+json"
    assert json.loads(answers[1].content)["violated-policies"] == ["1-per-m:search"]
    assert set(parsed(answers[0].headers["ratelimit-policy"])) == {
        "1-per-m:search",
        "3-per-hour:search",
    }


async def test_each_route_counts_apart_and_redis_shares_between_processes(
    redis_url: str, redis_client: Any
) -> None:
    def app() -> FastAPI:
        made = FastAPI()

        @made.get("/a", dependencies=[Depends(limit(quota="2/hour", store=redis_url, name="a"))])
        async def a() -> dict[str, str]:
            return {}

        @made.get("/b", dependencies=[Depends(limit(quota="2/hour", store=redis_url, name="b"))])
        async def b() -> dict[str, str]:
            return {}

        return made

    first, second = app(), app()  # two processes of one service
    async with client(first) as one, client(second) as two:
        a_codes = [(await one.get("/a")).status_code, (await two.get("/a")).status_code]
        a_codes.append((await two.get("/a")).status_code)
        b_code = (await one.get("/b")).status_code
        other_client = await client(first, peer="198.51.100.9").get("/a")
    assert a_codes == [200, 200, 429]
    assert b_code == 200  # /b has counters of its own
    assert other_client.status_code == 200  # per client address
    assert redis_client.exists("tw:{ip:203.0.113.7}")


def test_mistakes_are_policy_errors_with_a_key_path_at_definition() -> None:
    with pytest.raises(PolicyError, match=r"plans\.inline\.limits\[0\]\.rate") as bad:
        limit(rate="5/x")
    assert "is not a rate" in str(bad.value)
    with pytest.raises(PolicyError, match=r"plans\.inline\.limits\[0\]\.burst"):
        limit(rate="5/s", burst=-1)
    with pytest.raises(PolicyError, match=r"store\.url"):
        limit(rate="5/s", store="mysql://x")
    with pytest.raises(PolicyError, match=r"limits\[1\]\.rate"):
        inline_policy("5/s; lots")
    with pytest.raises(ConfigurationError, match="operation 'search' and inline limits"):
        limit("search", rate="5/s")
    with pytest.raises(ConfigurationError, match="burst: 3 needs a rate"):
        inline_limits(quota="5/hour", burst=3)
    with pytest.raises(ConfigurationError, match="names no limit"):
        inline_limits(" ; ")
    with pytest.raises(ConfigurationError, match="go with rate="):
        limit("search", burst=3)


def test_a_limits_string_is_read_by_calendar_words_and_units() -> None:
    assert inline_limits("5/s; 1000/hour, 10/5m; 20000/month") == [
        {"name": "5-per-s", "rate": "5/s"},
        {"name": "1000-per-hour", "quota": "1000/hour"},
        {"name": "10-per-5m", "rate": "10/5m"},
        {"name": "20000-per-month", "quota": "20000/month"},
    ]
    assert inline_limits(rate="5/s", burst=10, limits="5/s") == [
        {"name": "5-per-s", "rate": "5/s", "burst": 10},
        {"name": "5-per-s-2", "rate": "5/s", "burst": 10},
    ]


# ------------------------------------------------------------------------------ middleware


def starlette_app() -> Starlette:
    async def anything(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/v1/{name}", anything), Route("/health", anything)])


async def test_the_middleware_with_a_limits_string_and_no_policy_file() -> None:
    app = TollwayMiddleware(starlette_app(), limits="1000/hour; 2/minute", exempt=["/health"])
    async with client(app) as http:
        answers = [await http.get(f"/v1/{n}") for n in ("x", "y", "z")]
        health = await http.get("/health")
        elsewhere = await client(app, peer="198.51.100.9").get("/v1/x")
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert json.loads(answers[2].content)["violated-policies"] == ["2-per-minute"]
    assert parsed(answers[0].headers["ratelimit-policy"]) == {
        "1000-per-hour": {"q": 1000, "w": 3600},
        "2-per-minute": {"q": 2, "w": 60},
    }
    assert health.status_code == 200 and "ratelimit" not in health.headers
    assert elsewhere.status_code == 200


async def test_the_middleware_on_redis_shares_the_count(redis_url: str, redis_client: Any) -> None:
    apps = [TollwayMiddleware(starlette_app(), limits="3/hour", store=redis_url) for _ in "ab"]
    async with client(apps[0]) as one, client(apps[1]) as two:
        codes = [(await http.get("/v1/x")).status_code for http in (one, two, one, two)]
    assert codes == [200, 200, 200, 429]


def test_the_middleware_needs_a_tollway_or_limits_not_both() -> None:
    from tollway import Tollway

    with pytest.raises(ConfigurationError, match='inline limits="5/s'):
        TollwayMiddleware(starlette_app())
    with pytest.raises(ConfigurationError, match="build a tollway of their own"):
        TollwayMiddleware(starlette_app(), tollway=Tollway(inline_policy("1/s")), limits="1/s")
    with pytest.raises(PolicyError, match=r"plans\.inline\.limits\[0\]\.rate"):
        TollwayMiddleware(starlette_app(), limits="1/fortnight")


def test_flask_with_inline_limits() -> None:
    app = flask.Flask("tollway-inline")

    @app.get("/v1/x")
    def x() -> str:
        return "ok"

    app.wsgi_app = TollwayWSGIMiddleware(app.wsgi_app, limits="2/hour")  # type: ignore[method-assign]
    transport = httpx.WSGITransport(app=app, remote_addr=PEER)
    with httpx.Client(transport=transport, base_url="http://testserver") as http:
        codes = [http.get("/v1/x").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
