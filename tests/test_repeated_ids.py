"""Issue 11 item 2: a reused request id never gets what the limits would refuse.

A request id (``id=``, or the ``request_id`` header of the HTTP faces) is scoped to (subject,
operation). A repeat of an allowed acquire, at the same cost and amount, is not counted again
against quotas or budgets (no second usage event) but takes rate-limit capacity, since the
handler runs again; it may come ``[ledger] max_repeats`` times within ``dedupe_s``, then it is
refused (``Decision.refused == "repeats"``, HTTP 409). Another cost or amount under a taken id
is a conflict (``"conflict"``, HTTP 422). A denied request records nothing: its repeat is
judged afresh. Memory (on a `FakeClock`), Redis standalone and a 3-master cluster; the sync
and async faces; the ASGI middleware and the FastAPI dependency driven by httpx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import Depends, FastAPI

import test_events as ev
from servers import RedisServer
from test_events import Backend, budget, policy, quota, unique
from test_middleware import POLICY, asgi_client
from tollway import Tollway
from tollway.errors import PolicyError
from tollway.fastapi import install, limit
from tollway.testing import FakeClock

backend = ev.backend
memory = ev.memory
redis_backend = ev.redis_backend


def _rate(burst: int, per: str = "s") -> dict[str, Any]:
    return {"name": "burst", "rate": f"1/{per}", "burst": burst}


# -- the Python API, every store ----------------------------------------------------------------


def test_fifty_repeats_against_a_quota_pass_max_repeats_plus_one(
    backend: Backend, tmp_path: Path
) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 8)]))
    subject = unique("acct")
    decisions = [tw.acquire(subject, "geocode", id="same") for _ in range(50)]
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 3  # the request and max_repeats (2) repeats
    assert [d.duplicate for d in allowed] == [False, True, True]
    assert tw.usage(subject).limit("daily").used == 1
    refused = decisions[3:]
    assert all(not d.allowed and d.refused == "repeats" for d in refused)
    assert refused[0].violated == ("repeats",) and refused[0].retry_after is None
    assert refused[0].reason is not None and "'same' was already repeated 2 times" in (
        refused[0].reason
    )
    assert refused[0].to_dict()["refused"] == "repeats"
    assert [e.id for e in backend.usage_events(tw, subject)] == ["same"]


def test_repeats_take_rate_capacity(backend: Backend, tmp_path: Path) -> None:
    """On Redis's own clock a rate of 1/h (burst 3) cannot refill during the test; the memory
    store's clock does not move: both are exact."""
    per = "s" if not backend.redis else "h"
    tw = backend.tollway(policy(tmp_path, [_rate(3, per), quota("daily", 100)], max_repeats=100))
    subject = unique("acct")
    decisions = [tw.acquire(subject, "geocode", id="same") for _ in range(50)]
    assert sum(d.allowed for d in decisions) == 3
    assert all(d.violated == ("burst",) and d.refused is None for d in decisions[3:])
    assert tw.usage(subject).limit("daily").used == 1
    assert len(backend.usage_events(tw, subject)) == 1


def test_a_rate_refills_for_repeats_on_the_injected_clock(memory: Backend, tmp_path: Path) -> None:
    tw = memory.tollway(policy(tmp_path, [_rate(3), quota("daily", 100)], max_repeats=100))
    subject = unique("acct")
    assert sum(tw.acquire(subject, "geocode", id="r").allowed for _ in range(10)) == 3
    memory.clock.advance(1)
    again = [tw.acquire(subject, "geocode", id="r") for _ in range(10)]
    assert [d.allowed for d in again].count(True) == 1 and again[0].duplicate
    assert tw.usage(subject).limit("daily").used == 1


def test_repeats_against_a_budget_are_not_spent_again(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, [budget("spend", "0.02 USD")]))
    subject = unique("acct")
    passed = sum(tw.acquire(subject, "geocode", id="b").allowed for _ in range(50))
    assert passed == 3
    assert tw.usage(subject).limit("spend").used == Decimal("0.005")
    assert len(backend.usage_events(tw, subject)) == 1


def test_the_same_id_on_another_operation_is_a_new_request(
    backend: Backend, tmp_path: Path
) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)]))
    subject = unique("acct")
    first = tw.acquire(subject, "geocode", id="x")
    other = tw.acquire(subject, "ping", id="x")
    assert first.allowed and other.allowed and not other.duplicate
    assert tw.acquire(subject, "geocode", id="x").duplicate
    assert tw.acquire(subject, "ping", id="x").duplicate
    assert tw.usage(subject).limit("daily").used == 2
    # one usage event per (subject, operation, id), with distinct event ids for the ledger
    events = backend.usage_events(tw, subject)
    assert [(e.operation, e.id) for e in events] == [("geocode", "x"), ("ping", "x~ping")]


def test_an_event_id_already_taken_by_a_caller_gets_a_fresh_one(
    backend: Backend, tmp_path: Path
) -> None:
    """``x~ping`` used as a plain id first: the ping under ``x`` still gets an event id of
    its own, so the ledger cannot drop it as a conflict."""
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)]))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", id="x").allowed
    assert tw.acquire(subject, "geocode", id="x~ping").allowed
    assert tw.acquire(subject, "ping", id="x").allowed
    ids = [e.id for e in backend.usage_events(tw, subject)]
    assert ids[:2] == ["x", "x~ping"] and len(set(ids)) == 3
    assert tw.usage(subject).limit("daily").used == 3


def test_another_cost_or_amount_under_a_taken_id_is_a_conflict(
    backend: Backend, tmp_path: Path
) -> None:
    limits = [quota("daily", 100), budget("spend", "5.00 USD", operations=["search"])]
    tw = backend.tollway(policy(tmp_path, limits))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", 1, id="c").allowed
    conflict = tw.acquire(subject, "geocode", 5, id="c")
    assert not conflict.allowed and conflict.refused == "conflict"
    assert conflict.violated == ("conflict",) and conflict.reason is not None
    assert "another cost or amount" in conflict.reason
    assert tw.acquire(subject, "search", amount=Decimal("0.01"), id="m").allowed
    cheap_then_dear = tw.acquire(subject, "search", amount=Decimal("4.00"), id="m")
    assert cheap_then_dear.refused == "conflict"
    assert tw.acquire(subject, "search", amount=Decimal("0.01"), id="m").duplicate
    usage = tw.usage(subject)
    assert usage.limit("daily").used == 1 + 2
    assert usage.limit("spend").used == Decimal("0.01")


def test_a_denied_request_is_judged_afresh(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 1)]))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", id="a").allowed
    for _ in range(5):  # never remembered: neither a repeat nor refused for repeats
        denied = tw.acquire(subject, "geocode", id="b")
        assert not denied.allowed and not denied.duplicate and denied.violated == ("daily",)
    tw.reset(subject)
    taken = tw.acquire(subject, "geocode", id="b")
    assert taken.allowed and not taken.duplicate


def test_zero_repeats_refuses_every_repeat(memory: Backend, tmp_path: Path) -> None:
    tw = memory.tollway(policy(tmp_path, [quota("daily", 10)], max_repeats=0))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", id="z").allowed
    assert tw.acquire(subject, "geocode", id="z").refused == "repeats"


def test_after_the_dedupe_window_the_id_is_new_again(memory: Backend, tmp_path: Path) -> None:
    tw = memory.tollway(policy(tmp_path, [quota("daily", 10)], dedupe_s=60, max_repeats=1))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", id="w").allowed
    assert tw.acquire(subject, "geocode", id="w").duplicate
    assert tw.acquire(subject, "geocode", id="w").refused == "repeats"
    memory.clock.advance(61)
    fresh = tw.acquire(subject, "geocode", id="w")
    assert fresh.allowed and not fresh.duplicate
    assert tw.usage(subject).limit("daily").used == 2
    assert tw.acquire(subject, "geocode", id="w").duplicate  # counted from its new take


def test_redis_keeps_a_scoped_record_for_dedupe_s(redis_backend: Backend, tmp_path: Path) -> None:
    tw = redis_backend.tollway(policy(tmp_path, [quota("daily", 10)], dedupe_s=120))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", id="r").allowed
    assert tw.acquire(subject, "geocode", id="r").duplicate
    key = "tw:{" + subject + "}:rq:7:geocode:r"
    record = redis_backend.client.hgetall(key)
    assert record == {b"f": b"1/5000", b"n": b"1"}
    assert 110_000 < redis_backend.client.pttl(key) <= 120_000


async def test_the_async_face_shares_the_logic(backend: Backend, tmp_path: Path) -> None:
    tw = backend.async_tollway(policy(tmp_path, [quota("daily", 8)]))
    subject = unique("acct")
    try:
        decisions = [await tw.acquire(subject, "geocode", id="a") for _ in range(10)]
        assert sum(d.allowed for d in decisions) == 3
        assert decisions[3].refused == "repeats"
        assert (await tw.usage(subject)).limit("daily").used == 1
    finally:
        await ev._aclose(backend)


def test_the_ledger_holds_one_event_per_subject_operation_and_id(tmp_path: Path) -> None:
    doc = policy(tmp_path, [quota("daily", 100)])
    tw = Tollway(doc, clock=FakeClock())
    try:
        for subject in ("one", "two"):
            for operation in ("geocode", "ping"):
                for ident in ("i1", "i2"):
                    for _ in range(4):
                        tw.acquire(subject, operation, id=ident)
        tw.flush()
        rows = tw.ledger._fetch("SELECT subject, operation, id FROM usage_events", [])
        # subjects share ids: the ledger's key is the event id alone (see the report)
        per_subject = {(str(r[0]), str(r[1])) for r in rows}
        assert per_subject <= {(s, o) for s in ("one", "two") for o in ("geocode", "ping")}
        assert tw.usage("one").limit("daily").used == 4
        assert tw.usage("two").limit("daily").used == 4
        one = sorted((str(r[1]), str(r[2])) for r in rows if r[0] == "one")
        assert one == [
            ("geocode", "i1"),
            ("geocode", "i2"),
            ("ping", "i1~ping"),
            ("ping", "i2~ping"),
        ]
    finally:
        tw.close()


def test_max_repeats_is_checked_in_the_policy(tmp_path: Path) -> None:
    doc = policy(tmp_path, [quota("daily", 1)], max_repeats=-1)
    with pytest.raises(PolicyError, match=r"ledger\.max_repeats"):
        Tollway(doc, clock=FakeClock())


# -- over HTTP: the ASGI middleware and the FastAPI dependency ----------------------------------


def _metered(tmp_path: Path, count: int = 8) -> Tollway:
    doc: dict[str, Any] = {
        **POLICY,
        "plans": {"free": {"limits": [{"name": "hourly", "quota": f"{count}/hour"}]}},
        "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}"},
    }
    return Tollway(doc, clock=FakeClock())


async def test_asgi_fifty_requests_with_one_key_run_the_handler_three_times(
    tmp_path: Path,
) -> None:
    tw = _metered(tmp_path)
    async with asgi_client(tw, request_id="Idempotency-Key") as client:
        answers = [
            await client.get("/v1/geocode", headers={"Idempotency-Key": "k"}) for _ in range(50)
        ]
        other = await client.get("/v1/geocode", headers={"Idempotency-Key": "k2"})
    codes = [a.status_code for a in answers]
    assert codes[:3] == [200, 200, 200] and set(codes[3:]) == {409}
    assert other.status_code == 200
    refused = answers[3]
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["status"] == 409 and body["refused"] == "repeats"
    assert "already repeated 2 times" in body["detail"]
    assert "retry-after" not in refused.headers
    assert tw.usage("ip:203.0.113.7").limit("hourly").used == 2
    tw.flush()
    rows = tw.ledger._fetch("SELECT id FROM usage_events ORDER BY id", [])
    assert [str(r[0]) for r in rows] == ["k", "k2"]


async def test_fastapi_answers_a_reused_key_with_a_problem(tmp_path: Path) -> None:
    tw = _metered(tmp_path)
    app = FastAPI()
    install(app, tw)
    runs = 0

    @app.get("/v1/geocode", dependencies=[Depends(limit("geocode", request_id="Idempotency-Key"))])
    async def geocode() -> dict[str, str]:
        nonlocal runs
        runs += 1
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answers = [
            await client.get("/v1/geocode", headers={"Idempotency-Key": "f"}) for _ in range(50)
        ]
    assert runs == 3
    assert [a.status_code for a in answers].count(409) == 47
    assert answers[-1].json()["refused"] == "repeats"
    assert tw.usage("ip:203.0.113.7").limit("hourly").used == 1


async def test_a_key_reused_at_another_cost_is_a_422(tmp_path: Path) -> None:
    tw = _metered(tmp_path, 100)

    def cost(request: Any) -> int:
        return int(request.header(b"x-units") or b"1")

    async with asgi_client(tw, request_id="Idempotency-Key", costs={"geocode": cost}) as client:
        first = await client.get("/v1/geocode", headers={"Idempotency-Key": "c", "X-Units": "1"})
        dear = await client.get("/v1/geocode", headers={"Idempotency-Key": "c", "X-Units": "50"})
    assert first.status_code == 200
    assert dear.status_code == 422
    assert dear.json()["refused"] == "conflict"
    assert tw.usage("ip:203.0.113.7").limit("hourly").used == 1


# -- a request id let through while Redis was away ---------------------------------------------


def test_a_replayed_request_id_is_repeated_not_counted_again(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """Fail-open lets the id through and journals it; the replay (replay.lua) records the id
    on its operation as step.lua does, so the client's retry is a repeat, not a second take."""
    from test_failure import _policy, _until_recovered

    server = make_redis_server()
    doc = _policy(server.url, tmp_path / "journal")
    doc["ledger"] = {"url": f"sqlite:///{tmp_path / 'l.db'}"}
    tw = Tollway(doc)
    try:
        subject = unique("acct")
        assert tw.acquire(subject, "call").allowed
        with redis.Redis.from_url(server.url) as client:
            client.save()
        server.kill()
        let_through = tw.acquire(subject, "call", id="j")
        assert let_through.allowed and let_through.degraded
        server.start()
        _, polls = _until_recovered(lambda: tw.acquire(subject, "call"))
        expected = 3 + len(polls)  # before, the id, the recovery, and any degraded polls
        deadline = time.monotonic() + 10  # the journal is replayed (maybe in the background)
        while tw.usage(subject).limit("calls").used < expected:
            assert time.monotonic() < deadline, "the journal was not replayed within 10 s"
            time.sleep(0.02)
        retried = tw.acquire(subject, "call", id="j")
        assert retried.allowed and retried.duplicate
        assert tw.usage(subject).limit("calls").used == expected
    finally:
        tw.close()


def test_a_repeat_passes_a_quota_lowered_below_its_count(
    redis_backend: Backend, tmp_path: Path
) -> None:
    """A repeat needs no room in a quota: after the plan's quota is lowered below the
    window's count, a repeat is still a repeat (as in the memory store), a new id is denied."""
    subject = unique("acct")
    before = redis_backend.tollway(policy(tmp_path, [quota("daily", 10)]))
    assert all(before.acquire(subject, "geocode", id=f"n{i}").allowed for i in range(5))
    after = redis_backend.tollway(policy(tmp_path, [quota("daily", 3)]))
    repeat = after.acquire(subject, "geocode", id="n0")
    assert repeat.allowed and repeat.duplicate
    assert not after.acquire(subject, "geocode", id="new").allowed
    assert after.usage(subject).limit("daily").used == 5
