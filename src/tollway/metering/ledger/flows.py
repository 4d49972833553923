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

__all__ = ["Flow", "Many", "Query", "drive_async_psycopg", "drive_psycopg", "drive_sqlite"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class Many:
    sql: str
    rows: Sequence[Sequence[Any]]


Step = Union[Query, Many]  # noqa: UP007 (a runtime alias)
Flow = Generator[Step, list[Any], T]


def drive_sqlite(conn: sqlite3.Connection, flow: Flow[T]) -> T:
    try:
        step = next(flow)
        while True:
            if isinstance(step, Many):
                conn.executemany(step.sql, step.rows)
                rows: list[Any] = []
            else:
                rows = conn.execute(step.sql, step.params).fetchall()
            step = flow.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result


def drive_psycopg(cur: psycopg.Cursor[TupleRow], flow: Flow[T]) -> T:
    try:
        step = next(flow)
        while True:
            rows: list[Any] = []
            if isinstance(step, Many):
                if step.rows:
                    cur.executemany(step.sql, step.rows)
            else:
                cur.execute(step.sql, step.params or None)
                rows = cur.fetchall() if cur.description is not None else []
            step = flow.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def drive_async_psycopg(cur: psycopg.AsyncCursor[TupleRow], flow: Flow[T]) -> T:
    try:
        step = next(flow)
        while True:
            rows: list[Any] = []
            if isinstance(step, Many):
                if step.rows:
                    await cur.executemany(step.sql, step.rows)
            else:
                await cur.execute(step.sql, step.params or None)
                rows = await cur.fetchall() if cur.description is not None else []
            step = flow.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result
