"""A request id read from a header (``request_id="Idempotency-Key"``): a retried request is
counted once, and its usage event carries that id. ASGI (Starlette), WSGI (Flask) and the
FastAPI dependency, driven by httpx; the memory store with a SQLite ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from test_middleware import POLICY, asgi_client, flask_app
from tollway import Tollway
from tollway.errors import ConfigurationError
from tollway.fastapi import install, limit
from tollway.testing import FakeClock

SUBJECT = "ip:203.0.113.7"


def metered(tmp_path: Path) -> Tollway:
    doc: dict[str, Any] = {**POLICY, "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}"}}
    return Tollway(doc, clock=FakeClock())


def ledger_ids(tw: Tollway) -> list[str]:
    tw.flush()
    rows = tw.ledger._fetch("SELECT id FROM usage_events ORDER BY id", [])
    return [str(row[0]) for row in rows]


async def test_asgi_counts_a_retried_request_once(tmp_path: Path) -> None:
    tw = metered(tmp_path)
    async with asgi_client(tw, request_id="Idempotency-Key") as client:
        first = await client.get("/v1/geocode", headers={"Idempotency-Key": "req-1"})
        retried = await client.get("/v1/geocode", headers={"Idempotency-Key": "req-1"})
        other = await client.get("/v1/geocode", headers={"Idempotency-Key": "req-2"})
        plain = await client.get("/v1/geocode")
        full = await client.get("/v1/geocode", headers={"Idempotency-Key": "req-3"})
        again = await client.get("/v1/geocode", headers={"Idempotency-Key": "req-1"})
    assert [a.status_code for a in (first, retried, other, plain, full, again)] == [
        200, 200, 200, 200, 429, 200
    ]  # fmt: skip
    assert tw.usage(SUBJECT).limit("hourly").used == 3  # req-1 once, req-2, and the plain one
    ids = ledger_ids(tw)
    assert len(ids) == 3 and {"req-1", "req-2"} <= set(ids)


@pytest.mark.parametrize(
    "value", ["", "has space", "x" * 256, "caf\u00e9"], ids=["empty", "space", "long", "utf8"]
)
async def test_a_bad_request_id_is_a_400_and_consumes_nothing(tmp_path: Path, value: str) -> None:
    tw = metered(tmp_path)
    async with asgi_client(tw, request_id="Idempotency-Key") as client:
        answer = await client.get("/v1/geocode", headers={"Idempotency-Key": value.encode()})
    assert answer.status_code == 400
    assert "the idempotency-key header is not a request id" in answer.text
    assert tw.usage(SUBJECT).limit("hourly").used == 0


def test_wsgi_counts_a_retried_request_once(tmp_path: Path) -> None:
    tw = metered(tmp_path)
    app = flask_app(tw, request_id="X-Request-Id")
    transport = httpx.WSGITransport(app=app, remote_addr="203.0.113.7")
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        codes = [
            client.get("/v1/geocode", headers={"X-Request-Id": "w-1"}).status_code for _ in range(3)
        ]
    assert codes == [200, 200, 200]
    assert tw.usage(SUBJECT).limit("hourly").used == 1
    assert ledger_ids(tw) == ["w-1"]


async def test_the_fastapi_dependency_reads_the_request_id(tmp_path: Path) -> None:
    tw = metered(tmp_path)
    app = FastAPI()
    install(app, tw)

    @app.get("/v1/geocode", dependencies=[Depends(limit("geocode", request_id="Idempotency-Key"))])
    async def geocode() -> dict[str, str]:
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        codes = [
            (await client.get("/v1/geocode", headers={"Idempotency-Key": "f-1"})).status_code
            for _ in range(4)
        ]
        bad = await client.get("/v1/geocode", headers={"Idempotency-Key": "a b"})
    assert codes == [200, 200, 200, 409]  # the first, two repeats, then reused too often
    assert bad.status_code == 400
    assert tw.usage(SUBJECT).limit("hourly").used == 1
    assert ledger_ids(tw) == ["f-1"]


def test_a_bad_header_name_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="request_id: 'Idempotency Key' is not a header"):
        asgi_client(metered(tmp_path), request_id="Idempotency Key")
