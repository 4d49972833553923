"""What the admin tests share: a raw SQL helper behind the ledger's back, and principals."""

from __future__ import annotations

import sqlite3
from typing import Any

from tollway.admin.roles import Principal

ROOT = Principal(token_id="cli", name="cli:test", role="admin")


def raw(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the ledger's database directly (``%s`` marks, both dialects)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        cur = pg.execute(sql, params or None)
        return cur.fetchall() if cur.description is not None else []
