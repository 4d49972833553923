"""The ledger: the system of record for usage events, on SQLite (embedded) or PostgreSQL.

    from tollway.metering.ledger import UsageEvent, open_ledger

    with open_ledger("sqlite:///usage.db") as ledger:       # or "postgresql://user@host/db"
        ledger.insert(events)                                 # idempotent on UsageEvent.id
        ledger.totals("acct_42", start_us, end_us)            # {"calls": Totals(...)}
        ledger.usage("acct_42", start_us, end_us, period="day", tz="America/New_York")

`open_ledger` applies the schema's migrations (`tollway.metering.ledger.schema`) when it opens
a database. The PostgreSQL backends need psycopg 3: ``pip install 'tollway[postgres]'``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tollway.errors import ConfigurationError
from tollway.metering.ledger.base import AsyncLedger, Ledger
from tollway.metering.ledger.events import UsageEvent
from tollway.metering.ledger.queries import Conflict, PeriodUsage, Totals, WriteResult
from tollway.metering.ledger.schema import SCHEMA_VERSION
from tollway.metering.ledger.sealing import Sealer, sealer_for
from tollway.metering.ledger.sqlite import AsyncSqliteLedger, SqliteLedger

if TYPE_CHECKING:
    from tollway.metering.ledger.postgres import AsyncPostgresLedger, PostgresLedger

__all__ = [
    "SCHEMA_VERSION",
    "AsyncLedger",
    "AsyncPostgresLedger",
    "AsyncSqliteLedger",
    "Conflict",
    "Ledger",
    "PeriodUsage",
    "PostgresLedger",
    "Sealer",
    "SqliteLedger",
    "Totals",
    "UsageEvent",
    "WriteResult",
    "open_async_ledger",
    "open_ledger",
    "sealer_for",
]

_POSTGRES_SCHEMES = ("postgresql", "postgres")
_SQLITE_OPTIONS: dict[str, type] = {
    "synchronous": str,
    "timeout": float,
    "cache_mib": int,
    "checkpoint_pages": int,
}


def __getattr__(name: str) -> Any:
    # psycopg is optional: import the PostgreSQL backends only when asked for.
    if name in ("PostgresLedger", "AsyncPostgresLedger"):
        from tollway.metering.ledger import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _postgres_module() -> Any:
    try:
        from tollway.metering.ledger import postgres
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "a postgresql:// ledger needs psycopg 3: pip install 'tollway[postgres]'"
        ) from exc
    return postgres


def sqlite_path(url: str) -> tuple[str, dict[str, Any]]:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``sqlite:///:memory:`` -> path,
    and the options of the query string (``synchronous``, ``timeout``, ``cache_mib``,
    ``checkpoint_pages``: see `SqliteLedger`)."""
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigurationError(
            f"ledger URL {url!r}: a sqlite URL has no host; write sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise ConfigurationError(f"ledger URL {url!r}: no database path after sqlite:///")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _SQLITE_OPTIONS.get(key)
        if kind is None:
            raise ConfigurationError(
                f"ledger URL {url!r}: unknown option {key!r}; expected {', '.join(_SQLITE_OPTIONS)}"
            )
        try:
            options[key] = kind(value)
        except ValueError as exc:
            raise ConfigurationError(f"ledger URL {url!r}: {key}={value!r} is not valid") from exc
    return path, options


def open_ledger(url: str, **options: Any) -> Ledger:
    """A ledger for ``sqlite:///path``, ``sqlite:///:memory:`` or ``postgresql://...``;
    ``options`` go to the backend's constructor (`SqliteLedger`, `PostgresLedger`)."""
    if not isinstance(url, str):
        raise ConfigurationError(f"ledger URL: {url!r} is not a str")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        path, from_url = sqlite_path(url)
        return SqliteLedger(path, **{**from_url, **options})
    if scheme in _POSTGRES_SCHEMES:
        ledger: Ledger = _postgres_module().PostgresLedger(url, **options)
        return ledger
    raise ConfigurationError(
        f"ledger URL {url!r}: expected sqlite:///path, sqlite:///:memory: or postgresql://..."
    )


async def open_async_ledger(url: str, **options: Any) -> AsyncLedger:
    """The async face, connected and migrated: on PostgreSQL psycopg's async connection; on
    SQLite the sync ledger, each call run in a worker thread (`AsyncSqliteLedger`)."""
    scheme = url.partition("://")[0].lower() if isinstance(url, str) and "://" in url else ""
    if scheme == "sqlite":
        sync = await asyncio.to_thread(open_ledger, url, **options)
        assert isinstance(sync, SqliteLedger)
        return AsyncSqliteLedger(sync)
    if scheme not in _POSTGRES_SCHEMES:
        raise ConfigurationError(
            f"ledger URL {url!r}: expected sqlite:///path, sqlite:///:memory: or postgresql://..."
        )
    ledger: AsyncLedger = await _postgres_module().AsyncPostgresLedger.open(url, **options)
    return ledger
