"""`tw.record` / `tw.flush`: usage measured elsewhere, into the ledger once per id.

SQLite files under tmp_path and a real PostgreSQL (started by the test setup); the clock is
a `FakeClock`, so the lateness window moves without sleeping.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from servers import PostgresServer
from tollway import AsyncTollway, ConfigurationError, InvalidArgumentError, Tollway
from tollway.errors import LedgerUnavailableError
from tollway.testing import FakeClock

START = datetime(2026, 6, 10, 12, 0, tzinfo=timezone.utc)
US = 1_000_000


def policy(url: str, lateness_s: int = 3600) -> dict[str, Any]:
    return {"ledger": {"url": url, "lateness_s": lateness_s}}


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'usage.db'}"
        return
    make: Callable[[], PostgresServer] = request.getfixturevalue("make_postgres_server")
    yield make().url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def window(tw: Tollway, subject: str) -> dict[str, Any]:
    start, end = (
        int((START - timedelta(days=2)).timestamp() * US),
        int((START + timedelta(days=2)).timestamp() * US),
    )
    return tw.ledger.totals(subject, start, end)


def test_recorded_usage_reaches_the_ledger_once_per_id(ledger_url: str, clock: FakeClock) -> None:
    with Tollway(policy(ledger_url), clock=clock) as tw:
        tw.record("acct_42", "geocode", 3, id="req-1", amount=Decimal("0.015"), currency="USD")
        tw.record("acct_42", "geocode", 2, id="req-2", occurred_at=START - timedelta(minutes=30))
        tw.record("acct_42", "geocode", 3, id="req-1", amount=Decimal("0.015"), currency="USD")
        assert tw.flush() == 2  # the repeat of req-1 is the same event: counted once
        tw.record("acct_42", "geocode", 3, id="req-1", amount=Decimal("0.015"), currency="USD")
        assert tw.flush() == 0  # retried later: still once
        totals = window(tw, "acct_42")["geocode"]
        assert (totals.quantity, totals.events, totals.amount) == (5, 2, Decimal("0.015"))
        assert tw.flush() == 0  # nothing queued


def test_generated_ids_are_unique_and_time_ordered(tmp_path: Path, clock: FakeClock) -> None:
    with Tollway(policy(f"sqlite:///{tmp_path / 'u.db'}"), clock=clock) as tw:
        ids = []
        for _ in range(50):
            ids.append(tw.record("acct", "calls", 1).id)
            clock.advance(0.001)
        assert len(set(ids)) == 50
        assert ids == sorted(ids)
        assert tw.flush() == 50


def test_the_lateness_window_refuses_old_events_and_queues_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    with Tollway(policy(f"sqlite:///{tmp_path / 'u.db'}", lateness_s=600), clock=clock) as tw:
        tw.record("acct", "calls", 1, occurred_at=START - timedelta(seconds=599))
        with pytest.raises(InvalidArgumentError, match=r"older than the lateness window \(600 s"):
            tw.record("acct", "calls", 1, occurred_at=START - timedelta(seconds=601))
        with pytest.raises(InvalidArgumentError, match="ahead of this clock"):
            tw.record("acct", "calls", 1, occurred_at=START + timedelta(hours=1))
        clock.advance(3600)  # the window moves with the clock
        with pytest.raises(InvalidArgumentError, match="older than the lateness window"):
            tw.record("acct", "calls", 1, occurred_at=START)
        assert tw.flush() == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantity": -1}, "quantity: -1; expected a whole number"),
        ({"quantity": 1.5}, "quantity: 1.5"),
        ({"quantity": True}, "quantity: True"),
        ({"amount": 0.5, "currency": "USD"}, "money is never a float"),
        ({"amount": Decimal("1.00")}, "currency: missing"),
        ({"currency": "USD"}, "without an amount"),
        ({"occurred_at": datetime(2026, 6, 10, 12)}, "timezone-aware"),
        ({"attributes": {"ratio": 0.5}}, "attributes"),
        ({"subject": "a\nb"}, "subject"),
        ({"subject": "@provider:google"}, "reserved for the providers"),
    ],
)
def test_bad_input_is_refused_clearly_and_queues_nothing(
    tmp_path: Path, clock: FakeClock, kwargs: dict[str, Any], message: str
) -> None:
    with Tollway(policy(f"sqlite:///{tmp_path / 'u.db'}"), clock=clock) as tw:
        args: dict[str, Any] = {"subject": "acct", "meter": "calls", "quantity": 1, **kwargs}
        with pytest.raises(InvalidArgumentError, match=message):
            tw.record(**args)
        assert tw.flush() == 0


def test_no_ledger_configured_is_a_clear_error(clock: FakeClock) -> None:
    with Tollway({}, clock=clock) as tw:
        tw.record("acct", "calls", 1)
        with pytest.raises(ConfigurationError, match=r"no \[ledger\] url"):
            tw.flush()
        tw._recorder.take()  # type: ignore[union-attr]  # let close() finish quietly


def test_a_flush_that_fails_loses_nothing_and_doubles_nothing(
    make_postgres_server: Callable[[], PostgresServer], clock: FakeClock
) -> None:
    server = make_postgres_server()
    with Tollway(policy(server.url), clock=clock) as tw:
        tw.record("acct", "calls", 1, id="a")
        assert tw.flush() == 1
        tw.record("acct", "calls", 2, id="b")
        tw.record("acct", "calls", 3, id="c")
        server.kill()
        with pytest.raises(LedgerUnavailableError):
            tw.flush()
        server.start()
        tw.record("acct", "calls", 2, id="b")  # the caller retried it meanwhile
        assert tw.flush() == 2  # b and c, each once
        totals = window(tw, "acct")["calls"]
        assert (totals.quantity, totals.events) == (6, 3)


def test_close_flushes_what_is_queued(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    with Tollway(policy(url), clock=clock) as tw:
        tw.record("acct", "calls", 4)
    with Tollway(policy(url), clock=clock) as again:
        assert window(again, "acct")["calls"].quantity == 4


async def test_the_async_face_records_and_flushes(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    async with AsyncTollway(policy(url), clock=clock) as atw:
        atw.record("acct", "calls", 2, id="x")
        atw.record("acct", "calls", 2, id="x")
        assert await atw.flush() == 1
        atw.record("acct", "calls", 5)
    with Tollway(policy(url), clock=clock) as tw:
        assert window(tw, "acct")["calls"].quantity == 7


def test_recorded_usage_can_name_its_plan_and_an_unknown_plan_is_refused(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "u.db"
    plans = {"pro": {"limits": [{"name": "hourly", "quota": "10/hour"}]}}
    with Tollway({**policy(f"sqlite:///{db}"), "plans": plans}, clock=clock) as tw:
        assert tw.record("acct", "geocode", 2, id="with-plan", plan="pro").plan == "pro"
        assert tw.record("acct", "geocode", 1, id="without").plan is None
        with pytest.raises(InvalidArgumentError, match=r"plan: 'team' is not a plan .* pro"):
            tw.record("acct", "geocode", 1, id="bad", plan="team")
        assert tw.flush() == 2  # the refused one queued nothing
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, plan FROM usage_events ORDER BY id").fetchall()
    assert rows == [("with-plan", "pro"), ("without", None)]
