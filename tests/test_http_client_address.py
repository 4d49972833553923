"""The client address over real HTTP (issue 11, item 8): uvicorn and waitress in front of the
middleware and the FastAPI dependency, on the memory store. A huge ``X-Forwarded-For`` from a
trusted proxy is answered fast and counted for the right client; a bad port is no address; a
peer that is not an IP address (uvicorn's default ``proxy_headers=True`` puts whatever the
forwarding header said there) is never a subject of its own text."""

from __future__ import annotations

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
from tollway.asgi import TollwayMiddleware
from tollway.fastapi import install, limit
from tollway.testing import FakeClock
from tollway.wsgi import TollwayWSGIMiddleware

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1, "endpoints": ["GET /v1/geocode"]}},
    "plans": {"free": {"limits": [{"name": "hourly", "quota": "1000/hour"}]}},
}
CLIENT = "203.0.113.7"
BOUND_S = 1.0  # generous: a whole request over loopback on a shared machine, not a benchmark


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def starlette_app() -> Starlette:
    async def geocode(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/v1/geocode", geocode)])


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def used(tw: Tollway, subject: str) -> int:
    return int(tw.usage(subject).limit("hourly").used)


async def aused(tw: AsyncTollway, subject: str) -> int:
    return int((await tw.usage(subject)).limit("hourly").used)


def timed_get(base: str, forwarded: str) -> httpx.Response:
    start = time.perf_counter()
    answer = httpx.get(f"{base}/v1/geocode", headers={"X-Forwarded-For": forwarded}, timeout=10)
    assert time.perf_counter() - start < BOUND_S
    return answer


def test_wsgi_behind_a_trusted_proxy_huge_headers_and_bad_ports() -> None:
    with Tollway(POLICY, clock=FakeClock()) as tw:
        app = TollwayWSGIMiddleware(wsgi_app, tollway=tw, trusted_proxies=["127.0.0.1"])
        with waitress_serving(app, clear_untrusted_proxy_headers=False) as base:
            # 200 KB of client-written entries (waitress refuses headers past 256 KB).
            huge = ", ".join(["198.51.100.1"] * 15_000) + f", {CLIENT}"
            assert len(huge) > 200_000
            for _ in range(5):
                assert timed_get(base, huge).status_code == 200
            assert used(tw, f"ip:{CLIENT}") == 5
            assert used(tw, "ip:198.51.100.1") == 0
            # A bad port makes the entry no address: the walk stops at the proxy.
            for bad in (f"{CLIENT}:99999", f"{CLIENT}:0", f"{CLIENT}:", "[2001:db8::1]:65536"):
                assert timed_get(base, bad).status_code == 200
            assert used(tw, "ip:127.0.0.1") == 4
            assert used(tw, f"ip:{CLIENT}") == 5
            assert timed_get(base, f"{CLIENT}:65535").status_code == 200
            assert used(tw, f"ip:{CLIENT}") == 6


async def test_asgi_behind_a_trusted_proxy_a_megabyte_header_is_cheap() -> None:
    tw = AsyncTollway(POLICY, clock=FakeClock())
    app = TollwayMiddleware(starlette_app(), tollway=tw, trusted_proxies=["127.0.0.1"])
    with uvicorn_serving(app, proxy_headers=False, h11_max_incomplete_event_size=2**21) as base:
        huge = ", ".join(["198.51.100.1"] * 80_000) + f", {CLIENT}"
        assert len(huge) > 1_000_000
        for _ in range(3):
            assert timed_get(base, huge).status_code == 200
    assert await aused(tw, f"ip:{CLIENT}") == 3


async def test_uvicorn_proxy_headers_cannot_choose_the_subject() -> None:
    # uvicorn's defaults trust 127.0.0.1 and put the X-Forwarded-For value in the ASGI
    # client: text that is not an address counts as the one subject "ip:unknown".
    tw = AsyncTollway(POLICY, clock=FakeClock())
    app = TollwayMiddleware(starlette_app(), tollway=tw)
    with uvicorn_serving(app) as base:
        for text in ("anything-i-like", "victim", "ip:203.0.113.7", "/run/app.sock"):
            assert timed_get(base, text).status_code == 200
        assert timed_get(base, CLIENT).status_code == 200  # uvicorn's choice, an address
    assert await aused(tw, "ip:unknown") == 4
    assert await aused(tw, "ip:anything-i-like") == 0
    assert await aused(tw, "ip:victim") == 0
    assert await aused(tw, f"ip:{CLIENT}") == 1


async def test_the_fastapi_dependency_behind_uvicorn_proxy_headers() -> None:
    tw = AsyncTollway(POLICY, clock=FakeClock())
    app = FastAPI()
    install(app, tw)

    @app.get("/v1/geocode", dependencies=[Depends(limit("geocode"))])
    async def geocode() -> dict[str, str]:
        return {"result": "ok"}

    with uvicorn_serving(app) as base:
        assert timed_get(base, "anything-i-like").status_code == 200
        assert timed_get(base, "1.2.3.4:99999").status_code == 200
    assert await aused(tw, "ip:anything-i-like") == 0
    assert await aused(tw, "ip:unknown") >= 1
