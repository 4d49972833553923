"""Eight processes geocoding at once through one route on one Redis (standalone and cluster).

Each process (``spawn``) has its own `Geocoder` and its own cache file, and geocodes
addresses of its own (so no cache hides a call), against the same three stub providers,
which run in the test's process and count what they serve. The providers' quotas and budget
allow fewer calls than there are addresses: every provider must end exactly full, never one
call over, each stub must have served exactly what the route counted, and a provider further
down the route is only used when the ones before it had no room.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from geocode_support import ENV, policy, provider
from model import day_safe_timezone
from tollway import Tollway
from tollway.outbound.geocode.geocoder import Geocoder, adapters_from_policy
from tollway.outbound.geocode.stubs import StubServer, running_stubs, stub_place

PROCESSES = 8
EACH = 16  # addresses per process: 128 in all, for 40 + 20 + 30 = 90 calls of room
ROOM = {"opencage": 40, "google": 20, "here": 30}


@dataclass(frozen=True)
class Row:
    """One outcome, in plain values (a child sends these back through a queue)."""

    query: str
    status: str
    provider: str | None
    skipped: tuple[tuple[str, str], ...]
    error: str
    amount: int | None
    lat: float | None


def _worker(
    url: str,
    doc: dict[str, Any],
    cache: str,
    queries: list[str],
    barrier: Any,
    results: Any,
) -> None:
    try:
        with Tollway(doc, url) as tw:
            built = adapters_from_policy(
                tw.policy, tw.policy.routes["geocoding"].providers, env=ENV
            )
            with Geocoder(tw, adapters=built, cache=cache) as geocoder:
                geocoder.route.status()  # connect, load the scripts: the race starts at the barrier
                barrier.wait()
                rows = []
                for query in queries:
                    outcome = geocoder.geocode(query)
                    rows.append(
                        Row(
                            query,
                            outcome.status,
                            outcome.provider,
                            tuple((s.provider, s.reason) for s in outcome.skipped),
                            outcome.error,
                            None if outcome.decision is None else outcome.decision.amount,
                            None if outcome.result is None else outcome.result.lat,
                        )
                    )
        results.put(rows)
    except BaseException as exc:  # report it: a silent child would only show as a timeout
        results.put(exc)
        raise


@pytest.fixture(params=["standalone", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "standalone":
        request.getfixturevalue("redis_client")  # flushed
        return str(request.getfixturevalue("redis_url"))
    request.getfixturevalue("redis_cluster_client")  # flushed
    return str(request.getfixturevalue("redis_cluster_url"))


@pytest.fixture
def stubs() -> Iterator[dict[str, StubServer]]:
    with running_stubs(["opencage", "google", "here"]) as running:
        for stub in running.values():
            stub.slow(0.003, 1_000_000)  # a few calls are out at once, as with real providers
        yield running


def route_policy(stubs: dict[str, StubServer]) -> dict[str, Any]:
    return policy(
        {
            "opencage": provider(
                stubs["opencage"], price="0 USD", limits=[{"name": "daily", "quota": "40/day"}]
            ),
            "google": provider(
                stubs["google"],
                price="0.005 USD",
                limits=[
                    {"name": "qps", "rate": "1000/s"},
                    {"name": "budget", "budget": "0.10 USD/day"},
                ],
            ),
            "here": provider(
                stubs["here"], price="0.001 USD", limits=[{"name": "daily", "quota": "30/day"}]
            ),
        },
        timezone=day_safe_timezone(),
        store={"timeout_ms": 5000, "on_error": "closed"},
    )


def geocode_in_parallel(url: str, doc: dict[str, Any], tmp_path: Path) -> list[Row]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES, timeout=60)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                url,
                doc,
                str(tmp_path / f"cache-{i}.sqlite"),
                [f"{n} Process-{i} Street" for n in range(EACH)],
                barrier,
                results,
            ),
        )
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    rows: list[Row] = []
    try:
        for _ in procs:
            got = results.get(timeout=120)
            if isinstance(got, BaseException):
                raise AssertionError(f"a worker failed: {got!r}") from got
            rows += got
    except queue.Empty:
        raise AssertionError("the workers did not finish within 120 s") from None
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():  # only our own children, by their handle
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    return rows


def test_eight_processes_fill_every_provider_exactly_in_route_order(
    url: str, stubs: dict[str, StubServer], tmp_path: Path
) -> None:
    doc = route_policy(stubs)
    rows = geocode_in_parallel(url, doc, tmp_path)
    assert len(rows) == PROCESSES * EACH
    assert len({r.query for r in rows}) == PROCESSES * EACH
    # the processes really raced: opencage's 40 calls went to several of them
    assert len({r.query.split()[1] for r in rows if r.provider == "opencage"}) > 1

    # Every provider exactly full: demand exceeded each one's room.
    paid = Counter(r.provider for r in rows if r.status == "ok")
    assert paid == ROOM
    assert Counter(r.status for r in rows) == {
        "ok": sum(ROOM.values()),
        "failed": PROCESSES * EACH - sum(ROOM.values()),
    }
    status = Tollway(doc, url).route("geocoding").status()
    assert status["opencage"].limit("daily").used == 40
    assert status["opencage"].limit("daily").remaining == 0
    assert status["google"].limit("budget").used == Decimal("0.100")
    assert status["google"].limit("budget").remaining == Decimal("0")
    assert status["here"].limit("daily").used == 30
    # ...and every counted call is one the stub served, no more, no fewer, none refused.
    for kind, stub in stubs.items():
        assert stub.served == stub.calls == ROOM[kind]
        assert sorted(stub.queries) == sorted(r.query for r in rows if r.provider == kind)
    # Money to the micro-dollar, from the calls' own decisions.
    assert sum(r.amount or 0 for r in rows if r.provider == "google") == 100_000
    for row in rows:
        if row.status == "ok":
            assert row.lat == stub_place(row.query).lat  # each got its own answer

    # Route order: a call went to google only when opencage had no room, to here only when
    # neither had; the last rows found nobody with room, and say so for each provider.
    for row in rows:
        if row.provider == "opencage":
            assert row.skipped == ()
        elif row.provider == "google":
            assert row.skipped == (("opencage", "daily"),)
        elif row.provider == "here":
            assert row.skipped == (("opencage", "daily"), ("google", "budget"))
        else:
            assert row.status == "failed"
            assert row.skipped == (("opencage", "daily"), ("google", "budget"), ("here", "daily"))
            assert row.error.startswith("route 'geocoding': no provider can take the call")
            for name in ("opencage: daily", "google: budget", "here: daily"):
                assert name in row.error
