"""The ledger on a real PostgreSQL (started by the test setup) and on SQLite files.

Most tests run on both backends (``ledger`` is parametrized); the outage tests kill a private
PostgreSQL server of their own and start it again.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import logging
import os
import pickle
import random
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import psycopg
import pytest

from servers import PostgresServer, pg_handshake
from tollway.errors import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidUsageEventError,
    LedgerError,
    LedgerSchemaError,
    LedgerUnavailableError,
    TollwayError,
)
from tollway.metering.ledger import (
    SCHEMA_VERSION,
    AsyncPostgresLedger,
    AsyncSqliteLedger,
    Ledger,
    PostgresLedger,
    SqliteLedger,
    Totals,
    UsageEvent,
    open_async_ledger,
    open_ledger,
)
from tollway.metering.ledger.events import ATTRIBUTES_MAX_BYTES, COLUMNS
from tollway.metering.ledger.postgres import redact_url
from tollway.metering.ledger.schema import MIGRATIONS, pending

US = 1_000_000
HOUR = 3600 * US
DAY = 24 * HOUR
T0 = 1_717_200_000 * US  # 2024-06-01T00:00:00Z
NY = ZoneInfo("America/New_York")


def at(text: str, tz: ZoneInfo | timezone = timezone.utc) -> int:
    """Microseconds of a local wall-clock time (``2024-03-10T00:30``) in ``tz``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()) * US


def ev(n: int | str, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "id": f"evt-{n}",
        "subject": "acct_1",
        "operation": "geocode",
        "meter": "calls",
        "quantity": 1,
        "occurred_at_us": T0 + (n if isinstance(n, int) else 0),
        "recorded_at_us": T0 + (n if isinstance(n, int) else 0) + 500,
        "amount_micros": 5000,
        "currency": "USD",
        "plan": "pro",
        "policy_version": "v7",
        "limits": ("burst", "daily"),
        "attributes": {"region": "eu", "retries": 2, "cached": False},
    }
    values.update(fields)
    return UsageEvent(**values)


# =========================================================================== fixtures


def _with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "")
    query += urlencode({"options": f"-c search_path={schema}"}, quote_via=quote)
    return urlunsplit(parts._replace(query=query))


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A schema of its own in the session's PostgreSQL (dropped afterwards): the URL sets
    ``search_path`` to it, so every test starts on an empty ledger database."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield _with_search_path(postgres_url, schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with open_ledger(ledger_url) as opened:
        yield opened


def raw(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the ledger's database behind the ledger's back."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as pg:
        cur = pg.execute(sql, params or None)
        return cur.fetchall() if cur.description is not None else []


# =========================================================================== events


def test_event_round_trips_through_row_and_dict() -> None:
    event = ev(1, attributes={"b": "x", "a": 1, "ok": True}, limits=["one", "two"])
    assert event.limits == ("one", "two")
    assert list(event.attributes) == ["b", "a", "ok"]
    row = event.to_row()
    assert len(row) == len(COLUMNS)
    assert row[COLUMNS.index("attributes")] == '{"a":1,"b":"x","ok":true}'
    assert row[COLUMNS.index("limits")] == '["one","two"]'
    assert UsageEvent.from_row(row) == event
    assert UsageEvent.from_dict(event.to_dict()) == event
    assert pickle.loads(pickle.dumps(event)) == event
    assert copy.deepcopy(event) == event
    assert dataclasses.replace(event, quantity=3).to_row()[4] == 3
    assert dataclasses.replace(event, quantity=-3).quantity == -3  # a correction (migration 2)
    with pytest.raises(InvalidUsageEventError, match="quantity"):
        dataclasses.replace(event, quantity=-(2**63) - 1)
    with pytest.raises(TypeError):
        event.attributes["c"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        event.quantity = 2  # type: ignore[misc]


def test_minimal_event_has_no_money_plan_or_attributes() -> None:
    event = UsageEvent(
        id="e", subject="s", operation="o", meter="m", quantity=0, occurred_at_us=0,
        recorded_at_us=0,
    )  # fmt: skip
    assert (event.amount_micros, event.currency, event.plan, event.limits) == (None, None, None, ())
    assert dict(event.attributes) == {}
    assert UsageEvent.from_row(event.to_row()) == event


BAD_FIELDS: list[tuple[dict[str, Any], str, str]] = [
    ({"quantity": -(2**63) - 1}, "quantity", "out of range"),
    ({"quantity": 1.5}, "quantity", "expected an int"),
    ({"quantity": True}, "quantity", "expected an int"),
    ({"quantity": 2**63}, "quantity", "out of range"),
    ({"occurred_at_us": "2024-06-01"}, "occurred_at_us", "expected an int"),
    ({"amount_micros": 2**63}, "amount_micros", "out of range"),
    ({"amount_micros": None}, "currency", "go together"),
    ({"currency": None}, "currency", "go together"),
    ({"currency": "usd"}, "currency", "3 letters"),
    ({"subject": ""}, "subject", "is empty"),
    ({"subject": 42}, "subject", "expected a str"),
    ({"meter": "ca\x00lls"}, "meter", "NUL"),
    ({"operation": "x" * 300}, "operation", "at most 255"),
    ({"plan": "\udc80"}, "plan", "lone surrogate"),
    ({"limits": "daily"}, "limits", "not a sequence"),
    ({"limits": ("daily", "")}, "limits[1]", "is empty"),
    ({"attributes": ["a"]}, "attributes", "not a JSON object"),
    ({"attributes": {"ratio": 0.5}}, "attributes['ratio']", "float; expected str, int or bool"),
    ({"attributes": {"nested": {"a": 1}}}, "attributes['nested']", "dict"),
    ({"attributes": {"n": None}}, "attributes['n']", "NoneType"),
    ({"attributes": {1: "x"}}, "attributes", "key 1 is not a str"),
    ({"attributes": {"": "x"}}, "attributes['']", "key is empty"),
    ({"attributes": {"big": 2**64}}, "attributes['big']", "64-bit"),
    ({"attributes": {"blob": "x" * ATTRIBUTES_MAX_BYTES}}, "attributes", "at most 4096 bytes"),
]


@pytest.mark.parametrize(("change", "field", "words"), BAD_FIELDS)
def test_bad_event_is_refused_naming_the_field(
    change: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidUsageEventError) as caught:
        ev(7, **change)
    error = caught.value
    assert error.field == field
    assert error.event_id == "evt-7"
    assert words in str(error)
    assert str(error).startswith(f"usage event 'evt-7': {field}: ")
    assert isinstance(error, InvalidArgumentError)
    assert isinstance(error, ValueError)


def test_attribute_size_cap_counts_utf8_bytes() -> None:
    fits = "é" * ((ATTRIBUTES_MAX_BYTES - 20) // 2)
    ev(1, attributes={"k": fits})
    with pytest.raises(InvalidUsageEventError, match="bytes as JSON"):
        ev(1, attributes={"k": fits + "é" * 20})


def test_bad_ids_and_dicts() -> None:
    with pytest.raises(InvalidUsageEventError, match="id: '' is not an event id"):
        ev(1, id="")
    with pytest.raises(InvalidUsageEventError, match="at most 255"):
        ev(1, id="x" * 256)
    data = ev(3).to_dict()
    del data["meter"]
    with pytest.raises(InvalidUsageEventError, match="'evt-3': meter: missing"):
        UsageEvent.from_dict(data)
    with pytest.raises(InvalidUsageEventError, match="unknown key"):
        UsageEvent.from_dict({**ev(3).to_dict(), "colour": "red"})


# =========================================================================== inserts


def test_insert_then_the_same_batch_again_counts_once(ledger: Ledger) -> None:
    batch = [ev(i) for i in range(1000)]
    assert ledger.insert(batch) == 1000
    again = ledger.write(batch)
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 1000, ())
    assert ledger.count() == 1000
    totals = ledger.totals("acct_1", T0, T0 + DAY)
    assert totals == {"calls": Totals(1000, 5_000_000, 1000, "USD")}


def test_overlapping_batches_add_only_the_new_ids(ledger: Ledger) -> None:
    assert ledger.insert(ev(i) for i in range(100)) == 100
    result = ledger.write([ev(i) for i in range(50, 150)])
    assert (result.inserted, result.duplicates) == (50, 50)
    assert ledger.count() == 150


def test_repeats_inside_one_batch_are_written_once(ledger: Ledger) -> None:
    result = ledger.write([ev(1), ev(2), ev(1), ev(1)])
    assert (result.inserted, result.duplicates, result.conflicts) == (2, 2, ())
    assert ledger.count() == 2


def test_empty_batch_is_a_no_op(ledger: Ledger) -> None:
    assert ledger.insert([]) == 0
    assert ledger.count() == 0


def test_a_new_recorded_at_alone_is_a_duplicate_not_a_conflict(ledger: Ledger) -> None:
    ledger.insert([ev(1)])
    redelivered = ev(1, recorded_at_us=T0 + 10 * HOUR)
    result = ledger.write([redelivered])
    assert (result.inserted, result.duplicates, result.conflicts) == (0, 1, ())


def test_conflicting_payload_keeps_the_first_and_reports_it(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    assert ledger.insert([ev(1), ev(2)]) == 2
    with caplog.at_level(logging.WARNING, logger="tollway.ledger"):
        result = ledger.write([ev(1, quantity=9, attributes={"region": "us"}), ev(2), ev(3)])
    assert result.inserted == 1
    assert result.duplicates == 1
    assert [(c.event_id, c.fields) for c in result.conflicts] == [
        ("evt-1", ("quantity", "attributes"))
    ]
    assert "evt-1" in caplog.text and "quantity" in caplog.text
    assert ledger.totals("acct_1", T0, T0 + DAY)["calls"].quantity == 3  # 1 + 1 + 1
    # insert() reports only the count of new events
    assert ledger.insert([ev(2, meter="tokens")]) == 0


def test_conflict_inside_one_batch(ledger: Ledger) -> None:
    result = ledger.write([ev(1), ev(1, quantity=2)])
    assert result.inserted == 1
    assert [(c.event_id, c.fields) for c in result.conflicts] == [("evt-1", ("quantity",))]
    assert ledger.totals("acct_1", T0, T0 + DAY)["calls"].quantity == 1


def test_bool_and_int_attributes_are_different_payloads(ledger: Ledger) -> None:
    ledger.insert([ev(1, attributes={"flag": True})])
    result = ledger.write([ev(1, attributes={"flag": 1})])
    assert [c.fields for c in result.conflicts] == [("attributes",)]


def test_unicode_and_minimal_events_round_trip(ledger: Ledger) -> None:
    odd = ev(
        "ü",
        subject='acct "quoted"\t\\ tab',
        attributes={"name": "Zürich ✓", "line": "a\nb", "back\\slash": "\\N"},
        limits=('l"1', "l\\2"),
        amount_micros=None,
        currency=None,
        plan=None,
        policy_version=None,
    )
    assert ledger.insert([odd]) == 1
    assert ledger.write([odd]).duplicates == 1  # read back exactly: same payload
    assert ledger.totals(odd.subject, T0, T0 + 1) == {"calls": Totals(1, 0, 1, None)}


def test_a_batch_with_one_non_event_writes_nothing(ledger: Ledger) -> None:
    batch: list[Any] = [ev(i) for i in range(10)]
    batch.insert(5, ev(99).to_dict())
    with pytest.raises(InvalidUsageEventError, match=r"events\[5\]: a dict is not a UsageEvent"):
        ledger.insert(batch)
    assert ledger.count() == 0
    with pytest.raises(InvalidArgumentError):
        ledger.insert(ev(1))  # type: ignore[arg-type]


def test_a_batch_the_database_refuses_is_rolled_back_whole(ledger: Ledger) -> None:
    ledger.insert([ev("before")])
    broken = ev("broken")
    object.__setattr__(broken, "currency", None)  # past validation: the CHECK refuses it
    batch = [ev(i) for i in range(500)] + [broken]
    with pytest.raises(LedgerError):
        ledger.insert(batch)
    assert ledger.count() == 1
    assert ledger.insert(batch[:-1]) == 500  # and the ledger goes on working


# =========================================================================== totals


def test_totals_per_meter_in_a_half_open_range(ledger: Ledger) -> None:
    ledger.insert(
        [
            ev(1, quantity=2),
            ev(2, meter="tokens", quantity=700, amount_micros=None, currency=None),
            ev(3, operation="search", amount_micros=2_000_000),
            ev(4, subject="acct_2"),
            ev(5, occurred_at_us=T0 + DAY),  # at the end: excluded
            ev(6, occurred_at_us=T0 - 1),  # before the start: excluded
            ev(7, meter="tokens", quantity=300, amount_micros=None, currency=None),
        ]
    )
    totals = ledger.totals("acct_1", T0, T0 + DAY)
    assert totals == {
        "calls": Totals(quantity=3, amount_micros=2_005_000, events=2, currency="USD"),
        "tokens": Totals(quantity=1000, amount_micros=0, events=2, currency=None),
    }
    assert str(totals["calls"].amount) == "2.005"
    assert ledger.totals("acct_1", T0, T0 + DAY, meter="tokens") == {"tokens": totals["tokens"]}
    assert ledger.totals("acct_1", T0, T0 + DAY, operation="search") == {
        "calls": Totals(1, 2_000_000, 1, "USD")
    }
    assert ledger.totals("nobody", T0, T0 + DAY) == {}
    assert ledger.totals("acct_1", T0, T0) == {}


def test_totals_with_some_events_unpriced(ledger: Ledger) -> None:
    ledger.insert([ev(1), ev(2, amount_micros=None, currency=None)])
    assert ledger.totals("acct_1", T0, T0 + DAY) == {"calls": Totals(2, 5000, 2, "USD")}


def test_two_currencies_in_one_meter_cannot_be_added(ledger: Ledger) -> None:
    ledger.insert([ev(1), ev(2, currency="EUR")])
    with pytest.raises(LedgerError, match="both"):
        ledger.totals("acct_1", T0, T0 + DAY)


def test_totals_as_of_leave_out_events_recorded_later(ledger: Ledger) -> None:
    invoice_at = T0 + DAY + HOUR  # the day's invoice was drawn up then
    ledger.insert([ev(1, recorded_at_us=T0 + 10), ev(2, recorded_at_us=T0 + HOUR)])
    before = ledger.totals("acct_1", T0, T0 + DAY, as_of=invoice_at)
    assert before["calls"].quantity == 2
    # a late event: occurred in the day, recorded after the invoice
    ledger.insert([ev(3, quantity=5, recorded_at_us=invoice_at + HOUR)])
    assert ledger.totals("acct_1", T0, T0 + DAY, as_of=invoice_at) == before
    assert ledger.totals("acct_1", T0, T0 + DAY)["calls"].quantity == 7
    assert ledger.totals("acct_1", T0, T0 + DAY, as_of=invoice_at + HOUR)["calls"].quantity == 7
    # as_of is inclusive, and a cut before everything leaves nothing
    assert ledger.totals("acct_1", T0, T0 + DAY, as_of=T0 + 10)["calls"].quantity == 1
    assert ledger.totals("acct_1", T0, T0 + DAY, as_of=T0) == {}


def test_totals_refuse_bad_ranges(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgumentError, match="before start_us"):
        ledger.totals("acct_1", T0, T0 - 1)
    with pytest.raises(InvalidArgumentError, match=r"end: 1\.5 is a float; expected a timezone"):
        ledger.totals("acct_1", T0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="subject"):
        ledger.totals(None, T0, T0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"start: 2026-12-01T00:00:00 has no timezone"):
        ledger.totals("acct_1", datetime(2026, 12, 1), T0)


def test_totals_take_aware_datetimes(ledger: Ledger) -> None:
    """start, end and as_of as datetimes in any timezone mean the same instants as microseconds."""
    ledger.insert([ev(5), ev(DAY - 1), ev(DAY)])
    paris = ZoneInfo("Europe/Paris")
    start = datetime.fromtimestamp(T0 / 1e6, tz=timezone.utc).astimezone(paris)
    end = datetime.fromtimestamp((T0 + DAY) / 1e6, tz=timezone.utc)
    by_datetime = ledger.totals("acct_1", start=start, end=end)
    assert by_datetime == ledger.totals("acct_1", T0, T0 + DAY)
    assert by_datetime["calls"].quantity == 2
    assert ledger.totals("acct_1", start=start, end=end, as_of=start) == {}


# =========================================================================== periods


def test_days_in_new_york_across_spring_forward(ledger: Ledger) -> None:
    # 2024-03-10: New York springs forward at 02:00 EST -> 03:00 EDT; the day has 23 hours.
    ledger.insert(
        [
            ev("a", occurred_at_us=at("2024-03-09T23:59:59", NY)),
            ev("b", occurred_at_us=at("2024-03-10T00:00:00", NY), quantity=2),
            ev("c", occurred_at_us=at("2024-03-10T23:30:00", NY), quantity=3),  # 03:30Z next day
            ev("d", occurred_at_us=at("2024-03-11T00:10:00", NY), quantity=4),
        ]
    )
    start, end = at("2024-03-09T00:00:00", NY), at("2024-03-12T00:00:00", NY)
    days = ledger.usage("acct_1", start, end, period="day", tz="America/New_York")
    assert [d.label for d in days] == ["2024-03-09", "2024-03-10", "2024-03-11"]
    assert [(d.end_us - d.start_us) // HOUR for d in days] == [24, 23, 24]
    assert [d.totals["calls"].quantity for d in days] == [1, 5, 4]
    # the same instants in UTC days split differently
    utc = ledger.usage("acct_1", start, end, period="day", tz="UTC")
    assert sum(d.totals.get("calls", Totals()).quantity for d in utc) == 10
    assert [d.totals.get("calls", Totals()).quantity for d in utc] != [1, 5, 4]


def test_days_in_new_york_across_fall_back(ledger: Ledger) -> None:
    # 2024-11-03: 02:00 EDT -> 01:00 EST; the day has 25 hours and 01:30 happens twice.
    first_130 = at("2024-11-03T05:30:00")  # 01:30 EDT
    second_130 = at("2024-11-03T06:30:00")  # 01:30 EST
    ledger.insert(
        [
            ev("a", occurred_at_us=first_130),
            ev("b", occurred_at_us=second_130, quantity=2),
            ev("c", occurred_at_us=at("2024-11-03T23:59:00", NY), quantity=4),
            ev("d", occurred_at_us=at("2024-11-04T00:00:00", NY), quantity=8),
        ]
    )
    start, end = at("2024-11-03T00:00:00", NY), at("2024-11-05T00:00:00", NY)
    days = ledger.usage("acct_1", start, end, period="day", tz="America/New_York")
    assert [(d.label, (d.end_us - d.start_us) // HOUR) for d in days] == [
        ("2024-11-03", 25),
        ("2024-11-04", 24),
    ]
    assert [d.totals["calls"].quantity for d in days] == [7, 8]
    hours = ledger.usage(
        "acct_1",
        first_130 - 30 * 60 * US,
        second_130 + 30 * 60 * US,
        period="hour",
        tz="America/New_York",
    )
    assert [h.label for h in hours] == ["2024-11-03T01:00-04:00", "2024-11-03T01:00-05:00"]
    assert [h.totals["calls"].quantity for h in hours] == [1, 2]


def test_weeks_and_months_and_clipping(ledger: Ledger) -> None:
    ledger.insert(
        [
            ev("jan", occurred_at_us=at("2024-01-31T12:00:00", NY)),
            ev("feb", occurred_at_us=at("2024-02-29T23:00:00", NY), quantity=2),
            ev("mar", occurred_at_us=at("2024-03-10T12:00:00", NY), quantity=4),
        ]
    )
    start, end = at("2024-01-15T00:00:00", NY), at("2024-03-20T00:00:00", NY)
    months = ledger.usage("acct_1", start, end, period="month", tz="America/New_York")
    assert [m.label for m in months] == ["2024-01", "2024-02", "2024-03"]
    assert months[0].start_us == start and months[-1].end_us == end  # clipped to the range
    assert months[1].start_us == at("2024-02-01T00:00:00", NY)
    assert [m.totals["calls"].quantity for m in months] == [1, 2, 4]
    weeks = ledger.usage(
        "acct_1", at("2024-03-04T00:00:00", NY), at("2024-03-18T00:00:00", NY),
        period="week", tz="America/New_York",
    )  # fmt: skip
    assert [w.label for w in weeks] == ["2024-03-04", "2024-03-11"]  # Mondays
    assert (weeks[0].end_us - weeks[0].start_us) // HOUR == 7 * 24 - 1  # holds the DST change
    assert [w.totals for w in weeks] == [{"calls": Totals(4, 5000, 1, "USD")}, {}]
    anchored = ledger.usage("acct_1", start, end, period="month", tz="America/New_York", anchor=15)
    assert [m.label for m in anchored] == ["2024-01-15", "2024-02-15", "2024-03-15"]
    assert [m.totals.get("calls", Totals()).quantity for m in anchored] == [1, 6, 0]


@pytest.mark.parametrize(
    ("period", "tz"),
    [
        ("day", "America/New_York"),
        ("hour", "Asia/Kolkata"),
        ("week", "UTC"),
        ("month", "Europe/Paris"),
    ],
)
def test_every_period_adds_up_to_the_totals_of_its_bounds(
    ledger: Ledger, period: str, tz: str
) -> None:
    rng = random.Random(7)
    start = at("2024-02-20T00:00:00")
    span = 100 * DAY if period != "hour" else 4 * DAY
    ledger.insert(
        ev(i, occurred_at_us=start + rng.randrange(span), quantity=rng.randrange(1, 9))
        for i in range(2000)
    )
    periods = ledger.usage(
        "acct_1", start + 3 * HOUR, start + span - 5 * HOUR, period=period, tz=tz
    )
    assert periods[0].start_us == start + 3 * HOUR
    for before, after in itertools.pairwise(periods):
        assert before.end_us == after.start_us
    for one in periods:
        assert one.totals == ledger.totals("acct_1", one.start_us, one.end_us)
    assert sum(p.totals["calls"].events for p in periods if p.totals) == sum(
        t.events
        for t in ledger.totals("acct_1", start + 3 * HOUR, start + span - 5 * HOUR).values()
    )


def test_usage_filters_and_as_of(ledger: Ledger) -> None:
    ledger.insert(
        [
            ev(1),
            ev(2, meter="tokens", amount_micros=None, currency=None, quantity=9),
            ev(3, recorded_at_us=T0 + 3 * DAY),
        ]
    )
    days = ledger.usage("acct_1", T0, T0 + 2 * DAY, as_of=T0 + DAY)
    assert [d.totals for d in days] == [
        {"calls": Totals(1, 5000, 1, "USD"), "tokens": Totals(9, 0, 1, None)},
        {},
    ]
    days = ledger.usage("acct_1", T0, T0 + DAY, meter="tokens")
    assert [list(d.totals) for d in days] == [["tokens"]]
    assert ledger.usage("acct_1", T0, T0) == []


def test_usage_refuses_bad_arguments(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgumentError, match="tz: 'Mars/Olympus'"):
        ledger.usage("acct_1", T0, T0 + DAY, tz="Mars/Olympus")
    with pytest.raises(InvalidArgumentError, match="period: 'fortnight'"):
        ledger.usage("acct_1", T0, T0 + DAY, period="fortnight")
    with pytest.raises(InvalidArgumentError, match="more than 10000"):
        ledger.usage("acct_1", T0, T0 + 3 * 365 * DAY, period="hour")
    with pytest.raises(InvalidArgumentError, match="anchor"):
        ledger.usage("acct_1", T0, T0 + DAY, period="day", anchor=3)


# =========================================================================== migrations


def test_fresh_database_is_migrated_and_reopening_is_a_no_op(ledger_url: str) -> None:
    with open_ledger(ledger_url) as first:
        first.insert([ev(1)])
    versions = raw(ledger_url, "SELECT version, description FROM tollway_schema")
    assert [v for v, _ in sorted(versions)] == [m.version for m in MIGRATIONS]
    # Contiguous from 1, ending at SCHEMA_VERSION.
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION
    with open_ledger(ledger_url) as again:
        assert again.count() == 1
    assert raw(ledger_url, "SELECT version, description FROM tollway_schema") == versions
    indexes = raw(
        ledger_url,
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage_events'"
        if ledger_url.startswith("sqlite")
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'usage_events' "
        "AND schemaname = current_schema()",
    )
    names = {name for (name,) in indexes}
    assert {
        "usage_events_subject_occurred",
        "usage_events_subject_meter_occurred",
        "usage_events_recorded",
    } <= names
    # Migration 4's rating index is SQLite's only (PostgreSQL aggregates by hashing).
    assert ("usage_events_rating" in names) == ledger_url.startswith("sqlite")


def test_a_newer_schema_is_refused(ledger_url: str) -> None:
    open_ledger(ledger_url).close()
    raw(
        ledger_url,
        "INSERT INTO tollway_schema (version, description, applied_at_us) VALUES (%s, %s, %s)",
        (SCHEMA_VERSION + 1, "from the future", 0),
    )
    with pytest.raises(LedgerSchemaError) as caught:
        open_ledger(ledger_url)
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this tollway knows" in message
    assert f"up to {SCHEMA_VERSION}" in message
    assert "upgrade tollway" in message


def test_pending_lists_what_is_missing() -> None:
    assert [m.version for m in pending([], where="x")] == [1, 2, 3, 4, 5, 6, 7]
    assert [m.version for m in pending([1], where="x")] == [2, 3, 4, 5, 6, 7]
    assert [m.version for m in pending([1, 2], where="x")] == [3, 4, 5, 6, 7]
    assert [m.version for m in pending([1, 2, 3], where="x")] == [4, 5, 6, 7]
    assert [m.version for m in pending([1, 2, 3, 4], where="x")] == [5, 6, 7]
    assert [m.version for m in pending([1, 2, 3, 4, 6], where="x")] == [5, 7]
    assert pending([1, 2, 3, 4, 5, 6, 7], where="x") == []
    with pytest.raises(LedgerSchemaError, match="unknown: 98, 99"):
        pending([1, 2, 3, 4, 5, 6, 7, 98, 99], where="x")


@pytest.mark.postgres
def test_concurrent_first_opens_migrate_once(pg_url: str) -> None:
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            PostgresLedger(pg_url).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    versions = raw(pg_url, "SELECT version FROM tollway_schema ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]


# =========================================================================== URLs


def test_open_ledger_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_ledger("sqlite:///relative.db") as rel:
        assert isinstance(rel, SqliteLedger) and rel.path == "relative.db"
    assert (tmp_path / "relative.db").exists()
    absolute = tmp_path / "sub dir" / "abs.db"
    absolute.parent.mkdir()
    with open_ledger(f"sqlite:///{absolute}".replace(" ", "%20")) as ab:
        assert ab.path == str(absolute)
    with open_ledger("sqlite:///:memory:?synchronous=normal") as mem:
        assert mem.path == ":memory:"
        assert mem.insert([ev(1)]) == 1
    for bad, words in [
        ("mysql://x/y", "expected sqlite:///path"),
        ("sqlite://host/x.db", "has no host"),
        ("sqlite:///", "no database path"),
        ("sqlite:///x.db?journal=off", "unknown option 'journal'"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous"),
    ]:
        with pytest.raises(ConfigurationError, match=words):
            open_ledger(bad)
    with pytest.raises(ConfigurationError, match="expected sqlite:///path"):
        asyncio.run(open_async_ledger("mysql://host/db"))


def test_sqlite_file_uses_wal_and_is_shared_by_two_ledgers(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SqliteLedger(path) as one, SqliteLedger(path) as two:
        one.insert([ev(1)])
        assert two.insert([ev(1), ev(2)]) == 1
        assert one.count() == two.count() == 2
    assert raw(f"sqlite:///{path}", "PRAGMA journal_mode") == [("wal",)]


def test_closed_ledger_refuses_calls(ledger: Ledger) -> None:
    ledger.close()
    ledger.close()  # twice is fine
    with pytest.raises(LedgerError, match="closed"):
        ledger.count()


def test_threads_share_one_ledger(ledger: Ledger) -> None:
    def work(offset: int) -> None:
        for start in range(0, 400, 100):
            ledger.insert(ev(offset + i) for i in range(start, start + 100))
            ledger.insert(ev(i) for i in range(50))  # the same ids from every thread

    threads = [threading.Thread(target=work, args=(k * 10_000,)) for k in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.count() == 4 * 400 + 50


@pytest.mark.postgres
def test_two_postgres_ledgers_racing_on_the_same_ids(pg_url: str) -> None:
    ledgers = [PostgresLedger(pg_url) for _ in range(3)]
    inserted = [0] * len(ledgers)

    def work(k: int) -> None:
        for start in range(0, 2000, 250):
            inserted[k] += ledgers[k].insert(ev(i) for i in range(start, start + 250))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(ledgers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(inserted) == 2000
    assert ledgers[0].count() == 2000
    for one in ledgers:
        one.close()


def test_redact_url_hides_the_password() -> None:
    assert redact_url("postgresql://u:secret@h:5/db?x=1") == "postgresql://u:***@h:5/db?x=1"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


# =========================================================================== PostgreSQL outages


def test_postgres_killed_mid_way_then_restarted(
    make_postgres_server: Callable[[], PostgresServer],
) -> None:
    server = make_postgres_server()
    url = server.url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
    ledger = PostgresLedger(url, connect_timeout=2)
    first = [ev(i) for i in range(300)]
    second = [ev(i) for i in range(300, 700)]
    assert ledger.insert(first) == 300

    server.kill()
    assert not pg_handshake(server.port)
    for call in (
        lambda: ledger.insert(second),
        lambda: ledger.totals("acct_1", T0, T0 + DAY),
        ledger.count,
    ):
        with pytest.raises(LedgerUnavailableError) as caught:
            call()
        assert isinstance(caught.value, TollwayError)
        assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    with pytest.raises(LedgerUnavailableError, match="cannot connect"):
        PostgresLedger(url, connect_timeout=2)

    server.start()  # same port, same data (crash recovery)
    assert ledger.insert(second) == 400  # reconnected by itself
    assert ledger.insert(first + second) == 0  # nothing twice
    assert ledger.count() == 700
    assert ledger.totals("acct_1", T0, T0 + DAY)["calls"].quantity == 700
    ledger.close()


def test_postgres_restarted_while_idle_costs_no_error(
    make_postgres_server: Callable[[], PostgresServer],
) -> None:
    server = make_postgres_server()
    with PostgresLedger(server.url) as ledger:
        assert ledger.insert([ev(1)]) == 1
        server.kill()
        server.start()
        assert ledger.count() == 1  # the dead connection is replaced on this very call
        server.kill()
        server.start()
        assert ledger.insert([ev(1), ev(2)]) == 1


def test_postgres_connection_errors_are_clear(
    make_postgres_server: Callable[[], PostgresServer],
) -> None:
    server = make_postgres_server()
    url = server.url
    server.kill()
    with pytest.raises(LedgerUnavailableError) as caught:
        open_ledger(url)
    assert url in str(caught.value)
    with pytest.raises(ConfigurationError):
        open_ledger(url + "?no_such_option=1")


# =========================================================================== async face


@pytest.fixture
async def async_ledger(pg_url: str) -> AsyncIterator[AsyncPostgresLedger]:
    ledger = await AsyncPostgresLedger.open(pg_url)
    yield ledger
    await ledger.aclose()


async def test_async_ledger_matches_the_sync_one(
    async_ledger: AsyncPostgresLedger, pg_url: str
) -> None:
    batch = [ev(i) for i in range(200)]
    assert await async_ledger.insert(batch) == 200
    result = await async_ledger.write([*batch[:10], ev(1, quantity=3), ev(500)])
    assert (result.inserted, result.duplicates) == (1, 10)
    assert [c.event_id for c in result.conflicts] == ["evt-1"]
    assert await async_ledger.count() == 201
    totals = await async_ledger.totals("acct_1", T0, T0 + DAY)
    with PostgresLedger(pg_url) as sync:
        assert sync.totals("acct_1", T0, T0 + DAY) == totals
        assert await async_ledger.usage("acct_1", T0, T0 + 2 * DAY) == sync.usage(
            "acct_1", T0, T0 + 2 * DAY
        )
        assert await async_ledger.subjects(T0) == sync.subjects(T0) == ["acct_1"]
    assert await async_ledger.subjects(T0 + 10 * DAY) == []
    assert totals == {"calls": Totals(201, 201 * 5000, 201, "USD")}


async def test_the_async_sqlite_ledger_matches_the_sync_one(tmp_path: Path) -> None:
    """On SQLite the async face runs the sync ledger in a thread: the same answers."""
    url = f"sqlite:///{tmp_path / 'async.db'}"
    ledger = await open_async_ledger(url)
    assert isinstance(ledger, AsyncSqliteLedger)
    batch = [ev(i) for i in range(200)]
    assert await ledger.insert(batch) == 200
    result = await ledger.write([*batch[:10], ev(1, quantity=3), ev(500)])
    assert (result.inserted, result.duplicates) == (1, 10)
    assert [c.event_id for c in result.conflicts] == ["evt-1"]
    assert await ledger.count() == 201
    totals = await ledger.totals("acct_1", T0, T0 + DAY)
    assert totals == {"calls": Totals(201, 201 * 5000, 201, "USD")}
    committed = await ledger.commit([ev(900), ev(1)])
    assert (committed.inserted, committed.duplicates) == (1, 1)
    by_day = await ledger.usage("acct_1", T0, T0 + 2 * DAY)
    await ledger.aclose()
    with open_ledger(url) as sync:
        assert sync.count() == 202
        assert by_day == sync.usage("acct_1", T0, T0 + 2 * DAY)
        assert sum(day.totals["calls"].quantity for day in by_day if day.totals) == 202
        assert sync.subjects(T0) == ["acct_1"]
    async with await open_async_ledger(url) as again:
        assert await again.subjects(T0) == ["acct_1"]


async def test_open_async_ledger_and_lazy_connect(pg_url: str) -> None:
    ledger = await open_async_ledger(pg_url)
    assert isinstance(ledger, AsyncPostgresLedger)
    async with ledger:
        assert await ledger.count() == 0
    lazy = AsyncPostgresLedger(pg_url)  # no I/O until the first call
    assert await lazy.insert([ev(1)]) == 1
    await lazy.aclose()
    with pytest.raises(LedgerError, match="closed"):
        await lazy.count()


async def test_async_ledger_survives_a_restart(
    make_postgres_server: Callable[[], PostgresServer],
) -> None:
    server = make_postgres_server()
    ledger = await AsyncPostgresLedger.open(server.url, connect_timeout=2)
    assert await ledger.insert([ev(i) for i in range(100)]) == 100
    server.kill()
    with pytest.raises(LedgerUnavailableError):
        await ledger.insert([ev(i) for i in range(100, 200)])
    server.start()
    assert await ledger.insert([ev(i) for i in range(200)]) == 100
    assert await ledger.count() == 200
    await ledger.aclose()


# =========================================================================== the test server


def test_postgres_server_runs_unprivileged_and_stops_cleanly(
    make_postgres_server: Callable[[], PostgresServer], request: pytest.FixtureRequest
) -> None:
    assert request.node.get_closest_marker("postgres") is not None
    server = make_postgres_server()
    pid, directory = server.pid, server.directory
    assert pid is not None and directory is not None
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid != 0 and server.account is not None and uid == server.account.pw_uid
    else:
        assert uid == os.geteuid()
    assert pg_handshake(server.port)
    with psycopg.connect(server.url) as conn:
        row = conn.execute("SHOW listen_addresses").fetchone()
        assert row == ("127.0.0.1",)
    server.stop()
    assert not directory.exists()
    assert not Path(f"/proc/{pid}").exists()
    assert not pg_handshake(server.port)
