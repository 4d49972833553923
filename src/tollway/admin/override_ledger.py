"""Per-subject overrides in the ledger (``policy_overrides``), append-only.

Each row is one decision of a support engineer: subject, limit name, the limit's spec (a
limit table, JSON), until when. The override in force for a (subject, limit) is its latest
row while that row has not expired; ending one early is a new row expiring at once. Flows
take the dialect first, as `tollway.admin.policy_ledger`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tollway.admin.policy_ledger import Dialect
from tollway.metering.ledger.flows import Flow, Query

_COLS = "subject, limit_name, spec, created_at_us, expires_at_us, created_by"
MAX_LIVE = 10_000
"""The most overrides in force at once (they are published in one store key)."""


@dataclass(frozen=True, slots=True)
class OverrideRecord:
    """One override row: ``spec`` (a limit table) for ``subject``'s ``limit`` until
    ``expires_at_us``."""

    subject: str
    limit: str
    spec: dict[str, Any]
    created_at_us: int
    expires_at_us: int
    by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "limit": self.limit,
            "spec": self.spec,
            "created_at_us": self.created_at_us,
            "expires_at_us": self.expires_at_us,
            "by": self.by,
        }

    def published(self) -> dict[str, Any]:
        """What the store carries of it (`tollway.watch` reads it)."""
        return {
            "subject": self.subject,
            "limit": self.limit,
            "spec": self.spec,
            "expires_us": self.expires_at_us,
        }


def _m(dialect: Dialect) -> str:
    return "?" if dialect == "sqlite" else "%s"


def add_override(
    dialect: Dialect, row: OverrideRecord, now_us: int
) -> Flow[tuple[OverrideRecord | None, OverrideRecord]]:
    """Record ``row``; (the override of that subject and limit in force before, ``row``)."""
    p = _m(dialect)
    before = yield from _latest(dialect, row.subject, row.limit)
    if before is not None and before.expires_at_us <= now_us:
        before = None
    created = row.created_at_us
    if before is not None and created <= before.created_at_us:
        created = before.created_at_us + 1  # the latest row stays the newest
    spec = json.dumps(row.spec, sort_keys=True)
    yield Query(
        f"INSERT INTO policy_overrides ({_COLS}) VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
        (row.subject, row.limit, spec, created, row.expires_at_us, row.by),
    )
    after = OverrideRecord(row.subject, row.limit, row.spec, created, row.expires_at_us, row.by)
    return before, after


def live_overrides(dialect: Dialect, now_us: int, subject: str | None = None) -> Flow[list[Any]]:
    """The overrides in force at ``now_us`` (of ``subject``, if given), by subject and limit."""
    p = _m(dialect)
    where, params = "", [now_us]
    if subject is not None:
        where, params = f" AND o.subject = {p}", [now_us, subject]  # type: ignore[list-item]
    rows = yield Query(
        f"SELECT {', '.join('o.' + c.strip() for c in _COLS.split(','))} "
        "FROM policy_overrides o WHERE o.created_at_us = (SELECT MAX(created_at_us) FROM "
        "policy_overrides l WHERE l.subject = o.subject AND l.limit_name = o.limit_name) "
        f"AND o.expires_at_us > {p}{where} ORDER BY o.subject, o.limit_name LIMIT {MAX_LIVE + 1}",
        tuple(params),
    )
    return [_record(row) for row in rows]


def _latest(dialect: Dialect, subject: str, limit: str) -> Flow[OverrideRecord | None]:
    p = _m(dialect)
    rows = yield Query(
        f"SELECT {_COLS} FROM policy_overrides WHERE subject = {p} AND limit_name = {p} "
        "ORDER BY created_at_us DESC LIMIT 1",
        (subject, limit),
    )
    return _record(rows[0]) if rows else None


def _record(row: Any) -> OverrideRecord:
    return OverrideRecord(
        str(row[0]), str(row[1]), json.loads(row[2]), int(row[3]), int(row[4]), str(row[5])
    )


__all__ = ["MAX_LIVE", "OverrideRecord", "add_override", "live_overrides"]
