"""Statement flows: a transaction's statements as a generator, driven by each backend.

A flow yields a `Statement`: `Query` (one statement; the driver sends back its rows, ``[]``
for none), `Many` (one statement over many rows: ``executemany``; the driver sends back
``[]``) or, on PostgreSQL only, `Copy` (``COPY ... FROM STDIN``; ``[]``), and returns its
result. The logic of a transaction (what to ask, what to do with the answers) lives once, in
the flow; SQLite, psycopg and psycopg's async face only execute (as `migrate_flow` does).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

from tollway.errors import LedgerError

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

__all__ = [
    "Copy",
    "Flow",
    "Many",
    "Query",
    "Statement",
    "drive_async_psycopg",
    "drive_psycopg",
    "drive_sqlite",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class Many:
    sql: str
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Copy:
    """PostgreSQL's ``COPY ... FROM STDIN`` of ``rows``. With ``savepoint`` it runs inside a
    savepoint, and a failure is thrown into the flow (which may catch it and go on: the
    transaction is still usable)."""

    sql: str
    rows: Sequence[Sequence[Any]]
    savepoint: bool = False


Statement = Union[Query, Many, Copy]  # noqa: UP007 (a runtime alias)
"""What a flow asks its driver to execute (not the engine's `Step`)."""
Flow = Generator[Statement, list[Any], T]


def drive_sqlite(conn: sqlite3.Connection, flow: Flow[T]) -> T:
    try:
        statement = next(flow)
        while True:
            if isinstance(statement, Copy):
                raise LedgerError("COPY is PostgreSQL's; a SQLite flow cannot use it")
            if isinstance(statement, Many):
                conn.executemany(statement.sql, statement.rows)
                rows: list[Any] = []
            else:
                rows = conn.execute(statement.sql, statement.params).fetchall()
            statement = flow.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result


def drive_psycopg(cur: psycopg.Cursor[TupleRow], flow: Flow[T]) -> T:
    try:
        statement = next(flow)
        while True:
            rows: list[Any] = []
            try:
                if isinstance(statement, Copy):
                    with _savepoint(cur, statement), cur.copy(statement.sql) as copy:
                        for row in statement.rows:
                            copy.write_row(row)
                elif isinstance(statement, Many):
                    if statement.rows:
                        cur.executemany(statement.sql, statement.rows)
                else:
                    cur.execute(statement.sql, statement.params or None)
                    rows = cur.fetchall() if cur.description is not None else []
            except Exception as exc:
                if not (isinstance(statement, Copy) and statement.savepoint):
                    raise
                statement = flow.throw(exc)
                continue
            statement = flow.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def drive_async_psycopg(cur: psycopg.AsyncCursor[TupleRow], flow: Flow[T]) -> T:
    try:
        statement = next(flow)
        while True:
            rows: list[Any] = []
            try:
                if isinstance(statement, Copy):
                    async with _async_savepoint(cur, statement), cur.copy(statement.sql) as copy:
                        for row in statement.rows:
                            await copy.write_row(row)
                elif isinstance(statement, Many):
                    if statement.rows:
                        await cur.executemany(statement.sql, statement.rows)
                else:
                    await cur.execute(statement.sql, statement.params or None)
                    rows = await cur.fetchall() if cur.description is not None else []
            except Exception as exc:
                if not (isinstance(statement, Copy) and statement.savepoint):
                    raise
                statement = flow.throw(exc)
                continue
            statement = flow.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result


def _savepoint(cur: psycopg.Cursor[TupleRow], copy: Copy) -> Any:
    return cur.connection.transaction() if copy.savepoint else contextlib.nullcontext()


def _async_savepoint(cur: psycopg.AsyncCursor[TupleRow], copy: Copy) -> Any:
    return cur.connection.transaction() if copy.savepoint else contextlib.nullcontext()
