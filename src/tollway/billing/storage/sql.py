"""What every billing storage flow shares: the dialect's parameter mark and bounds on input.

The flows take the ledger's dialect first (``ledger.dialect``) and are run in one transaction
with ``ledger.transact(lambda: flow(ledger.dialect, ...))``, like the hook outbox's
(`tollway.metering.ledger.outbox`): SQLite, PostgreSQL and the async faces share each one.
"""

from __future__ import annotations

from typing import Literal

from tollway.errors import BillingError

__all__ = ["Dialect", "marks", "mark", "require_text"]

Dialect = Literal["sqlite", "postgres"]
TEXT_MAX = 256
"""Subjects, identities, ids, coupon codes: the longest text a billing key may be."""


def mark(dialect: Dialect) -> str:
    return "?" if dialect == "sqlite" else "%s"


def marks(dialect: Dialect, count: int) -> str:
    return ", ".join([mark(dialect)] * count)


def require_text(what: str, value: object, limit: int = TEXT_MAX) -> str:
    """``value`` as a key: a non-empty str of at most ``limit`` characters."""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BillingError(f"{what}: {value!r:.80} is not valid; expected 1..{limit} characters")
    return value
