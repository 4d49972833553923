"""Statement flows: a transaction's statements as a generator, driven by each backend.

A flow yields `Query` (one statement; the driver sends back its rows, ``[]`` for none) or `Many`
(one statement over many rows: ``executemany``; the driver sends back ``[]``), and returns its
result. The logic of a transaction (what to ask, what to do with the answers) lives once, in
the flow; SQLite, psycopg and psycopg's async face only execute (as `migrate_flow` does).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

__all__ = [
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


Statement = Union[Query, Many]  # noqa: UP007 (a runtime alias)
"""What a flow asks its driver to execute (not the engine's `Step`)."""
Flow = Generator[Statement, list[Any], T]


def drive_sqlite(conn: sqlite3.Connection, flow: Flow[T]) -> T:
    try:
        statement = next(flow)
        while True:
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
            if isinstance(statement, Many):
                if statement.rows:
                    cur.executemany(statement.sql, statement.rows)
            else:
                cur.execute(statement.sql, statement.params or None)
                rows = cur.fetchall() if cur.description is not None else []
            statement = flow.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def drive_async_psycopg(cur: psycopg.AsyncCursor[TupleRow], flow: Flow[T]) -> T:
    try:
        statement = next(flow)
        while True:
            rows: list[Any] = []
            if isinstance(statement, Many):
                if statement.rows:
                    await cur.executemany(statement.sql, statement.rows)
            else:
                await cur.execute(statement.sql, statement.params or None)
                rows = await cur.fetchall() if cur.description is not None else []
            statement = flow.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result
