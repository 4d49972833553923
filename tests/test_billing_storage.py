"""Billing's storage in the ledger (`tollway.billing.storage`, migration 3): every flow on
SQLite and on a real PostgreSQL, the async faces, gapless numbering and the credit-note cap
under concurrent processes, and the usage aggregates against a Python recomputation."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processes import run_together
from tollway.billing.records import GrantRecord, UsageTotal
from tollway.billing.storage import (
    CreditNoteDraft,
    InvoiceDraft,
    add_grant,
    append_change,
    changes,
    credit_notes,
    draw_sums,
    grants,
    invoice,
    invoices,
    last_invoice,
    redeem,
    redemptions,
    store_credit_note,
    store_invoice,
    subjects_with_history,
    take_trial,
    trace,
    usage_totals,
    usage_totals_all,
)
from tollway.errors import (
    BillingError,
    CouponError,
    GrantConflictError,
    InvoiceError,
    TrialUsedError,
)
from tollway.metering.ledger import Ledger, UsageEvent, open_async_ledger, open_ledger
from tollway.metering.ledger.flows import Query
from tollway.metering.ledger.schema import MIGRATIONS, SCHEMA_VERSION

T0 = 1_700_000_000_000_000
DAY = 86_400_000_000


def _with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "")
    query += urlencode({"options": f"-c search_path={schema}"}, quote_via=quote)
    return urlunsplit(parts._replace(query=query))


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A schema of its own in the session's PostgreSQL, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield _with_search_path(postgres_url, schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with open_ledger(ledger_url) as opened:
        yield opened


def ev(n: int, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "id": f"evt-{n:06d}",
        "subject": "acct_1",
        "operation": "geocode",
        "meter": "geocode",
        "quantity": 1,
        "occurred_at_us": T0 + n,
        "recorded_at_us": T0 + n + 500,
        "amount_micros": 5000,
        "currency": "USD",
        "plan": "pro",
        "limits": ("burst",),
        "attributes": {"region": "eu"},
    }
    values.update(fields)
    return UsageEvent(**values)


def invoice_draft(subject: str, start: int, total: int = 10_000_000) -> Any:
    def make(number: str) -> InvoiceDraft:
        body = json.dumps({"number": number, "subject": subject, "start": start}, sort_keys=True)
        return InvoiceDraft(
            subject=subject,
            period_start_us=start,
            period_end_us=start + DAY,
            currency="USD",
            total_micros=total,
            finalized_at_us=start + DAY,
            as_of_us=start + DAY,
            body=body,
        )

    return make


def note_draft(amount: int) -> Any:
    def make(number: str) -> CreditNoteDraft:
        return CreditNoteDraft(
            amount_micros=amount,
            reason="duplicate",
            refund=True,
            created_at_us=T0,
            body=json.dumps({"number": number, "amount": amount}),
        )

    return make


# =========================================================================== migration


def test_migration_3_applies_over_a_version_2_database(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE tollway_schema (version INTEGER NOT NULL PRIMARY KEY,"
        " description TEXT NOT NULL, applied_at_us BIGINT NOT NULL)"
    )
    for migration in MIGRATIONS[:2]:
        for statement in migration.statements("sqlite"):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO tollway_schema VALUES (?, ?, 0)",
            (migration.version, migration.description),
        )
    conn.close()
    with open_ledger(f"sqlite:///{path}") as ledger:
        assert SCHEMA_VERSION >= 3
        ledger.insert([ev(1)])
        assert ledger.transact(lambda: grants(ledger.dialect, "acct_1", "USD")) == []
    conn = sqlite3.connect(path)
    versions = [row[0] for row in conn.execute("SELECT version FROM tollway_schema")]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert versions == [m.version for m in MIGRATIONS]  # every migration, in order
    assert {"billing_plan_changes", "billing_invoices", "billing_credit_notes"} <= tables


def test_migration_4_indexes_a_version_3_database_for_rating(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE tollway_schema (version INTEGER NOT NULL PRIMARY KEY,"
        " description TEXT NOT NULL, applied_at_us BIGINT NOT NULL)"
    )
    for migration in MIGRATIONS[:3]:
        for statement in migration.statements("sqlite"):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO tollway_schema VALUES (?, ?, 0)",
            (migration.version, migration.description),
        )
    conn.close()
    with open_ledger(f"sqlite:///{path}") as ledger:
        ledger.insert([ev(i, subject=f"acct_{i % 3}") for i in range(30)])
    with open_ledger(f"sqlite:///{path}") as ledger:
        flow = usage_totals_all(
            ledger.dialect, T0, T0 + DAY, T0 + DAY, currency="USD",
            credit_limits={"pro": "burst"},
        )  # fmt: skip
        query = next(flow)

        def plan() -> Any:
            rows = yield Query("EXPLAIN QUERY PLAN " + query.sql, query.params)
            return rows

        steps = [str(row[-1]) for row in ledger.transact(plan)]
        totals = ledger.transact(
            lambda: usage_totals_all(
                ledger.dialect, T0, T0 + DAY, T0 + DAY, currency="USD",
                credit_limits={"pro": "burst"},
            )
        )  # fmt: skip
    # In group order and covering: no sort of the rows, no read of the table.
    assert any("COVERING INDEX usage_events_rating" in step for step in steps), steps
    assert not any("TEMP B-TREE FOR GROUP BY" in step for step in steps), steps
    assert {s: [(t.events, t.drawn_micros) for t in ts] for s, ts in totals.items()} == {
        f"acct_{k}": [(10, 50_000)] for k in range(3)
    }
    conn = sqlite3.connect(path)
    versions = [row[0] for row in conn.execute("SELECT version FROM tollway_schema")]
    conn.close()
    assert versions == [m.version for m in MIGRATIONS]  # 4 and every later one


# =========================================================================== plan history


def test_plan_history_is_gapless_per_subject_and_ordered_by_effect(ledger: Ledger) -> None:
    d = ledger.dialect
    first = ledger.transact(
        lambda: append_change(d, "a", "pro", effective_us=T0 + 10, recorded_us=T0)
    )
    ledger.transact(lambda: append_change(d, "b", None, effective_us=T0, recorded_us=T0))
    second = ledger.transact(
        lambda: append_change(
            d, "a", "basic", effective_us=T0 + 5, recorded_us=T0 + 1, kind="scheduled",
            proration="next_period",
        )
    )  # fmt: skip
    assert (first.seq, second.seq) == (1, 2)
    got = ledger.transact(lambda: changes(d, "a"))
    assert [c.plan for c in got] == ["basic", "pro"]
    assert got[0] == second
    assert ledger.transact(lambda: changes(d, "a", until_us=T0)) == [first]
    assert ledger.transact(lambda: subjects_with_history(d)) == ["a", "b"]
    with pytest.raises(BillingError, match="proration"):
        ledger.transact(
            lambda: append_change(d, "a", "x", effective_us=0, recorded_us=0, proration="bad")  # type: ignore[arg-type]
        )


def test_one_trial_per_identity_and_the_message_names_no_subject(ledger: Ledger) -> None:
    d = ledger.dialect
    ledger.transact(lambda: take_trial(d, "email:abc", "first_owner", T0))
    with pytest.raises(TrialUsedError) as caught:
        ledger.transact(lambda: take_trial(d, "email:abc", "second", T0 + 1))
    assert "already had a trial" in str(caught.value)
    assert "first_owner" not in str(caught.value)
    ledger.transact(lambda: take_trial(d, "subject:second", "second", T0 + 1))


# =========================================================================== grants, coupons


def test_grants_are_idempotent_and_a_changed_grant_conflicts(ledger: Ledger) -> None:
    d = ledger.dialect
    g = GrantRecord(
        id="g1", subject="a", currency="USD", amount_micros=50_000_000, granted_us=T0,
        expires_us=T0 + DAY, priority=2, note="welcome",
    )  # fmt: skip
    assert ledger.transact(lambda: add_grant(d, g)) is True
    assert ledger.transact(lambda: add_grant(d, g)) is False
    other = GrantRecord(id="g1", subject="a", currency="USD", amount_micros=1, granted_us=T0)
    with pytest.raises(GrantConflictError, match="g1"):
        ledger.transact(lambda: add_grant(d, other))
    g2 = GrantRecord(id="g2", subject="a", currency="USD", amount_micros=7, granted_us=T0 - 1)
    ledger.transact(lambda: add_grant(d, g2))
    assert ledger.transact(lambda: grants(d, "a", "USD")) == [g2, g]
    assert ledger.transact(lambda: grants(d, "a", "EUR")) == []


def test_redemptions_once_per_subject_and_capped(ledger: Ledger) -> None:
    d = ledger.dialect
    ledger.transact(lambda: redeem(d, "a", "WELCOME", T0, 2))
    with pytest.raises(CouponError, match="redeemed it already"):
        ledger.transact(lambda: redeem(d, "a", "WELCOME", T0 + 1, 2))
    ledger.transact(lambda: redeem(d, "b", "WELCOME", T0 + 2, 2))
    with pytest.raises(CouponError, match="max_redemptions is 2"):
        ledger.transact(lambda: redeem(d, "c", "WELCOME", T0 + 3, 2))
    assert [r.coupon for r in ledger.transact(lambda: redemptions(d, "a"))] == ["WELCOME"]
    assert ledger.transact(lambda: redemptions(d, "c")) == []


# =========================================================================== usage


def test_usage_totals_cut_currency_credits_and_uniques(ledger: Ledger) -> None:
    d = ledger.dialect
    ledger.insert([
        ev(1, limits=("credits",), attributes={"region": "eu"}),
        ev(2, limits=("burst",), attributes={"region": "us"}),
        ev(3, attributes={"region": "eu"}, quantity=-1, amount_micros=-5000),
        ev(4, currency="EUR"),
        ev(5, plan=None, limits=("credits",)),
        ev(6, recorded_at_us=T0 + 10 * DAY),  # recorded after the cut
        ev(7, occurred_at_us=T0 + DAY),  # outside the period
        ev(8, subject="other"),
    ])  # fmt: skip
    got = ledger.transact(
        lambda: usage_totals(
            d, "acct_1", T0, T0 + DAY, T0 + DAY, currency="USD",
            unique_attributes={"geocode": "region"}, credit_limits={"pro": "credits"},
        )
    )  # fmt: skip
    assert got == [
        UsageTotal(
            plan=None, meter="geocode", quantity=1, events=1, amount_micros=5000,
            drawn_micros=0, first_event="evt-000005", last_event="evt-000005",
            uniques={"region": 1},
        ),
        UsageTotal(
            plan="pro", meter="geocode", quantity=2, events=4, amount_micros=5000,
            drawn_micros=5000, first_event="evt-000001", last_event="evt-000004",
            uniques={"region": 2},
        ),
    ]  # fmt: skip
    late = ledger.transact(
        lambda: usage_totals(
            d, "acct_1", T0, T0 + DAY, T0 + 20 * DAY, after_us=T0 + DAY, currency="USD"
        )
    )
    assert [(t.events, t.first_event) for t in late] == [(1, "evt-000006")]
    everyone = ledger.transact(lambda: usage_totals_all(d, T0, T0 + DAY, T0 + DAY, currency="USD"))
    assert sorted(everyone) == ["acct_1", "other"]
    assert [t.events for t in everyone["acct_1"]] == [1, 4]
    with pytest.raises(BillingError, match="end_us"):
        ledger.transact(lambda: usage_totals(d, "a", T0, T0, T0, currency="USD"))


def test_draw_sums_and_trace_pages(ledger: Ledger) -> None:
    d = ledger.dialect
    ledger.insert([ev(i, limits=("credits",), occurred_at_us=T0 + i * 1000) for i in range(10)])
    sums = ledger.transact(
        lambda: draw_sums(
            d, "acct_1", "USD", [T0, T0 + 3000, T0 + 3001, T0 + 20_000],
            as_of_us=T0 + DAY, credit_limits={"pro": "credits"},
        )
    )  # fmt: skip
    assert sums == [3 * 5000, 1 * 5000, 6 * 5000]
    with pytest.raises(BillingError, match="boundaries_us"):
        ledger.transact(lambda: draw_sums(d, "a", "USD", [T0], as_of_us=T0, credit_limits={}))
    page = ledger.transact(
        lambda: trace(d, "acct_1", "geocode", "pro", T0, T0 + DAY, T0 + DAY, limit=4)
    )
    rest = ledger.transact(
        lambda: trace(
            d, "acct_1", "geocode", "pro", T0, T0 + DAY, T0 + DAY, cursor=page[-1].id, limit=100
        )
    )
    assert [e.id for e in page + rest] == [f"evt-{i:06d}" for i in range(10)]
    with pytest.raises(BillingError, match="limit"):
        ledger.transact(lambda: trace(d, "a", "m", None, T0, T0 + 1, T0, limit=10**6))


EVENT = st.fixed_dictionaries({
    "subject": st.sampled_from(["a", "b"]),
    "meter": st.sampled_from(["geocode", "route"]),
    "plan": st.sampled_from(["pro", "basic", None]),
    "quantity": st.integers(-3, 5),
    "amount": st.integers(-10_000, 10_000),
    "currency": st.sampled_from(["USD", "EUR"]),
    "credits": st.booleans(),
    "occurred": st.integers(-5, 25),
    "recorded": st.integers(0, 30),
    "region": st.sampled_from(["eu", "us", "x.y", 'q"t']),
})  # fmt: skip


def python_totals(events: list[dict[str, Any]], as_of: int) -> dict[str, list[UsageTotal]]:
    groups: dict[tuple[str, str | None, str], list[tuple[int, dict[str, Any]]]] = {}
    for n, e in enumerate(events):
        if 0 <= e["occurred"] < 20 and e["recorded"] <= as_of:
            groups.setdefault((e["subject"], e["plan"], e["meter"]), []).append((n, e))
    out: dict[str, list[UsageTotal]] = {}
    for (subject, plan, meter), rows in sorted(
        groups.items(),
        key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2], kv[0][1] is not None),
    ):
        usd = [e for _, e in rows if e["currency"] == "USD"]
        out.setdefault(subject, []).append(
            UsageTotal(
                plan=plan, meter=meter, quantity=sum(e["quantity"] for _, e in rows),
                events=len(rows), amount_micros=sum(e["amount"] for e in usd),
                drawn_micros=sum(e["amount"] for e in usd if e["credits"] and plan == "pro"),
                first_event=f"evt-{rows[0][0]:06d}", last_event=f"evt-{rows[-1][0]:06d}",
                uniques={"region": len({e["region"] for _, e in rows})} if meter == "geocode"
                else {},
            )
        )  # fmt: skip
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(EVENT, max_size=40), st.integers(0, 30))
def test_usage_totals_match_a_python_recomputation(
    tmp_path: Path, events: list[dict[str, Any]], as_of: int
) -> None:
    with open_ledger("sqlite:///:memory:") as ledger:
        ledger.insert([
            ev(
                n, subject=e["subject"], meter=e["meter"], plan=e["plan"],
                quantity=e["quantity"], amount_micros=e["amount"], currency=e["currency"],
                limits=("credits",) if e["credits"] else (), occurred_at_us=T0 + e["occurred"],
                recorded_at_us=T0 + e["recorded"], attributes={"region": e["region"]},
            )
            for n, e in enumerate(events)
        ])  # fmt: skip
        got = ledger.transact(
            lambda: usage_totals_all(
                ledger.dialect, T0, T0 + 20, T0 + as_of, currency="USD",
                unique_attributes={"geocode": "region"}, credit_limits={"pro": "credits"},
            )
        )  # fmt: skip
    assert got == python_totals(events, as_of)


@pytest.mark.postgres
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(EVENT, max_size=40), st.integers(0, 30))
def test_usage_totals_all_on_postgres_match_a_python_recomputation(
    pg_url: str, events: list[dict[str, Any]], as_of: int
) -> None:
    # PostgreSQL counts unique values in two hashed steps (not COUNT(DISTINCT)): same totals.
    with open_ledger(pg_url) as ledger:
        ledger.transact(_delete_events)
        ledger.insert([
            ev(
                n, subject=e["subject"], meter=e["meter"], plan=e["plan"],
                quantity=e["quantity"], amount_micros=e["amount"], currency=e["currency"],
                limits=("credits",) if e["credits"] else (), occurred_at_us=T0 + e["occurred"],
                recorded_at_us=T0 + e["recorded"], attributes={"region": e["region"]},
            )
            for n, e in enumerate(events)
        ])  # fmt: skip
        got = ledger.transact(
            lambda: usage_totals_all(
                ledger.dialect, T0, T0 + 20, T0 + as_of, currency="USD",
                unique_attributes={"geocode": "region"}, credit_limits={"pro": "credits"},
            )
        )  # fmt: skip
        each = {
            subject: ledger.transact(
                lambda s=subject: usage_totals(  # type: ignore[misc]
                    ledger.dialect, s, T0, T0 + 20, T0 + as_of, currency="USD",
                    unique_attributes={"geocode": "region"}, credit_limits={"pro": "credits"},
                )
            )
            for subject in got
        }  # fmt: skip
    assert got == python_totals(events, as_of) == each


def _delete_events() -> Any:
    yield Query("DELETE FROM usage_events")


# =========================================================================== documents


def test_invoices_numbered_gaplessly_once_per_period(ledger: Ledger) -> None:
    d = ledger.dialect
    numbering = "INV-{year}-{seq:06d}"
    first = ledger.transact(
        lambda: store_invoice(
            d, scope="inv", year=2026, numbering=numbering, make=invoice_draft("a", T0)
        )
    )
    assert first.number == "INV-2026-000001"
    assert first.body == json.dumps({"number": first.number, "start": T0, "subject": "a"})
    assert len(first.content_hash) == 64
    with pytest.raises(InvoiceError, match="INV-2026-000001"):
        ledger.transact(
            lambda: store_invoice(
                d, scope="inv", year=2026, numbering=numbering, make=invoice_draft("a", T0)
            )
        )
    second = ledger.transact(
        lambda: store_invoice(
            d, scope="inv", year=2026, numbering=numbering, make=invoice_draft("a", T0 + DAY)
        )
    )
    assert second.number == "INV-2026-000002"  # the refused one took no number
    assert ledger.transact(lambda: invoice(d, first.number)) == first
    assert ledger.transact(lambda: invoice(d, "nope")) is None
    assert ledger.transact(lambda: invoices(d, "a")) == [second, first]
    assert ledger.transact(lambda: last_invoice(d, "a")) == second
    assert ledger.transact(lambda: last_invoice(d, "b")) is None


def test_credit_notes_never_exceed_the_invoice_total(ledger: Ledger) -> None:
    d = ledger.dialect
    inv = ledger.transact(
        lambda: store_invoice(
            d, scope="inv", year=2026, numbering="I{seq}", make=invoice_draft("a", T0, 10_000)
        )
    )

    def credit(amount: int) -> Any:
        return ledger.transact(
            lambda: store_credit_note(
                d, invoice_number=inv.number, scope="cn", year=2026, numbering="CN{seq}",
                make=note_draft(amount),
            )
        )  # fmt: skip

    assert credit(6000).number == "CN1"
    with pytest.raises(InvoiceError) as caught:
        credit(4001)
    message = str(caught.value)
    assert "I1" in message and "10000" in message and "6000" in message and "4001" in message
    assert credit(4000).number == "CN2"  # no gap from the refused note
    assert [n.amount_micros for n in ledger.transact(lambda: credit_notes(d, inv.number))] == [
        6000,
        4000,
    ]
    with pytest.raises(InvoiceError, match="not in the ledger"):
        ledger.transact(
            lambda: store_credit_note(
                d, invoice_number="I9", scope="cn", year=2026, numbering="CN{seq}",
                make=note_draft(1),
            )
        )  # fmt: skip


async def test_the_async_face_runs_the_same_flows(ledger_url: str) -> None:
    ledger = await open_async_ledger(ledger_url)
    try:
        d = ledger.dialect
        await ledger.transact(lambda: append_change(d, "a", "pro", effective_us=T0, recorded_us=T0))
        stored = await ledger.transact(
            lambda: store_invoice(
                d, scope="inv", year=2026, numbering="A{seq}", make=invoice_draft("a", T0)
            )
        )
        assert stored.number == "A1"
        assert [c.plan for c in await ledger.transact(lambda: changes(d, "a"))] == ["pro"]
    finally:
        await ledger.aclose()


# =========================================================================== concurrency

PROCESSES = 8
EACH = 5


def _finalize_worker(url: str, worker: int, barrier: Any, results: Any) -> None:
    try:
        with open_ledger(url) as ledger:
            barrier.wait()
            numbers = [
                ledger.transact(
                    lambda i=i: store_invoice(
                        ledger.dialect, scope="inv", year=2026, numbering="{seq}",
                        make=invoice_draft(f"s{worker}", T0 + i * DAY),
                    )
                ).number
                for i in range(EACH)
            ]  # fmt: skip
        results.put(numbers)
    except BaseException as exc:  # reported to the parent
        results.put(exc)


def _credit_worker(url: str, number: str, barrier: Any, results: Any) -> None:
    try:
        with open_ledger(url) as ledger:
            barrier.wait()
            done = 0
            for _ in range(EACH):
                try:
                    ledger.transact(
                        lambda: store_credit_note(
                            ledger.dialect, invoice_number=number, scope="cn", year=2026,
                            numbering="{seq}", make=note_draft(300),
                        )
                    )  # fmt: skip
                    done += 1
                except InvoiceError:
                    pass
        results.put(done)
    except BaseException as exc:  # reported to the parent
        results.put(exc)


@pytest.mark.postgres
def test_gapless_numbers_under_concurrent_processes(pg_url: str) -> None:
    with open_ledger(pg_url):
        pass  # migrated once, before the workers race
    got = run_together(_finalize_worker, [(pg_url, w) for w in range(PROCESSES)])
    numbers = sorted(int(n) for batch in got for n in batch)
    assert numbers == list(range(1, PROCESSES * EACH + 1))


@pytest.mark.postgres
def test_the_credit_note_cap_holds_under_concurrent_processes(pg_url: str) -> None:
    with open_ledger(pg_url) as ledger:
        inv = ledger.transact(
            lambda: store_invoice(
                ledger.dialect, scope="inv", year=2026, numbering="I{seq}",
                make=invoice_draft("a", T0, 3000),
            )
        )  # fmt: skip
    got = run_together(_credit_worker, [(pg_url, inv.number)] * PROCESSES)
    assert sum(got) == 10
    with open_ledger(pg_url) as ledger:
        notes = ledger.transact(lambda: credit_notes(ledger.dialect, inv.number))
    assert sum(n.amount_micros for n in notes) == 3000
    assert sorted(int(n.number) for n in notes) == list(range(1, 11))
