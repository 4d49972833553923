"""Policy versions and activations in the ledger (``policy_versions``, ``policy_activations``).

Flows taking the dialect first, run in one transaction each by
``ledger.transact(lambda: flow(ledger.dialect, ...))`` (as `tollway.billing.storage`), so the
sync and async faces share them. Activations are append-only: a rollback is a new row that
puts back the state before the latest one (and a second rollback the state before that).
Two activations at once are serialized: SQLite's write lock, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from tollway.engine.cohort import Cohort
from tollway.errors import InvalidArgumentError, UnknownNameError
from tollway.metering.ledger.flows import Flow, Query
from tollway.watch import Activation

Dialect = Literal["sqlite", "postgres"]
_LOCK = "SELECT pg_advisory_xact_lock(7330480721592010344)"
_VCOLS = "version, format, created_at_us, created_by, note"
_ACOLS = "seq, version, cohort, base, prior, at_us, activated_by, note"


@dataclass(frozen=True, slots=True)
class Version:
    """One stored policy version; ``body`` is its text as uploaded (empty in listings)."""

    version: str
    format: str
    created_at_us: int
    created_by: str
    note: str
    body: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "format": self.format,
            "created_at_us": self.created_at_us,
            "created_by": self.created_by,
            "note": self.note,
        }
        if self.body:
            out["body"] = self.body
        return out


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """One row of the activation history: ``version`` put in force for ``cohort`` (None:
    everyone), ``base`` for everyone else, replacing activation ``prior``."""

    seq: int
    version: str
    cohort: Cohort | None
    base: str
    prior: int | None
    at_us: int
    by: str
    note: str

    @property
    def state(self) -> Activation:
        """What the store publishes for it (`tollway.watch.Activation`)."""
        if self.cohort is None:
            return Activation(self.seq, self.version)
        return Activation(self.seq, self.base, self.version, self.cohort)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "version": self.version,
            "cohort": None if self.cohort is None else self.cohort.to_dict(),
            "base": self.base,
            "prior": self.prior,
            "at_us": self.at_us,
            "by": self.by,
            "note": self.note,
        }


def _m(dialect: Dialect) -> str:
    return "?" if dialect == "sqlite" else "%s"


def add_version(dialect: Dialect, version: Version, body: str) -> Flow[tuple[Version, bool]]:
    """Store ``version`` (idempotent on its hash): the stored row and whether it is new."""
    p = _m(dialect)
    inserted = yield Query(
        f"INSERT INTO policy_versions ({_VCOLS}, body) VALUES ({p}, {p}, {p}, {p}, {p}, {p}) "
        "ON CONFLICT (version) DO NOTHING RETURNING version",
        (
            version.version,
            version.format,
            version.created_at_us,
            version.created_by,
            version.note,
            body,
        ),
    )
    stored = yield from get_version(dialect, version.version)
    assert stored is not None
    return stored, bool(inserted)


def get_version(dialect: Dialect, version: str) -> Flow[Version | None]:
    rows = yield Query(
        f"SELECT {_VCOLS}, body FROM policy_versions WHERE version = {_m(dialect)}", (version,)
    )
    return _version(rows[0]) if rows else None


def list_versions(dialect: Dialect) -> Flow[list[Version]]:
    """Every version, newest first (without their texts)."""
    rows = yield Query(
        f"SELECT {_VCOLS}, '' FROM policy_versions ORDER BY created_at_us DESC, version"
    )
    return [_version(row) for row in rows]


def current(dialect: Dialect) -> Flow[ActivationRecord | None]:
    """The activation in force (the latest row), or None before the first."""
    rows = yield Query(f"SELECT {_ACOLS} FROM policy_activations ORDER BY seq DESC LIMIT 1")
    return _activation(rows[0]) if rows else None


def history(dialect: Dialect, limit: int = 100) -> Flow[list[ActivationRecord]]:
    """The latest ``limit`` activations, newest first."""
    rows = yield Query(
        f"SELECT {_ACOLS} FROM policy_activations ORDER BY seq DESC LIMIT {_m(dialect)}",
        (max(1, min(int(limit), 1000)),),
    )
    return [_activation(row) for row in rows]


def activate(
    dialect: Dialect, version: str, cohort: Cohort | None, now_us: int, by: str, note: str
) -> Flow[tuple[ActivationRecord | None, ActivationRecord]]:
    """Put ``version`` in force for ``cohort`` (None: everyone); (before, after)."""
    if dialect == "postgres":
        yield Query(_LOCK)
    stored = yield from get_version(dialect, version)
    if stored is None:
        raise UnknownNameError(
            f"policy version {version!r}: not uploaded; expected a version from versions()"
        )
    before = yield from current(dialect)
    if cohort is None:
        base = version
    elif before is None:
        raise InvalidArgumentError(
            f"cohort: a pilot of {version} needs a version active for everyone first; "
            "activate one without a cohort"
        )
    else:
        base = before.base
    seq = 1 if before is None else before.seq + 1
    after = ActivationRecord(
        seq, version, cohort, base, None if before is None else before.seq, now_us, by, note
    )
    yield from _insert(dialect, after)
    return before, after


def rollback(
    dialect: Dialect, now_us: int, by: str
) -> Flow[tuple[ActivationRecord, ActivationRecord]]:
    """Put back the state before the activation in force; (before, after)."""
    if dialect == "postgres":
        yield Query(_LOCK)
    before = yield from current(dialect)
    if before is None or before.prior is None:
        raise InvalidArgumentError(
            "rollback: there is no earlier activation to go back to; expected at least two"
        )
    rows = yield Query(
        f"SELECT {_ACOLS} FROM policy_activations WHERE seq = {_m(dialect)}", (before.prior,)
    )
    target = _activation(rows[0])
    after = ActivationRecord(
        before.seq + 1,
        target.version,
        target.cohort,
        target.base,
        target.prior,
        now_us,
        by,
        f"rollback of #{before.seq} to the state of #{target.seq}",
    )
    yield from _insert(dialect, after)
    return before, after


def _insert(dialect: Dialect, row: ActivationRecord) -> Flow[None]:
    p = _m(dialect)
    cohort = None if row.cohort is None else json.dumps(row.cohort.to_dict(), sort_keys=True)
    yield Query(
        f"INSERT INTO policy_activations ({_ACOLS}) VALUES ({', '.join([p] * 8)})",
        (row.seq, row.version, cohort, row.base, row.prior, row.at_us, row.by, row.note),
    )


def _version(row: Any) -> Version:
    return Version(str(row[0]), str(row[1]), int(row[2]), str(row[3]), str(row[4]), str(row[5]))


def _activation(row: Any) -> ActivationRecord:
    cohort = None if row[2] is None else Cohort.from_dict(json.loads(row[2]))
    prior = None if row[4] is None else int(row[4])
    return ActivationRecord(
        int(row[0]), str(row[1]), cohort, str(row[3]), prior, int(row[5]), str(row[6]), str(row[7])
    )


__all__ = [
    "ActivationRecord",
    "Version",
    "activate",
    "add_version",
    "current",
    "get_version",
    "history",
    "list_versions",
    "rollback",
]
