"""`PostgresLedger` and `AsyncPostgresLedger`: the production ledger, on psycopg 3.

An `insert` is one transaction: the flow of `tollway.metering.ledger.ingest` (a ``COPY``
fast path, a careful path for redeliveries). Both faces drive the same flows (ingest,
migrations, the hook outbox) and share the connection's state (`_Postgres`) and the error
decisions; they differ only in ``await``.

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow

from tollway.errors import ConfigurationError, LedgerError, LedgerUnavailableError
from tollway.metering.ledger.base import AsyncLedger, Ledger
from tollway.metering.ledger.flows import Flow, Query, drive_async_psycopg, drive_psycopg
from tollway.metering.ledger.ingest import Ingested, IngestState, ingest_flow
from tollway.metering.ledger.ops import After, Rows
from tollway.metering.ledger.outbox import CommitExtras
from tollway.metering.ledger.queries import PreparedBatch
from tollway.metering.ledger.schema import migrate_flow

__all__ = ["AsyncPostgresLedger", "PostgresLedger", "redact_url"]

T = TypeVar("T")
AnyConnection = psycopg.Connection[TupleRow] | psycopg.AsyncConnection[TupleRow]


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


@contextlib.contextmanager
def _connecting(url: str) -> Iterator[None]:
    try:
        yield
    except psycopg.OperationalError as exc:
        raise _unavailable(url, "cannot connect", exc) from exc
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"ledger {url}: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise _failed(url, exc) from exc


@contextlib.contextmanager
def _migrating(url: str) -> Iterator[None]:
    try:
        yield
    except psycopg.OperationalError as exc:
        raise _unavailable(url, "migrating", exc) from exc
    except psycopg.Error as exc:
        raise _failed(url, exc) from exc


def _lost(conn: AnyConnection) -> bool:
    return conn.closed or conn.broken


def _fetch_flow(sql: str, params: Sequence[Any]) -> Flow[Rows]:
    rows = yield Query(sql, params)
    return rows


class _Postgres:
    """What both faces share: the URL, the connection's options and the state that outlives
    one call; and what to do when a call fails."""

    def __init__(self, url: str, *, connect_timeout: float, application_name: str) -> None:
        self._dsn = url
        self.url = redact_url(url)
        self._kwargs = _connect_kwargs(connect_timeout, application_name)
        self._ingest_state = IngestState()
        self._migrated = False
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"ledger {self.url} is closed")

    def _migration(self) -> Flow[int] | None:
        """The migration flow, while this ledger has not migrated yet."""
        if self._migrated:
            return None
        return migrate_flow("postgres", where=self.url, now_us=time.time_ns() // 1000, param="%s")

    def _forgotten(self) -> None:
        """The connection was dropped: its session (the temp table) went with it."""
        self._ingest_state.temp_ready = False

    def _ingest_op(
        self, batch: PreparedBatch, need_new: bool, after: After | None
    ) -> Callable[[], Flow[Ingested]]:
        return lambda: ingest_flow(self._ingest_state, batch, need_new, after)

    def _ingested(self, done: Ingested) -> tuple[int, Rows, CommitExtras | None]:
        if done.used_temp:  # its transaction committed: the temp table stays for the session
            self._ingest_state.temp_ready = True
        return done.inserted, done.stored, done.extras

    def _failure(
        self, conn: AnyConnection, exc: psycopg.Error, *, reused: bool, attempt: int
    ) -> Exception | None:
        """What to raise for ``exc``; None: a connection dead since its last use, so once more
        on a new one. The caller drops the connection first when it is lost."""
        lost = _lost(conn)
        if isinstance(exc, psycopg.OperationalError):
            if lost and reused and attempt == 1:
                return None
            return _unavailable(self.url, "connection lost" if lost else "unavailable", exc)
        return _failed(self.url, exc)


class PostgresLedger(_Postgres, Ledger):
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
        super().__init__(url, connect_timeout=connect_timeout, application_name=application_name)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[TupleRow] | None = None
        with self._lock:
            self._connection()

    def _connection(self) -> tuple[psycopg.Connection[TupleRow], bool]:
        """The open connection and whether it was reused (vs. made just now)."""
        self._check_open()
        conn = self._conn
        if conn is not None and not _lost(conn):
            return conn, True
        self._discard()
        with _connecting(self.url):
            conn = psycopg.connect(self._dsn, **self._kwargs)
        try:
            flow = self._migration()
            if flow is not None:
                with _migrating(self.url), conn.transaction(), conn.cursor() as cur:
                    drive_psycopg(cur, flow)
                self._migrated = True
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn, False

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._forgotten()
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                conn.close()

    def _run(self, make: Callable[[], Flow[T]], *, transaction: bool = True) -> T:
        with self._lock:
            for attempt in (1, 2):
                conn, reused = self._connection()
                try:
                    scope = conn.transaction() if transaction else contextlib.nullcontext()
                    with scope, conn.cursor() as cur:
                        return drive_psycopg(cur, make())
                except psycopg.Error as exc:
                    if _lost(conn):
                        self._discard()
                    error = self._failure(conn, exc, reused=reused, attempt=attempt)
                    if error is not None:
                        raise error from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def _ingest(
        self, batch: PreparedBatch, need_new: bool, after: After | None
    ) -> tuple[int, Rows, CommitExtras | None]:
        return self._ingested(self._run(self._ingest_op(batch, need_new, after)))

    def _transact(self, make: Callable[[], Flow[T]]) -> T:
        return self._run(make)

    def _fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        return self._run(lambda: _fetch_flow(sql, params), transaction=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()


class AsyncPostgresLedger(_Postgres, AsyncLedger):
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
        super().__init__(url, connect_timeout=connect_timeout, application_name=application_name)
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None

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
        self._check_open()
        conn = self._conn
        if conn is not None and not _lost(conn):
            return conn, True
        await self._discard()
        with _connecting(self.url):
            conn = await psycopg.AsyncConnection.connect(self._dsn, **self._kwargs)
        try:
            flow = self._migration()
            if flow is not None:
                with _migrating(self.url):
                    async with conn.transaction(), conn.cursor() as cur:
                        await drive_async_psycopg(cur, flow)
                self._migrated = True
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn, False

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._forgotten()
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                await conn.close()

    async def _run(self, make: Callable[[], Flow[T]], *, transaction: bool = True) -> T:
        async with self._lock:
            for attempt in (1, 2):
                conn, reused = await self._connection()
                try:
                    scope = conn.transaction() if transaction else contextlib.nullcontext()
                    async with scope, conn.cursor() as cur:
                        return await drive_async_psycopg(cur, make())
                except psycopg.Error as exc:
                    if _lost(conn):
                        await self._discard()
                    error = self._failure(conn, exc, reused=reused, attempt=attempt)
                    if error is not None:
                        raise error from exc
            raise AssertionError("unreachable")  # pragma: no cover

    async def _ingest(
        self, batch: PreparedBatch, need_new: bool, after: After | None
    ) -> tuple[int, Rows, CommitExtras | None]:
        return self._ingested(await self._run(self._ingest_op(batch, need_new, after)))

    async def _transact(self, make: Callable[[], Flow[T]]) -> T:
        return await self._run(make)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> Rows:
        return await self._run(lambda: _fetch_flow(sql, params), transaction=False)

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            await self._discard()
