"""``examples/sql/roles.sql`` on a real PostgreSQL ledger: the reporting role reads and
cannot write; the writer role runs tollway (opens the migrated ledger, writes events) and
cannot rewrite history or the schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from stream_support import pg_schema
from tollway.errors import LedgerError
from tollway.metering.ledger import UsageEvent, open_ledger

ROLES_SQL = Path(__file__).resolve().parent.parent / "examples" / "sql" / "roles.sql"
pytestmark = pytest.mark.postgres


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def event(n: int) -> UsageEvent:
    return UsageEvent(
        id=f"e{n}",
        subject="a",
        operation="call",
        meter="call",
        quantity=1,
        occurred_at_us=n,
        recorded_at_us=n,
    )


@pytest.fixture
def ledger_url(postgres_url: str) -> Iterator[str]:
    with pg_schema(postgres_url) as url:
        with open_ledger(url) as owner:  # the owner migrates
            owner.write([event(1)])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ROLES_SQL.read_text())
            conn.execute(ROLES_SQL.read_text())  # idempotent
        yield url


@pytest.fixture
def logins(ledger_url: str) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    names = {"reporting": f"rpt_{suffix}", "writer": f"wr_{suffix}"}
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        for group, name in names.items():
            conn.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE tollway_{group}')
    try:
        yield {group: as_user(ledger_url, name) for group, name in names.items()}
    finally:
        with psycopg.connect(ledger_url, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP OWNED BY "{name}"')
                conn.execute(f'DROP ROLE "{name}"')


def test_the_reporting_role_can_select_and_cannot_insert(logins: dict[str, str]) -> None:
    with psycopg.connect(logins["reporting"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM usage_events").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM hook_messages").fetchone() == (0,)
        for statement in (
            "INSERT INTO usage_events (id, subject, operation, meter, quantity, "
            "occurred_at_us, recorded_at_us) VALUES ('x', 'a', 'o', 'o', 1, 1, 1)",
            "UPDATE usage_events SET quantity = 2",
            "DELETE FROM usage_events",
            "CREATE TABLE sneaky (x int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_writer_role_runs_tollway_and_cannot_rewrite_history(
    logins: dict[str, str],
) -> None:
    with open_ledger(logins["writer"]) as ledger:  # migrated already: nothing to apply
        assert ledger.write([event(2), event(3)]).inserted == 2
        assert ledger.count() == 3
    with psycopg.connect(logins["writer"], autocommit=True) as conn:
        for statement in (
            "UPDATE usage_events SET quantity = 2",
            "DELETE FROM usage_events",
            "DROP TABLE usage_events",
            "CREATE TABLE sneaky (x int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute("DELETE FROM hook_messages")  # the outbox prunes delivered messages
    # The reporting role cannot even open the ledger for writing.
    with pytest.raises(LedgerError), open_ledger(logins["reporting"]) as ledger:
        ledger.write([event(4)])
