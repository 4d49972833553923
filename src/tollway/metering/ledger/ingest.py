"""How a batch goes into PostgreSQL: one flow (`tollway.metering.ledger.flows`) that the sync
and the async `PostgresLedger` both drive.

Fast path: ``COPY`` the batch straight into ``usage_events`` inside a savepoint; every event
new (the common case), that is all. When an id is already there the COPY fails with a unique
violation (one ERROR line in the server's log), the savepoint is rolled back, and the batch
takes the careful path: ``COPY`` into a session temp table, then ``INSERT INTO usage_events
SELECT ... ON CONFLICT (id) DO NOTHING RETURNING id`` (exactly the rows this transaction
inserted, even with another worker committing the same ids at the same time), and the stored
rows of the skipped ids are read back to tell duplicates from conflicts. Redeliveries come in
runs (a worker died, another claims its events), so the next `CAREFUL_BATCHES` batches go the
careful way at once. The fast path took the rate from about 66,000 to 79,000 events/s in
batches of 1,000 (bench/LEDGER_RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from tollway.metering.ledger.events import COLUMNS, UsageEvent
from tollway.metering.ledger.flows import Copy, Flow, Query
from tollway.metering.ledger.ops import After, Rows
from tollway.metering.ledger.outbox import CommitExtras
from tollway.metering.ledger.queries import PreparedBatch

__all__ = ["CAREFUL_BATCHES", "Ingested", "IngestState", "ingest_flow"]

_COLS = ", ".join(COLUMNS)
_TEMP = "tollway_ingest"
CREATE_TEMP_SQL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_TEMP} (LIKE usage_events) ON COMMIT DELETE ROWS"
)
COPY_SQL = f"COPY {_TEMP} ({_COLS}) FROM STDIN"
DIRECT_COPY_SQL = f"COPY usage_events ({_COLS}) FROM STDIN"
INSERT_SELECT_RETURNING_SQL = (
    f"INSERT INTO usage_events ({_COLS}) SELECT {_COLS} FROM {_TEMP} "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
STORED_SQL = (
    f"SELECT {', '.join('e.' + c for c in COLUMNS)} FROM usage_events e JOIN {_TEMP} t "
    "ON t.id = e.id"
)
CAREFUL_BATCHES = 16


@dataclass
class IngestState:
    """What one connection remembers between batches."""

    careful: int = 0
    """Batches left to send the careful way."""
    temp_ready: bool = False
    """The session's temp table exists (made by a committed transaction)."""


@dataclass(frozen=True, slots=True)
class Ingested:
    inserted: int
    stored: Rows
    """The stored rows of the skipped ids (to tell duplicates from conflicts)."""
    extras: CommitExtras | None
    """What ``after`` did; None without one."""
    used_temp: bool
    """The temp table was used: once the transaction commits it exists for the session."""


def new_events(batch: PreparedBatch, need_new: bool, new_ids: set[str] | None) -> list[UsageEvent]:
    """The events of ``batch`` the commit inserted (``new_ids`` None: all of them)."""
    if not need_new:
        return []
    if new_ids is None:
        return list(batch.events)
    return [event for event in batch.events if event.id in new_ids]


def ingest_flow(
    state: IngestState, batch: PreparedBatch, need_new: bool, after: After | None
) -> Flow[Ingested]:
    """Insert ``batch`` (skipping ids already there), then run ``after(new events)`` in the
    same transaction."""
    import psycopg  # only PostgreSQL's ledgers run this flow, and they need psycopg anyway

    rows = batch.rows
    stored: Rows = []
    inserted = 0
    new_ids: set[str] | None = None  # None: every event of the batch was new
    direct = used_temp = False
    if rows and state.careful == 0:
        try:
            yield Copy(DIRECT_COPY_SQL, rows, savepoint=True)
            inserted, direct = len(rows), True
        except psycopg.errors.UniqueViolation:
            state.careful = CAREFUL_BATCHES
    if rows and not direct:
        state.careful = max(0, state.careful - 1)
        if not state.temp_ready:
            yield Query(CREATE_TEMP_SQL)
        used_temp = True
        yield Copy(COPY_SQL, rows)
        new_ids = {row[0] for row in (yield Query(INSERT_SELECT_RETURNING_SQL))}
        inserted = len(new_ids)
        if inserted < len(rows):
            stored = list((yield Query(STORED_SQL)))
    extras = None
    if after is not None:
        extras = yield from after(new_events(batch, need_new, new_ids))
    return Ingested(inserted, stored, extras, used_temp)
