"""`SqliteLedger`: the embedded ledger, one SQLite file (or ``:memory:``).

WAL journal, ``synchronous=FULL`` by default (a committed batch survives a power cut: an event
is acknowledged upstream only after the ledger commit), a busy timeout so several processes
can share the file, and each `insert` one ``BEGIN IMMEDIATE`` transaction of ``executemany``.
One connection, guarded by a lock, so a ledger can be shared by threads.

Ingest speed is bounded by the pages a batch dirties: random ids (uuid4) land on a different
leaf of the id index each, and each dirty page is written to the WAL at commit and again at
the checkpoint. A 32 MiB page cache and a checkpoint every 10,000 pages (about 40 MiB of
WAL) instead of SQLite's 2 MiB and 1,000 pages let a page dirtied by several batches be
checkpointed once: 46,000 -> 77,000 events/s in batches of 1,000 (bench/LEDGER_RESULTS.md).
Time-ordered ids (stream ids, UUIDv7) dirty far fewer pages still.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tollway.errors import ConfigurationError, LedgerError, LedgerUnavailableError
from tollway.metering.ledger.base import AsyncLedger, Ledger
from tollway.metering.ledger.flows import Flow, T, drive_sqlite
from tollway.metering.ledger.ops import After, Rows
from tollway.metering.ledger.outbox import CommitExtras
from tollway.metering.ledger.queries import PreparedBatch, insert_sql, select_by_ids_sql
from tollway.metering.ledger.schema import migrate_flow

__all__ = ["AsyncSqliteLedger", "SqliteDatabase", "SqliteLedger"]

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_INSERT = insert_sql("?")
_IDS_PER_SELECT = 500  # well under SQLite's limit on bound parameters


class SqliteDatabase:
    """One SQLite connection behind a lock, with the ledger's three backend primitives (see
    `tollway.metering.ledger.base`); `SqliteLedger` and `AsyncSqliteLedger` both use it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        timeout: float = 5.0,
        cache_mib: int = 32,
        checkpoint_pages: int = 10_000,
    ) -> None:
        self.path = os.fspath(path)
        self.url = f"sqlite:///{self.path}"
        mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
        if mode not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous: {synchronous!r}; expected one of {', '.join(_SYNCHRONOUS)}"
            )
        for name, value in (("cache_mib", cache_mib), ("checkpoint_pages", checkpoint_pages)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name}: {value!r}; expected a positive int")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        with self._errors():
            conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
                if self.path != ":memory:":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {mode}")
                conn.execute(f"PRAGMA cache_size = -{cache_mib * 1024}")
                conn.execute(f"PRAGMA wal_autocheckpoint = {checkpoint_pages}")
                flow = migrate_flow(
                    "sqlite", where=self.url, now_us=time.time_ns() // 1000, param="?"
                )
                with _transaction(conn):
                    drive_sqlite(conn, flow)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise LedgerUnavailableError(f"ledger {self.url}: {text}") from exc
            raise LedgerError(f"ledger {self.url}: {text}") from exc
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.url}: {type(exc).__name__}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"ledger {self.url} is closed")
        return self._conn

    def ingest(
        self, batch: PreparedBatch, need_new: bool, after: After | None
    ) -> tuple[int, Rows, CommitExtras | None]:
        with self._lock, self._errors():
            conn = self._open()
            with _transaction(conn):
                # BEGIN IMMEDIATE holds the write lock: the ids found here are exactly those the
                # insert will skip, so the others are the new events.
                known = _existing_ids(conn, batch) if need_new and batch.rows else set()
                inserted, stored = _insert(conn, batch) if batch.rows else (0, [])
                if after is None:
                    return inserted, stored, None
                new = [event for event in batch.events if event.id not in known] if need_new else []
                return inserted, stored, drive_sqlite(conn, after(new))

    def transact(self, make: Callable[[], Flow[T]]) -> T:
        with self._lock, self._errors():
            conn = self._open()
            with _transaction(conn):
                return drive_sqlite(conn, make())

    def fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        with self._lock, self._errors():
            rows: Rows = self._open().execute(sql, params).fetchall()
            return rows

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class SqliteLedger(Ledger):
    """The ledger in a SQLite database file; ``":memory:"`` for a private in-memory one."""

    _param = "?"
    _dialect = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        timeout: float = 5.0,
        cache_mib: int = 32,
        checkpoint_pages: int = 10_000,
    ) -> None:
        self.database = SqliteDatabase(
            path,
            synchronous=synchronous,
            timeout=timeout,
            cache_mib=cache_mib,
            checkpoint_pages=checkpoint_pages,
        )
        self.path = self.database.path
        self.url = self.database.url

    def _ingest(
        self, batch: PreparedBatch, need_new: bool, after: After | None
    ) -> tuple[int, Rows, CommitExtras | None]:
        return self.database.ingest(batch, need_new, after)

    def _transact(self, make: Callable[[], Flow[T]]) -> T:
        return self.database.transact(make)

    def _fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        return self.database.fetch(sql, params)

    def close(self) -> None:
        self.database.close()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _insert(conn: sqlite3.Connection, batch: PreparedBatch) -> tuple[int, Rows]:
    before = conn.total_changes
    conn.executemany(_INSERT, batch.rows)
    inserted = conn.total_changes - before
    stored: Rows = []
    if inserted < len(batch.rows):
        ids = [event.id for event in batch.events]
        for at in range(0, len(ids), _IDS_PER_SELECT):
            chunk = ids[at : at + _IDS_PER_SELECT]
            stored.extend(conn.execute(select_by_ids_sql("?", len(chunk)), chunk))
    return inserted, stored


def _existing_ids(conn: sqlite3.Connection, batch: PreparedBatch) -> set[str]:
    ids = [event.id for event in batch.events]
    found: set[str] = set()
    for at in range(0, len(ids), _IDS_PER_SELECT):
        chunk = ids[at : at + _IDS_PER_SELECT]
        marks = ", ".join("?" * len(chunk))
        found.update(row[0] for row in conn.execute(
            f"SELECT id FROM usage_events WHERE id IN ({marks})", chunk
        ))  # fmt: skip
    return found


class AsyncSqliteLedger(AsyncLedger):
    """`SqliteLedger` for asyncio: each call runs the sync ledger's database in a worker thread
    (SQLite has no network to wait on, but a commit's fsync must not stall the event loop). One
    implementation of the logic: the same `SqliteDatabase` does the work."""

    _param = "?"
    _dialect = "sqlite"

    def __init__(self, ledger: SqliteLedger) -> None:
        self.sync = ledger
        self.url = ledger.url

    async def _ingest(
        self, batch: PreparedBatch, need_new: bool, after: After | None
    ) -> tuple[int, Rows, CommitExtras | None]:
        return await asyncio.to_thread(self.sync.database.ingest, batch, need_new, after)

    async def _transact(self, make: Callable[[], Flow[T]]) -> T:
        return await asyncio.to_thread(self.sync.database.transact, make)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        return await asyncio.to_thread(self.sync.database.fetch, sql, params)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)
