"""`PostgresLedger` and `AsyncPostgresLedger`: the production ledger, on psycopg 3.

An `insert` is one transaction: the flow of `tollway.metering.ledger.ingest` (a ``COPY``
fast path, a careful path for redeliveries). Both faces drive the same flows (ingest,
migrations, the hook outbox) and share the connection's state (`_Postgres`) and the error
decisions; they differ only in ``await``.

The connection's life (connect, migrate once, run, drop a broken connection, retry once on a
connection found dead) is one generator too, `_Postgres._session`: it yields `Connect`,
`Execute` and `Close` requests, which each face answers with psycopg's sync or async calls.

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
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, Union
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow

from tollway.drive import adrive, drive
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


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection; answer it."""


@dataclass(frozen=True, slots=True)
class Execute:
    """Drive the flow ``make()`` on a cursor of ``conn`` (in a transaction when asked);
    answer its result."""

    conn: Any
    make: Callable[[], Flow[Any]]
    transaction: bool


@dataclass(frozen=True, slots=True)
class Close:
    """Close ``conn``, ignoring errors (a broken connection has nothing left to release)."""

    conn: Any


Io = Union[Connect, Execute, Close]  # noqa: UP007 (a runtime alias)
Session = Generator[Io, Any, T]


def _fetch_flow(sql: str, params: Sequence[Any]) -> Flow[Rows]:
    rows = yield Query(sql, params)
    return rows


class _Postgres:
    """What both faces share: the URL, the connection's options and the state that outlives
    one call, and the connection's life as a generator (`_session`)."""

    def __init__(self, url: str, *, connect_timeout: float, application_name: str) -> None:
        self._dsn = url
        self.url = redact_url(url)
        self._kwargs = _connect_kwargs(connect_timeout, application_name)
        self._ingest_state = IngestState()
        self._conn: Any = None
        self._migrated = False
        self._closed = False

    def _session(self, make: Callable[[], Flow[T]] | None, *, transaction: bool) -> Session[T]:
        """Run ``make()`` on the connection (connecting and migrating first when there is none
        or it broke); a connection found dead since its last use is replaced and the flow run
        once more; errors become `LedgerUnavailableError` / `LedgerError`."""
        for attempt in (1, 2):
            if self._closed:
                raise LedgerError(f"ledger {self.url} is closed")
            conn, reused = self._conn, True
            if conn is None or _lost(conn):
                conn, reused = (yield from self._reconnect()), False
            if make is None:
                return None  # type: ignore[return-value]  # connecting was the point
            try:
                result: T = yield Execute(conn, make, transaction)
                return result
            except psycopg.Error as exc:
                lost = _lost(conn)
                if lost:
                    yield from self._drop()
                if isinstance(exc, psycopg.OperationalError):
                    if lost and reused and attempt == 1:
                        continue  # a connection dead since its last use: once more, afresh
                    what = "connection lost" if lost else "unavailable"
                    raise _unavailable(self.url, what, exc) from exc
                raise _failed(self.url, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _reconnect(self) -> Session[Any]:
        yield from self._drop()
        with _connecting(self.url):
            conn = yield Connect()
        if not self._migrated:
            migration = migrate_flow(
                "postgres", where=self.url, now_us=time.time_ns() // 1000, param="%s"
            )
            try:
                with _migrating(self.url):
                    yield Execute(conn, lambda: migration, True)
            except BaseException:
                yield Close(conn)
                raise
            self._migrated = True
        self._conn = conn
        return conn

    def _drop(self) -> Session[None]:
        """Forget the connection (and its session's temp table) and close it."""
        conn, self._conn = self._conn, None
        self._ingest_state.temp_ready = False
        if conn is not None:
            yield Close(conn)

    def _closing(self) -> Session[None]:
        self._closed = True
        yield from self._drop()

    def _ingest_op(
        self, batch: PreparedBatch, need_new: bool, after: After | None
    ) -> Callable[[], Flow[Ingested]]:
        return lambda: ingest_flow(self._ingest_state, batch, need_new, after)

    def _ingested(self, done: Ingested) -> tuple[int, Rows, CommitExtras | None]:
        if done.used_temp:  # its transaction committed: the temp table stays for the session
            self._ingest_state.temp_ready = True
        return done.inserted, done.stored, done.extras


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
        self._run(None)

    def _run(self, make: Callable[[], Flow[T]] | None, *, transaction: bool = True) -> T:
        with self._lock:
            return drive(self._session(make, transaction=transaction), self._io, BaseException)

    def _io(self, request: Io) -> Any:
        if isinstance(request, Connect):
            return psycopg.connect(self._dsn, **self._kwargs)
        if isinstance(request, Close):
            with contextlib.suppress(Exception):
                request.conn.close()
            return None
        conn: psycopg.Connection[TupleRow] = request.conn
        scope = conn.transaction() if request.transaction else contextlib.nullcontext()
        with scope, conn.cursor() as cur:
            return drive_psycopg(cur, request.make())

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
            drive(self._closing(), self._io)


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

    @classmethod
    async def open(cls, url: str, **options: Any) -> AsyncPostgresLedger:
        ledger = cls(url, **options)
        await ledger.connect()
        return ledger

    async def connect(self) -> None:
        """Connect and migrate now (otherwise the first call does)."""
        await self._run(None)

    async def _run(self, make: Callable[[], Flow[T]] | None, *, transaction: bool = True) -> T:
        async with self._lock:
            session = self._session(make, transaction=transaction)
            return await adrive(session, self._io, BaseException)

    async def _io(self, request: Io) -> Any:
        if isinstance(request, Connect):
            return await psycopg.AsyncConnection.connect(self._dsn, **self._kwargs)
        if isinstance(request, Close):
            with contextlib.suppress(Exception):
                await request.conn.close()
            return None
        conn: psycopg.AsyncConnection[TupleRow] = request.conn
        scope = conn.transaction() if request.transaction else contextlib.nullcontext()
        async with scope, conn.cursor() as cur:
            return await drive_async_psycopg(cur, request.make())

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
            await adrive(self._closing(), self._io)
