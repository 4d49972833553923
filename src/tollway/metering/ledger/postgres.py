"""`PostgresLedger` and `AsyncPostgresLedger`: the production ledger, on psycopg 3.

An `insert` is one transaction. Fast path: ``COPY`` the batch straight into ``usage_events``
inside a savepoint; every event new (the common case), that is all. When an id is already
there the COPY fails with a unique violation (one ERROR line in the server's log), the
savepoint is rolled back, and the batch takes the careful path: ``COPY`` into a session temp
table, then ``INSERT INTO usage_events SELECT ... ON CONFLICT (id) DO NOTHING`` (its row count
is the number of new events), and the stored rows of the skipped ids are read back to tell
duplicates from conflicts. Redeliveries come in runs (a worker died, another claims its
events), so the next `CAREFUL_BATCHES` batches go the careful way at once. The fast path took
the rate from about 66,000 to 79,000 events/s in batches of 1,000 (bench/LEDGER_RESULTS.md).

Both faces share the SQL (here and in `tollway.metering.ledger.queries`) and the row mapping;
they differ only in ``await``.

Outages: a refused or dropped connection raises `LedgerUnavailableError` and the broken
connection is dropped; the next call connects again by itself. A call that finds its idle
connection dead (the server restarted meanwhile) reconnects and retries once, so the first
call after a restart succeeds. A retried insert can only count an event that its first try
did commit as a duplicate: nothing is lost or recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow

from tollway.errors import ConfigurationError, LedgerError, LedgerUnavailableError
from tollway.metering.ledger.base import After, AsyncLedger, Ledger, Rows
from tollway.metering.ledger.events import COLUMNS, UsageEvent
from tollway.metering.ledger.flows import Flow, drive_async_psycopg, drive_psycopg
from tollway.metering.ledger.outbox import CommitExtras
from tollway.metering.ledger.queries import PreparedBatch
from tollway.metering.ledger.schema import migrate_flow

__all__ = ["AsyncPostgresLedger", "PostgresLedger", "redact_url"]

T = TypeVar("T")

_COLS = ", ".join(COLUMNS)
_TEMP = "tollway_ingest"
CREATE_TEMP_SQL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_TEMP} (LIKE usage_events) ON COMMIT DELETE ROWS"
)
COPY_SQL = f"COPY {_TEMP} ({_COLS}) FROM STDIN"
INSERT_SELECT_SQL = (
    f"INSERT INTO usage_events ({_COLS}) SELECT {_COLS} FROM {_TEMP} ON CONFLICT (id) DO NOTHING"
)
DIRECT_COPY_SQL = f"COPY usage_events ({_COLS}) FROM STDIN"
CAREFUL_BATCHES = 16
INSERT_SELECT_RETURNING_SQL = INSERT_SELECT_SQL + " RETURNING id"
STORED_SQL = (
    f"SELECT {', '.join('e.' + c for c in COLUMNS)} FROM usage_events e JOIN {_TEMP} t "
    "ON t.id = e.id"
)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and ``repr``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://(unparsable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _connect_kwargs(connect_timeout: float, application_name: str) -> dict[str, Any]:
    if connect_timeout <= 0:
        raise ConfigurationError(f"connect_timeout: {connect_timeout!r}; expected > 0 seconds")
    # libpq takes whole seconds and treats values below 2 as 2.
    return {
        "autocommit": True,
        "connect_timeout": max(2, round(connect_timeout)),
        "application_name": application_name,
    }


def _unavailable(url: str, what: str, exc: BaseException) -> LedgerUnavailableError:
    return LedgerUnavailableError(f"ledger {url}: {what}: {_first_line(exc)}")


def _failed(url: str, exc: BaseException) -> LedgerError:
    return LedgerError(f"ledger {url}: {type(exc).__name__}: {_first_line(exc)}")


def _params(params: Sequence[Any]) -> Sequence[Any] | None:
    return params or None


def _new_events(batch: PreparedBatch, need_new: bool, new_ids: set[str] | None) -> list[UsageEvent]:
    """The events of ``batch`` the commit inserted (``new_ids`` None: all of them)."""
    if not need_new:
        return []
    if new_ids is None:
        return list(batch.events)
    return [event for event in batch.events if event.id in new_ids]


class PostgresLedger(Ledger):
    """The ledger in a PostgreSQL database (``postgresql://user@host:port/db?...``; libpq's
    parameters, ``options=-csearch_path=...`` included). Connects and migrates on construction;
    one connection, guarded by a lock."""

    _param = "%s"
    _dialect = "postgres"
    _usage_style = "width_bucket"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        application_name: str = "tollway-ledger",
    ) -> None:
        self._dsn = url
        self.url = redact_url(url)
        self._kwargs = _connect_kwargs(connect_timeout, application_name)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._temp_ready = False
        self._careful = 0  # batches left to send the careful way
        self._migrated = False
        self._closed = False
        with self._lock:
            self._connection()

    # ------------------------------------------------------------------ connection
    def _connection(self) -> tuple[psycopg.Connection[TupleRow], bool]:
        """The open connection and whether it was reused (vs. made just now)."""
        if self._closed:
            raise LedgerError(f"ledger {self.url} is closed")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, True
        self._discard()
        try:
            conn = psycopg.connect(self._dsn, **self._kwargs)
        except psycopg.OperationalError as exc:
            raise _unavailable(self.url, "cannot connect", exc) from exc
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"ledger {self.url}: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise _failed(self.url, exc) from exc
        try:
            if not self._migrated:
                flow = migrate_flow(
                    "postgres", where=self.url, now_us=time.time_ns() // 1000, param="%s"
                )
                with conn.transaction(), conn.cursor() as cur:
                    drive_psycopg(cur, flow)
                self._migrated = True
        except psycopg.OperationalError as exc:
            conn.close()
            raise _unavailable(self.url, "migrating", exc) from exc
        except psycopg.Error as exc:
            conn.close()
            raise _failed(self.url, exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn, False

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._temp_ready = False
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                conn.close()

    def _run(self, op: Callable[[psycopg.Connection[TupleRow]], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                conn, reused = self._connection()
                try:
                    return op(conn)
                except psycopg.OperationalError as exc:
                    lost = conn.closed or conn.broken
                    if lost:
                        self._discard()
                    if lost and reused and attempt == 1:
                        continue  # a connection dead since its last use: once more, afresh
                    raise _unavailable(
                        self.url, "connection lost" if lost else "unavailable", exc
                    ) from exc
                except psycopg.Error as exc:
                    if conn.closed or conn.broken:
                        self._discard()
                    raise _failed(self.url, exc) from exc
            raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ backend
    def _write(self, batch: PreparedBatch) -> tuple[int, Rows]:
        rows = batch.rows

        def op(conn: psycopg.Connection[TupleRow]) -> tuple[int, Rows]:
            stored: Rows = []
            with conn.transaction(), conn.cursor() as cur:
                if self._careful == 0:
                    try:
                        with conn.transaction(), cur.copy(DIRECT_COPY_SQL) as copy:
                            for row in rows:
                                copy.write_row(row)
                        return len(rows), stored
                    except psycopg.errors.UniqueViolation:
                        self._careful = CAREFUL_BATCHES
                self._careful -= 1
                if not self._temp_ready:
                    cur.execute(CREATE_TEMP_SQL)
                with cur.copy(COPY_SQL) as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(INSERT_SELECT_SQL)
                inserted = cur.rowcount
                if inserted < len(rows):
                    stored = list(cur.execute(STORED_SQL).fetchall())
            self._temp_ready = True
            return inserted, stored

        return self._run(op)

    def _commit(
        self, batch: PreparedBatch, need_new: bool, after: After
    ) -> tuple[int, Rows, CommitExtras]:
        rows = batch.rows

        def op(conn: psycopg.Connection[TupleRow]) -> tuple[int, Rows, CommitExtras]:
            stored: Rows = []
            inserted = 0
            new_ids: set[str] | None = None  # None: every event of the batch was new
            used_temp = False
            with conn.transaction(), conn.cursor() as cur:
                direct = False
                if rows and self._careful == 0:
                    try:
                        with conn.transaction(), cur.copy(DIRECT_COPY_SQL) as copy:
                            for row in rows:
                                copy.write_row(row)
                        inserted, direct = len(rows), True
                    except psycopg.errors.UniqueViolation:
                        self._careful = CAREFUL_BATCHES
                if rows and not direct:
                    self._careful = max(0, self._careful - 1)
                    if not self._temp_ready:
                        cur.execute(CREATE_TEMP_SQL)
                    used_temp = True
                    with cur.copy(COPY_SQL) as copy:
                        for row in rows:
                            copy.write_row(row)
                    # RETURNING names exactly the rows this transaction inserted, even with
                    # another worker committing the same ids at the same time.
                    cur.execute(INSERT_SELECT_RETURNING_SQL)
                    new_ids = {row[0] for row in cur.fetchall()}
                    inserted = len(new_ids)
                    if inserted < len(rows):
                        stored = list(cur.execute(STORED_SQL).fetchall())
                extras = drive_psycopg(cur, after(_new_events(batch, need_new, new_ids)))
            if used_temp:
                self._temp_ready = True
            return inserted, stored, extras

        return self._run(op)

    def _transact(self, make: Callable[[], Flow[T]]) -> T:
        def op(conn: psycopg.Connection[TupleRow]) -> T:
            with conn.transaction(), conn.cursor() as cur:
                return drive_psycopg(cur, make())

        return self._run(op)

    def _fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        def op(conn: psycopg.Connection[TupleRow]) -> Rows:
            return list(conn.execute(sql, _params(params)).fetchall())

        return self._run(op)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()


class AsyncPostgresLedger(AsyncLedger):
    """`PostgresLedger` on psycopg's ``AsyncConnection``. Connects (and migrates) on the first
    call, or at once with ``await AsyncPostgresLedger.open(url)`` / ``await ledger.connect()``."""

    _param = "%s"
    _dialect = "postgres"
    _usage_style = "width_bucket"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        application_name: str = "tollway-ledger",
    ) -> None:
        self._dsn = url
        self.url = redact_url(url)
        self._kwargs = _connect_kwargs(connect_timeout, application_name)
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._temp_ready = False
        self._careful = 0  # batches left to send the careful way
        self._migrated = False
        self._closed = False

    @classmethod
    async def open(cls, url: str, **options: Any) -> AsyncPostgresLedger:
        ledger = cls(url, **options)
        await ledger.connect()
        return ledger

    async def connect(self) -> None:
        """Connect and migrate now (otherwise the first call does)."""
        async with self._lock:
            await self._connection()

    async def _connection(self) -> tuple[psycopg.AsyncConnection[TupleRow], bool]:
        if self._closed:
            raise LedgerError(f"ledger {self.url} is closed")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, True
        await self._discard()
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, **self._kwargs)
        except psycopg.OperationalError as exc:
            raise _unavailable(self.url, "cannot connect", exc) from exc
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"ledger {self.url}: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise _failed(self.url, exc) from exc
        try:
            if not self._migrated:
                flow = migrate_flow(
                    "postgres", where=self.url, now_us=time.time_ns() // 1000, param="%s"
                )
                async with conn.transaction(), conn.cursor() as cur:
                    await drive_async_psycopg(cur, flow)
                self._migrated = True
        except psycopg.OperationalError as exc:
            await conn.close()
            raise _unavailable(self.url, "migrating", exc) from exc
        except psycopg.Error as exc:
            await conn.close()
            raise _failed(self.url, exc) from exc
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn, False

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._temp_ready = False
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                await conn.close()

    async def _run(self, op: Callable[[psycopg.AsyncConnection[TupleRow]], Awaitable[T]]) -> T:
        async with self._lock:
            for attempt in (1, 2):
                conn, reused = await self._connection()
                try:
                    return await op(conn)
                except psycopg.OperationalError as exc:
                    lost = conn.closed or conn.broken
                    if lost:
                        await self._discard()
                    if lost and reused and attempt == 1:
                        continue
                    raise _unavailable(
                        self.url, "connection lost" if lost else "unavailable", exc
                    ) from exc
                except psycopg.Error as exc:
                    if conn.closed or conn.broken:
                        await self._discard()
                    raise _failed(self.url, exc) from exc
            raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, batch: PreparedBatch) -> tuple[int, Rows]:
        rows = batch.rows

        async def op(conn: psycopg.AsyncConnection[TupleRow]) -> tuple[int, Rows]:
            stored: Rows = []
            async with conn.transaction(), conn.cursor() as cur:
                if self._careful == 0:
                    try:
                        async with conn.transaction(), cur.copy(DIRECT_COPY_SQL) as copy:
                            for row in rows:
                                await copy.write_row(row)
                        return len(rows), stored
                    except psycopg.errors.UniqueViolation:
                        self._careful = CAREFUL_BATCHES
                self._careful -= 1
                if not self._temp_ready:
                    await cur.execute(CREATE_TEMP_SQL)
                async with cur.copy(COPY_SQL) as copy:
                    for row in rows:
                        await copy.write_row(row)
                await cur.execute(INSERT_SELECT_SQL)
                inserted = cur.rowcount
                if inserted < len(rows):
                    stored = list(await (await cur.execute(STORED_SQL)).fetchall())
            self._temp_ready = True
            return inserted, stored

        return await self._run(op)

    async def _commit(
        self, batch: PreparedBatch, need_new: bool, after: After
    ) -> tuple[int, Rows, CommitExtras]:
        rows = batch.rows

        async def op(conn: psycopg.AsyncConnection[TupleRow]) -> tuple[int, Rows, CommitExtras]:
            stored: Rows = []
            inserted = 0
            new_ids: set[str] | None = None
            used_temp = False
            async with conn.transaction(), conn.cursor() as cur:
                direct = False
                if rows and self._careful == 0:
                    try:
                        async with conn.transaction(), cur.copy(DIRECT_COPY_SQL) as copy:
                            for row in rows:
                                await copy.write_row(row)
                        inserted, direct = len(rows), True
                    except psycopg.errors.UniqueViolation:
                        self._careful = CAREFUL_BATCHES
                if rows and not direct:
                    self._careful = max(0, self._careful - 1)
                    if not self._temp_ready:
                        await cur.execute(CREATE_TEMP_SQL)
                    used_temp = True
                    async with cur.copy(COPY_SQL) as copy:
                        for row in rows:
                            await copy.write_row(row)
                    await cur.execute(INSERT_SELECT_RETURNING_SQL)
                    new_ids = {row[0] for row in await cur.fetchall()}
                    inserted = len(new_ids)
                    if inserted < len(rows):
                        stored = list(await (await cur.execute(STORED_SQL)).fetchall())
                flow = after(_new_events(batch, need_new, new_ids))
                extras = await drive_async_psycopg(cur, flow)
            if used_temp:
                self._temp_ready = True
            return inserted, stored, extras

        return await self._run(op)

    async def _transact(self, make: Callable[[], Flow[T]]) -> T:
        async def op(conn: psycopg.AsyncConnection[TupleRow]) -> T:
            async with conn.transaction(), conn.cursor() as cur:
                return await drive_async_psycopg(cur, make())

        return await self._run(op)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        async def op(conn: psycopg.AsyncConnection[TupleRow]) -> Rows:
            cur = await conn.execute(sql, _params(params))
            return list(await cur.fetchall())

        return await self._run(op)

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            await self._discard()
