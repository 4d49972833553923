"""The audit log: every change made through the control plane, append-only and hash-chained.

Each record (``admin_audit``) has a gapless ``seq``, who (token id, name, role), what (action,
target, the state before and after as canonical JSON), the request id, the client address,
when, the hash of the record before it (``prev_hash``) and its own ``hash``: the sha256 of the
canonical JSON of all of those. ``admin_audit_head`` holds the last seq and hash, updated in the
same transaction, so `verify_flow` sees an edited row (its hash), a deleted one (a seq gap, a
broken link) and a deleted tail (the head says more). What it cannot see is a rewrite of the
whole chain from some row on, head included, by someone who can write the database: keep the
head hash that ``tollway audit verify`` prints somewhere else and compare it later.

`append_flow` is meant to run inside the caller's mutation transaction
(``yield from append_flow(...)``), so a change is never recorded without its audit record. Two
appenders never fork the chain: on PostgreSQL an advisory transaction lock serializes them; on
SQLite the ledger's ``BEGIN IMMEDIATE`` does already. Big before/after documents are cut to a
marker (with their size and sha256), never failing the mutation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tollway.admin.roles import Principal
from tollway.metering.ledger.flows import Flow, Query
from tollway.metering.ledger.outbox import Dialect

__all__ = [
    "GENESIS",
    "JSON_MAX",
    "AuditRecord",
    "VerifyReport",
    "append_flow",
    "audit_flow",
    "canonical",
    "read_flow",
    "record_hash",
    "verify_flow",
]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first record."""
JSON_MAX = 64 * 1024
"""The most bytes of before or after kept; past it a marker stands in."""
TEXT_MAX = {"actor_id": 64, "actor_name": 256, "role": 32, "action": 64}
TEXT_MAX |= {"target": 1024, "request_id": 256, "client": 256}
READ_MAX = 1000
_PAGE = 1000
_LOCK = "SELECT pg_advisory_xact_lock(7330480721592010345)"
_COLS = (
    "seq, at_us, actor_id, actor_name, role, action, target, before_json, after_json, "
    "request_id, client, prev_hash, hash"
)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at_us: int
    actor_id: str
    actor_name: str
    role: str
    action: str
    target: str
    before: str
    """Canonical JSON text of the state before (``null`` for a creation)."""
    after: str
    """Canonical JSON text of the state after (``null`` for a deletion)."""
    request_id: str
    client: str
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values, before and after parsed back."""
        return {
            "seq": self.seq,
            "at_us": self.at_us,
            "actor": {"id": self.actor_id, "name": self.actor_name, "role": self.role},
            "action": self.action,
            "target": self.target,
            "before": json.loads(self.before),
            "after": json.loads(self.after),
            "request_id": self.request_id,
            "client": self.client,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    """Records checked (all of them when ``ok``)."""
    first_bad_seq: int | None = None
    reason: str = ""
    """Why ``first_bad_seq`` is bad (the seq itself is not repeated in it)."""
    head_seq: int = 0
    head_hash: str = GENESIS
    """The head as found: keep it elsewhere to detect a rewrite of the whole chain later."""


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, ASCII only (a NUL or a lone surrogate becomes an
    escape, so every database takes it and it always encodes); what is not JSON, its str."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def bounded_json(value: Any) -> str:
    """``value`` as canonical JSON of at most `JSON_MAX` bytes (else a marker saying so)."""
    try:
        text = canonical(value)
    except (TypeError, ValueError) as exc:  # e.g. a circular structure: never fail the change
        return canonical({"unserializable": True, "error": str(exc)[:200]})
    size = len(text.encode())
    if size <= JSON_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()
    return canonical({"truncated": True, "bytes": size, "sha256": digest, "head": text[:1024]})


def _cut(field: str, value: object) -> str:
    """A text field within its bound, as text any database keeps (no NUL, no lone surrogate)."""
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    most = TEXT_MAX[field]
    return text if len(text) <= most else text[: most - 1] + "…"


def record_hash(fields: dict[str, Any]) -> str:
    """The sha256 over the canonical JSON of a record's fields (``hash`` left out)."""
    body = {key: value for key, value in fields.items() if key != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def _fields(record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "at_us": record.at_us,
        "actor_id": record.actor_id,
        "actor_name": record.actor_name,
        "role": record.role,
        "action": record.action,
        "target": record.target,
        "before": record.before,
        "after": record.after,
        "request_id": record.request_id,
        "client": record.client,
        "prev_hash": record.prev_hash,
    }


def append_flow(
    dialect: Dialect,
    *,
    at_us: int,
    actor_id: str,
    actor_name: str,
    role: str,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    request_id: str = "",
    client: str = "",
) -> Flow[AuditRecord]:
    """Append one record (part of the caller's transaction); returns it, seq and hash set."""
    p = "?" if dialect == "sqlite" else "%s"
    if dialect == "postgres":
        yield Query(_LOCK)
    head = yield Query("SELECT seq, hash FROM admin_audit_head WHERE id = 1")
    if not head:  # deleted behind our back: go on from the last row, leave the loss reported
        head_less = yield Query("SELECT seq, hash FROM admin_audit ORDER BY seq DESC LIMIT 1")
        last = head_less[0] if head_less else (0, GENESIS)
    else:
        last = head[0]
    last_seq, last_hash = int(last[0]), str(last[1])
    fields: dict[str, Any] = {
        "seq": last_seq + 1,
        "at_us": int(at_us),
        "actor_id": _cut("actor_id", actor_id),
        "actor_name": _cut("actor_name", actor_name),
        "role": _cut("role", role),
        "action": _cut("action", action),
        "target": _cut("target", target),
        "before": bounded_json(before),
        "after": bounded_json(after),
        "request_id": _cut("request_id", request_id),
        "client": _cut("client", client),
        "prev_hash": last_hash,
    }
    record = AuditRecord(**fields, hash=record_hash(fields))
    yield Query(f"INSERT INTO admin_audit ({_COLS}) VALUES ({', '.join([p] * 13)})", _row(record))
    # No head row: not put back, so `verify_flow` goes on reporting it until someone looks.
    yield Query(
        f"UPDATE admin_audit_head SET seq = {p}, hash = {p} WHERE id = 1",
        (record.seq, record.hash),
    )
    return record


def audit_flow(
    dialect: Dialect,
    actor: Principal,
    action: str,
    target: str,
    *,
    at_us: int,
    before: Any = None,
    after: Any = None,
    request_id: str = "",
    client: str = "",
) -> Flow[AuditRecord]:
    """`append_flow` for a change made by ``actor``: what a mutation's flow runs with
    ``yield from audit_flow(dialect, principal, "subjects.assign", subject, ...)``."""
    record: AuditRecord = yield from append_flow(
        dialect,
        at_us=at_us,
        actor_id=actor.token_id,
        actor_name=actor.name,
        role=actor.role,
        action=action,
        target=target,
        before=before,
        after=after,
        request_id=request_id,
        client=client,
    )
    return record


def read_flow(
    dialect: Dialect, limit: int = 50, before_seq: int | None = None
) -> Flow[list[AuditRecord]]:
    """At most ``limit`` records, newest first, older than ``before_seq`` when given (the
    cursor: the last seq of the previous page)."""
    p = "?" if dialect == "sqlite" else "%s"
    limit = max(1, min(int(limit), READ_MAX))
    if before_seq is None:
        rows = yield Query(f"SELECT {_COLS} FROM admin_audit ORDER BY seq DESC LIMIT {limit}")
    else:
        rows = yield Query(
            f"SELECT {_COLS} FROM admin_audit WHERE seq < {p} ORDER BY seq DESC LIMIT {limit}",
            (int(before_seq),),
        )
    return [_record(row) for row in rows]


def verify_flow(dialect: Dialect) -> Flow[VerifyReport]:
    """Walk the chain from seq 1 to the head, in pages; the first problem found is reported.

    The head is read first and only records up to it are checked, so appends made while the
    walk goes on are not taken for damage."""
    p = "?" if dialect == "sqlite" else "%s"
    head = yield Query("SELECT seq, hash FROM admin_audit_head WHERE id = 1")
    if not head:
        return VerifyReport(False, 0, 1, "the head record (admin_audit_head) is missing")
    head_seq, head_hash = int(head[0][0]), str(head[0][1])
    expected, prev, checked = 1, GENESIS, 0
    while expected <= head_seq:
        rows = yield Query(
            f"SELECT {_COLS} FROM admin_audit WHERE seq >= {p} AND seq <= {p} "
            f"ORDER BY seq LIMIT {_PAGE}",
            (expected, head_seq),
        )
        if not rows:
            break
        for row in rows:
            record = _record(row)
            bad = _problem(record, expected, prev)
            if bad is not None:
                return VerifyReport(False, checked, expected, bad, head_seq, head_hash)
            checked, expected, prev = checked + 1, expected + 1, record.hash
    if checked < head_seq:
        return VerifyReport(
            False,
            checked,
            checked + 1,
            f"the chain ends at seq {checked} but the head says {head_seq}: the last "
            f"{head_seq - checked} record(s) were deleted",
            head_seq,
            head_hash,
        )
    if prev != head_hash:
        return VerifyReport(
            False,
            checked,
            head_seq,
            "its hash is not the head's; the record or the head was edited",
            head_seq,
            head_hash,
        )
    return VerifyReport(True, checked, None, "", head_seq, head_hash)


def _problem(record: AuditRecord, expected: int, prev: str) -> str | None:
    """What is wrong with the record found where seq ``expected`` should be (None: nothing)."""
    if record.seq != expected:
        return f"missing: deleted (the next record is seq {record.seq})"
    if record.prev_hash != prev:
        return f"prev_hash does not link to seq {expected - 1}'s hash"
    if record_hash(_fields(record)) != record.hash:
        return "its content does not match its hash; the record was edited"
    return None


def _row(record: AuditRecord) -> tuple[Any, ...]:
    return (
        record.seq,
        record.at_us,
        record.actor_id,
        record.actor_name,
        record.role,
        record.action,
        record.target,
        record.before,
        record.after,
        record.request_id,
        record.client,
        record.prev_hash,
        record.hash,
    )


def _record(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(
        seq=int(row[0]),
        at_us=int(row[1]),
        actor_id=str(row[2]),
        actor_name=str(row[3]),
        role=str(row[4]),
        action=str(row[5]),
        target=str(row[6]),
        before=str(row[7]),
        after=str(row[8]),
        request_id=str(row[9]),
        client=str(row[10]),
        prev_hash=str(row[11]),
        hash=str(row[12]),
    )
