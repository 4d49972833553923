"""Real framework apps in process, driven by httpx: FastAPI behind the ASGI middleware, FastAPI
with the `tollway.fastapi.limit` dependency (a cost read from the request body), Django behind
the WSGI middleware, and bad input against both middleware (never a 500, nothing consumed)."""

from __future__ import annotations

import io
import json
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

import http_sf
import httpx
import pytest
from django.conf import settings
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from apps import django_urls
from tollway import AsyncTollway, Tollway
from tollway.asgi import TollwayMiddleware
from tollway.fastapi import install, limit
from tollway.keys import ApiKeys
from tollway.testing import FakeClock
from tollway.wsgi import TollwayWSGIMiddleware

SECRET = "test-secret-of-at-least-16-bytes"
PEER = "203.0.113.7"
PEER_SUBJECT = f"ip:{PEER}"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {
        "geocode": {"cost": 1, "endpoints": ["GET /v1/geocode"]},
        "batch": {"cost": 1},
        "search": {"cost": 2},
    },
    "plans": {
        "free": {
            "limits": [
                {"name": "hourly", "quota": "3/hour", "operations": ["geocode"]},
                {"name": "items", "quota": "10/hour", "operations": ["batch", "search"]},
            ]
        }
    },
}


def parsed(value: str) -> dict[str, dict[str, Any]]:
    """A RateLimit / RateLimit-Policy field, parsed by an RFC 9651 parser: name -> params."""
    items = http_sf.parse(value.encode(), tltype="list")
    return {item[0]: item[1] for item in items}


def assert_quota_exceeded(answer: httpx.Response, limit_name: str) -> None:
    assert answer.status_code == 429
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["cache-control"] == "no-store"
    body = json.loads(answer.content)
    assert body["type"] == QUOTA_EXCEEDED
    assert body["status"] == 429
    assert body["title"] == "Quota exceeded"
    assert body["violated-policies"] == [limit_name]
    t = parsed(answer.headers["ratelimit"])[limit_name]["t"]
    assert int(answer.headers["retry-after"]) >= t > 0


# =========================================================================== FastAPI, middleware


def fastapi_with_middleware(tw: AsyncTollway | Tollway, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/geocode")
    async def geocode() -> dict[str, str]:
        return {"result": "ok"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "up"}

    app.add_middleware(TollwayMiddleware, tollway=tw, exempt=["/health"], **options)
    return app


def asgi_client(app: Any, peer: str = PEER) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_fastapi_middleware_enforces_the_quota_with_parsable_fields() -> None:
    tw = AsyncTollway(POLICY, clock=FakeClock())
    async with asgi_client(fastapi_with_middleware(tw)) as client:
        answers = [await client.get("/v1/geocode") for _ in range(4)]
        health = await client.get("/health")
        missing = await client.get("/v1/nowhere")
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].json() == {"result": "ok"}
    policies = [parsed(a.headers["ratelimit-policy"]) for a in answers]
    assert all(p == {"hourly": {"q": 3, "w": 3600}} for p in policies)
    limits = [parsed(a.headers["ratelimit"])["hourly"] for a in answers]
    assert [item["r"] for item in limits] == [2, 1, 0, 0]
    assert all(0 < item["t"] <= 3600 for item in limits)
    assert all("retry-after" not in a.headers for a in answers[:3])
    assert_quota_exceeded(answers[3], "hourly")
    assert health.status_code == 200 and "ratelimit" not in health.headers
    assert missing.status_code == 404 and "ratelimit" not in missing.headers
    assert (await tw.usage(PEER_SUBJECT)).limit("hourly").used == 3


# =========================================================================== FastAPI, dependency


class Batch(BaseModel):
    items: list[str]


async def batch_size(request: Request) -> int:
    """The cost of a batch: its number of items, read from the JSON body."""
    body = await request.json()
    return len(body["items"])


def account(request: Request) -> str:
    return request.headers.get("x-account") or "anonymous"


def fastapi_with_dependency(tw: AsyncTollway | Tollway, *, handler: bool = True) -> FastAPI:
    app = FastAPI()
    if handler:
        install(app, tw)
    else:
        app.state.tollway = tw

    @app.post("/v1/batch", dependencies=[Depends(limit("batch", cost=batch_size, subject=account))])
    async def batch(payload: Batch) -> dict[str, int]:
        return {"accepted": len(payload.items)}

    @app.get("/v1/search", dependencies=[Depends(limit("search"))])
    async def search() -> dict[str, str]:
        return {"result": "found"}

    @app.get("/v1/search/deep", dependencies=[Depends(limit("search", cost=4))])
    def deep_search() -> dict[str, str]:
        return {"result": "deep"}

    return app


async def test_fastapi_dependency_costs_the_items_of_the_batch_body() -> None:
    tw = AsyncTollway(POLICY, clock=FakeClock())
    alice = {"X-Account": "acct_alice"}
    async with asgi_client(fastapi_with_dependency(tw)) as client:
        served = [
            await client.post("/v1/batch", json={"items": ["a", "b", "c"]}, headers=alice)
            for _ in range(3)
        ]
        denied = await client.post("/v1/batch", json={"items": ["a", "b"]}, headers=alice)
        last = await client.post("/v1/batch", json={"items": ["z"]}, headers=alice)
        bob = await client.post(
            "/v1/batch", json={"items": ["a"] * 10}, headers={"X-Account": "acct_bob"}
        )
    assert [a.status_code for a in served] == [200, 200, 200]
    assert served[0].json() == {"accepted": 3}
    assert [parsed(a.headers["ratelimit"])["items"]["r"] for a in served] == [7, 4, 1]
    assert parsed(served[0].headers["ratelimit-policy"])["items"] == {"q": 10, "w": 3600}
    assert_quota_exceeded(denied, "items")
    assert parsed(denied.headers["ratelimit"])["items"]["r"] == 1
    assert last.status_code == 200 and parsed(last.headers["ratelimit"])["items"]["r"] == 0
    assert bob.status_code == 200 and parsed(bob.headers["ratelimit"])["items"]["r"] == 0
    assert (await tw.usage("acct_alice")).limit("items").used == 10
    assert (await tw.usage("acct_bob")).limit("items").used == 10


async def test_fastapi_dependency_policy_and_fixed_costs_with_a_sync_tollway() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    async with asgi_client(fastapi_with_dependency(tw)) as client:
        search = await client.get("/v1/search")  # the policy's cost: 2
        deep = await client.get("/v1/search/deep")  # cost=4
        again = await client.get("/v1/search")
        denied = await client.get("/v1/search/deep")  # 4 > the 2 left
        last = await client.get("/v1/search")
    served = (search, deep, again, last)
    assert [a.status_code for a in served] == [200, 200, 200, 200]
    assert [parsed(a.headers["ratelimit"])["items"]["r"] for a in served] == [8, 4, 2, 0]
    assert search.json() == {"result": "found"} and deep.json() == {"result": "deep"}
    assert_quota_exceeded(denied, "items")
    assert parsed(denied.headers["ratelimit"])["items"]["r"] == 2
    assert tw.usage(PEER_SUBJECT).limit("items").used == 10


async def test_fastapi_dependency_refuses_an_uncomputable_cost_without_consuming() -> None:
    tw = AsyncTollway(POLICY, clock=FakeClock())
    alice = {"X-Account": "acct_alice"}
    async with asgi_client(fastapi_with_dependency(tw)) as client:
        answers = [
            await client.post("/v1/batch", content=b"not json", headers=alice),
            await client.post("/v1/batch", json={"things": []}, headers=alice),
            await client.post("/v1/batch", json={"items": 5}, headers=alice),
            await client.post("/v1/batch", content=b"\xff\xfe{", headers=alice),
        ]
    for answer in answers:
        assert answer.status_code == 400, answer.content
        assert answer.headers["content-type"] == "application/problem+json"
        assert json.loads(answer.content)["status"] == 400
        assert "ratelimit" not in answer.headers
    assert (await tw.usage("acct_alice")).limit("items").used == 0


async def test_fastapi_dependency_without_the_handler_still_answers_429() -> None:
    tw = AsyncTollway(POLICY, clock=FakeClock())
    async with asgi_client(fastapi_with_dependency(tw, handler=False)) as client:
        answers = [await client.get("/v1/search/deep") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    denied = answers[2]
    assert int(denied.headers["retry-after"]) >= parsed(denied.headers["ratelimit"])["items"]["t"]
    assert denied.headers["content-type"] == "application/json"  # FastAPI's own handler
    assert denied.headers["cache-control"] == "no-store"
    assert denied.json()["detail"]["violated-policies"] == ["items"]
    assert denied.json()["detail"]["type"] == QUOTA_EXCEEDED


async def test_fastapi_dependency_fails_closed_with_a_503_when_the_store_is_away() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = {**POLICY, "store": {"timeout_ms": 200, "on_error": "closed"}}
    tw = AsyncTollway(policy, store=f"redis://127.0.0.1:{port}/0")
    async with asgi_client(fastapi_with_dependency(tw)) as client:
        answer = await client.get("/v1/search")
    await tw.aclose()
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) >= 1
    assert "ratelimit" not in answer.headers  # a degraded decision has no figures
    assert json.loads(answer.content)["type"].endswith("#temporary-reduced-capacity")


# =========================================================================== Django


def django_app(tw: Tollway, **options: Any) -> Callable[..., Iterable[bytes]]:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tollway-tests-not-a-secret",
            ALLOWED_HOSTS=["testserver", "localhost", "127.0.0.1"],
            ROOT_URLCONF=django_urls.__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            DATABASES={},
            USE_TZ=True,
        )
    import django
    from django.core.wsgi import get_wsgi_application

    django.setup()
    return TollwayWSGIMiddleware(get_wsgi_application(), tollway=tw, exempt=["/health"], **options)


def wsgi_client(app: Callable[..., Iterable[bytes]]) -> httpx.Client:
    transport = httpx.WSGITransport(app=app, remote_addr=PEER)
    return httpx.Client(transport=transport, base_url="http://testserver")


def test_django_quota_keys_and_exempt_paths() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    keys = ApiKeys(tw, secret=SECRET)
    issued = keys.create("acct_9")
    with wsgi_client(django_app(tw, api_keys=keys)) as client:
        answers = [client.get("/v1/geocode") for _ in range(4)]
        keyed = client.get("/v1/geocode", headers={"Authorization": f"Bearer {issued.key}"})
        health = [client.get("/health") for _ in range(5)]
        missing = client.get("/v1/nowhere")
        wrong_method = client.post("/v1/geocode")
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].content == b"ok"
    assert [parsed(a.headers["ratelimit"])["hourly"]["r"] for a in answers] == [2, 1, 0, 0]
    assert parsed(answers[0].headers["ratelimit-policy"])["hourly"] == {"q": 3, "w": 3600}
    assert_quota_exceeded(answers[3], "hourly")
    assert keyed.status_code == 200 and parsed(keyed.headers["ratelimit"])["hourly"]["r"] == 2
    assert all(a.status_code == 200 and "ratelimit" not in a.headers for a in health)
    assert missing.status_code == 404 and "ratelimit" not in missing.headers
    assert wrong_method.status_code == 405 and "ratelimit" not in wrong_method.headers
    assert tw.usage(PEER_SUBJECT).limit("hourly").used == 3
    assert tw.usage("acct_9").limit("hourly").used == 1


# =========================================================================== bad input

LONG = "a" * 10_000
BIG_KEY = "tw_" + "k" * 8192
# (method, path, headers): each must be refused with a 4xx by the gate, or reach the app and get
# its own 404/405, and never consume.
BAD_REQUESTS: list[tuple[str, str, list[tuple[bytes, bytes]]]] = [
    ("GET", "/v1/geocode", [(b"authorization", b"Bearer ")]),
    ("GET", "/v1/geocode", [(b"authorization", b"Bearer     ")]),
    ("GET", "/v1/geocode", [(b"authorization", b"bEaReR not-a-key")]),
    ("GET", "/v1/geocode", [(b"authorization", b"Bearer tw_short_key")]),
    ("GET", "/v1/geocode", [(b"authorization", b"Bearer tw_abcdefgh_" + b"x" * 43 + b" more")]),
    ("GET", "/v1/geocode", [(b"authorization", b"Bearer " + BIG_KEY.encode())]),
    ("GET", "/v1/geocode", [(b"x-api-key", BIG_KEY.encode())]),
    ("GET", "/v1/geocode", [(b"x-api-key", b"")]),
    ("GET", "/v1/geocode", [(b"x-api-key", b"tw_\xff\xfe\x80")]),
    ("GET", "/v1/geocode", [(b"authorization", b"Bearer \xc3\x28\xa0\xa1")]),
    ("GET", "/v1/geocode", [(b"x-api-key", b"\x00\x01\x02")]),
    ("GET", "/%00", []),
    ("GET", "//v1//geocode", []),
    ("GET", "/v1/geocode/" + LONG, []),
    ("GET", "/" + LONG, []),
    ("GET", "/v1/%2e%2e/v1/geocode", []),
    ("BREW", "/v1/geocode", []),
    ("PROPFIND", "/v1/geocode", []),
    ("DELETE", "/v1/geocode", []),
]
IDS = [f"{m} {p[:24]} {h[0][0].decode() if h else ''}".strip() for m, p, h in BAD_REQUESTS]


@pytest.mark.parametrize("face", ["fastapi", "starlette-sync"])
async def test_bad_input_to_the_asgi_middleware_is_4xx_and_consumes_nothing(face: str) -> None:
    tw: AsyncTollway | Tollway
    tw = AsyncTollway(POLICY, clock=FakeClock()) if face == "fastapi" else Tollway(POLICY)
    owner = "acct_1"
    keys = ApiKeys(Tollway(POLICY), secret=SECRET)  # no key of it is ever presented whole
    keys.create(owner)
    app = fastapi_with_middleware(tw, api_keys=keys)
    async with asgi_client(app) as client:
        for method, path, headers in BAD_REQUESTS:
            answer = await client.request(method, path, headers=headers)
            assert 400 <= answer.status_code < 500, (method, path, headers[:1], answer)
            if answer.status_code == 401:
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.headers["www-authenticate"].startswith("Bearer")
            assert "ratelimit" not in answer.headers
        served = await client.get("/v1/geocode", headers=[(b"x-forwarded-for", b"\xff\xfe, ::")])
    assert served.status_code == 200  # garbage in another header is not the gate's business
    usage = tw.usage(PEER_SUBJECT) if isinstance(tw, Tollway) else await tw.usage(PEER_SUBJECT)
    assert usage.limit("hourly").used == 1  # only the last request, counted as the peer


def call_wsgi(
    app: Callable[..., Iterable[bytes]],
    method: str,
    path: str,
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[int, dict[str, str], bytes]:
    """One request through a WSGI app with a PEP 3333 environ built by hand (header values are
    latin-1 decoded, as a server does; httpx's WSGITransport only sends ASCII)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER,
        "HTTP_HOST": "testserver",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        environ["HTTP_" + name.decode("latin-1").upper().replace("-", "_")] = value.decode(
            "latin-1"
        )
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc: Any = None
    ) -> Any:
        started.append((status, response_headers))
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, response_headers = started[-1]
    return int(status.split()[0]), {k.lower(): v for k, v in response_headers}, body


def test_bad_input_to_the_django_app_is_4xx_and_consumes_nothing() -> None:
    tw = Tollway(POLICY, clock=FakeClock())
    keys = ApiKeys(tw, secret=SECRET)
    keys.create("acct_1")
    app = django_app(tw, api_keys=keys)
    for method, path, headers in BAD_REQUESTS:
        # WSGI servers give PATH_INFO percent-decoded, as latin-1 text.
        wsgi_path = httpx.URL("http://testserver" + path).path
        status, response_headers, _ = call_wsgi(app, method, wsgi_path, headers)
        assert 400 <= status < 500, (method, path, headers[:1], status)
        assert "ratelimit" not in response_headers
    with wsgi_client(app) as client:  # ASCII bad input through httpx as well
        ascii_only = [r for r in BAD_REQUESTS if all(v.isascii() for _, v in r[2])]
        for method, path, headers in ascii_only:
            answer = client.request(method, path, headers=headers)
            assert 400 <= answer.status_code < 500, (method, path, answer)
        served = client.get("/v1/geocode")
    assert served.status_code == 200
    assert tw.usage(PEER_SUBJECT).limit("hourly").used == 1
    assert tw.usage("acct_1").limit("hourly").used == 0
