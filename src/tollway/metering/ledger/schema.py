"""The ledger's schema: numbered migrations, each written once for SQLite and once for PostgreSQL.

A database records the versions applied to it in ``tollway_schema``. Opening a ledger applies
the missing ones in order, in one transaction under a lock (``BEGIN IMMEDIATE`` on SQLite, an
advisory transaction lock on PostgreSQL), so two processes starting at once apply each
migration once. A database that holds a version this code does not know is newer than the
code: it is refused with `LedgerSchemaError` rather than written with an older idea of rows.

Why not Alembic: it would bring SQLAlchemy (an ORM and engine layer the ledger does not use)
for one table and three indexes; its migrations live in a script directory with an ``env.py``
and run from a CLI, where the ledger must migrate itself when a library user opens it
(``open_ledger("sqlite:///usage.db")``); and the two dialects would still need hand-written DDL
(jsonb, ``COLLATE "C"``). A migration here is two reviewed SQL texts side by side, and the
runner is the twenty lines of `migrate_flow`. Revisit if the schema grows beyond a few tables.

Rules for a new migration: append it with the next version number, never edit a released
one; keep it additive where possible (older code refuses a newer database anyway); no ``;``
inside a statement (the texts are split on ``;``), so no triggers or function bodies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from tollway.errors import LedgerSchemaError
from tollway.metering.ledger.flows import Flow, Query

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate_flow", "pending"]

DialectName = Literal["sqlite", "postgres"]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: str
    postgres: str

    def statements(self, dialect: DialectName) -> list[str]:
        text = self.sqlite if dialect == "sqlite" else self.postgres
        return [part.strip() for part in text.split(";") if part.strip()]


_SQLITE_1 = """
CREATE TABLE usage_events (
    id              TEXT    NOT NULL PRIMARY KEY,
    subject         TEXT    NOT NULL,
    operation       TEXT    NOT NULL,
    meter           TEXT    NOT NULL,
    quantity        INTEGER NOT NULL CHECK (quantity >= 0),
    amount_micros   INTEGER CHECK (amount_micros >= 0),
    currency        TEXT,
    plan            TEXT,
    policy_version  TEXT,
    limits          TEXT    NOT NULL DEFAULT '[]',
    occurred_at_us  INTEGER NOT NULL,
    recorded_at_us  INTEGER NOT NULL,
    attributes      TEXT    NOT NULL DEFAULT '{}',
    CHECK ((amount_micros IS NULL) = (currency IS NULL))
);
CREATE INDEX usage_events_subject_occurred ON usage_events (subject, occurred_at_us);
CREATE INDEX usage_events_subject_meter_occurred
    ON usage_events (subject, meter, occurred_at_us);
CREATE INDEX usage_events_recorded ON usage_events (recorded_at_us)
"""

# Keys compare bytewise (COLLATE "C"): cheaper index maintenance than a locale collation, and
# the same order as SQLite's. Times stay integer microseconds, as everywhere in tollway.
_POSTGRES_1 = """
CREATE TABLE usage_events (
    id              text COLLATE "C" PRIMARY KEY,
    subject         text COLLATE "C" NOT NULL,
    operation       text COLLATE "C" NOT NULL,
    meter           text COLLATE "C" NOT NULL,
    quantity        bigint NOT NULL CHECK (quantity >= 0),
    amount_micros   bigint CHECK (amount_micros >= 0),
    currency        text,
    plan            text,
    policy_version  text,
    limits          jsonb  NOT NULL DEFAULT '[]',
    occurred_at_us  bigint NOT NULL,
    recorded_at_us  bigint NOT NULL,
    attributes      jsonb  NOT NULL DEFAULT '{}',
    CONSTRAINT usage_events_amount_currency CHECK ((amount_micros IS NULL) = (currency IS NULL))
);
CREATE INDEX usage_events_subject_occurred ON usage_events (subject, occurred_at_us);
CREATE INDEX usage_events_subject_meter_occurred
    ON usage_events (subject, meter, occurred_at_us);
CREATE INDEX usage_events_recorded ON usage_events (recorded_at_us)
"""

# Migration 2. Usage events may be negative (a correction: a provider call refunded), so the
# sign CHECKs go: SQLite cannot drop a constraint, so the table is rebuilt (copy, drop, rename,
# re-index; all in the migration's transaction); PostgreSQL drops the two column CHECKs by the
# names it gave them. Then the hook tables:
# - notices: threshold / exceeded events, one row per id (idempotent like usage_events);
# - hook_messages: the outbox, one row per (hook, webhook-id), with its delivery state; due
#   messages are found on (status, next_at_us) and leased (leased_until_us, lease_owner) so two
#   dispatchers never send one message at once; attempts holds every attempt ever made, the
#   current round's from round_start on (retry and replay start a new round);
# - hook_buckets: open aggregation buckets (one per hook, subject, meter, currency, bucket
#   start), summed as events are committed, turned into a message once the bucket has closed.
_HOOK_TABLES = """
CREATE TABLE notices (
    id              TEXT   NOT NULL PRIMARY KEY,
    type            TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    occurred_at_us  BIGINT NOT NULL,
    recorded_at_us  BIGINT NOT NULL,
    data            TEXT   NOT NULL DEFAULT '{}'
);
CREATE INDEX notices_subject_occurred ON notices (subject, occurred_at_us);
CREATE TABLE hook_messages (
    hook            TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    event_ids       TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    dead_reason     TEXT,
    attempts        TEXT    NOT NULL DEFAULT '[]',
    round_start     INTEGER NOT NULL DEFAULT 0,
    replays         INTEGER NOT NULL DEFAULT 0,
    next_at_us      BIGINT  NOT NULL,
    leased_until_us BIGINT  NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    created_at_us   BIGINT  NOT NULL,
    updated_at_us   BIGINT  NOT NULL,
    PRIMARY KEY (hook, id)
);
CREATE INDEX hook_messages_due ON hook_messages (status, next_at_us);
CREATE TABLE hook_buckets (
    hook            TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    meter           TEXT   NOT NULL,
    currency        TEXT   NOT NULL,
    start_us        BIGINT NOT NULL,
    end_us          BIGINT NOT NULL,
    serial          TEXT   NOT NULL,
    operation       TEXT   NOT NULL,
    plan            TEXT,
    policy_version  TEXT,
    quantity        BIGINT NOT NULL,
    amount_micros   BIGINT,
    events          BIGINT NOT NULL,
    first_at_us     BIGINT NOT NULL,
    last_at_us      BIGINT NOT NULL,
    PRIMARY KEY (hook, subject, meter, currency, start_us)
);
CREATE INDEX hook_buckets_end ON hook_buckets (end_us)
"""

_SQLITE_2 = (
    """
CREATE TABLE usage_events_v2 (
    id              TEXT    NOT NULL PRIMARY KEY,
    subject         TEXT    NOT NULL,
    operation       TEXT    NOT NULL,
    meter           TEXT    NOT NULL,
    quantity        INTEGER NOT NULL,
    amount_micros   INTEGER,
    currency        TEXT,
    plan            TEXT,
    policy_version  TEXT,
    limits          TEXT    NOT NULL DEFAULT '[]',
    occurred_at_us  INTEGER NOT NULL,
    recorded_at_us  INTEGER NOT NULL,
    attributes      TEXT    NOT NULL DEFAULT '{}',
    CHECK ((amount_micros IS NULL) = (currency IS NULL))
);
INSERT INTO usage_events_v2 SELECT * FROM usage_events;
DROP TABLE usage_events;
ALTER TABLE usage_events_v2 RENAME TO usage_events;
CREATE INDEX usage_events_subject_occurred ON usage_events (subject, occurred_at_us);
CREATE INDEX usage_events_subject_meter_occurred
    ON usage_events (subject, meter, occurred_at_us);
CREATE INDEX usage_events_recorded ON usage_events (recorded_at_us);
"""
    + _HOOK_TABLES
)

_POSTGRES_2 = (
    """
ALTER TABLE usage_events
    DROP CONSTRAINT IF EXISTS usage_events_quantity_check,
    DROP CONSTRAINT IF EXISTS usage_events_amount_micros_check;
"""
    + _HOOK_TABLES
)

# Migration 3: billing (`tollway.billing.storage`). The same text for both dialects (BIGINT,
# TEXT and BOOLEAN mean the same to each): plan history one row per change (seq gapless per
# subject); one trial per identity; prepaid grants; coupon redemptions; gapless document
# numbers per (scope, year), taken in the transaction that stores the document; finalized
# invoices and credit notes with their canonical JSON body and its sha256.
_BILLING_TABLES = """
CREATE TABLE billing_plan_changes (
    subject         TEXT    NOT NULL,
    seq             BIGINT  NOT NULL,
    plan            TEXT,
    effective_at_us BIGINT  NOT NULL,
    recorded_at_us  BIGINT  NOT NULL,
    kind            TEXT    NOT NULL,
    proration       TEXT    NOT NULL,
    trial_end_us    BIGINT,
    identity        TEXT,
    PRIMARY KEY (subject, seq)
);
CREATE INDEX billing_plan_changes_effective
    ON billing_plan_changes (subject, effective_at_us);
CREATE TABLE billing_trials (
    identity        TEXT    NOT NULL PRIMARY KEY,
    subject         TEXT    NOT NULL,
    started_at_us   BIGINT  NOT NULL
);
CREATE TABLE billing_grants (
    subject         TEXT    NOT NULL,
    currency        TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    amount_micros   BIGINT  NOT NULL CHECK (amount_micros > 0),
    priority        INTEGER NOT NULL,
    expires_at_us   BIGINT,
    granted_at_us   BIGINT  NOT NULL,
    source          TEXT    NOT NULL,
    note            TEXT    NOT NULL,
    PRIMARY KEY (subject, currency, id)
);
CREATE TABLE billing_redemptions (
    subject         TEXT    NOT NULL,
    coupon          TEXT    NOT NULL,
    redeemed_at_us  BIGINT  NOT NULL,
    PRIMARY KEY (subject, coupon)
);
CREATE INDEX billing_redemptions_coupon ON billing_redemptions (coupon);
CREATE TABLE billing_numbers (
    scope           TEXT    NOT NULL,
    year            INTEGER NOT NULL,
    last_seq        BIGINT  NOT NULL,
    PRIMARY KEY (scope, year)
);
CREATE TABLE billing_invoices (
    number          TEXT    NOT NULL PRIMARY KEY,
    subject         TEXT    NOT NULL,
    period_start_us BIGINT  NOT NULL,
    period_end_us   BIGINT  NOT NULL,
    currency        TEXT    NOT NULL,
    total_micros    BIGINT  NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'finalized' CHECK (status IN ('finalized')),
    finalized_at_us BIGINT  NOT NULL,
    as_of_us        BIGINT  NOT NULL,
    body            TEXT    NOT NULL,
    content_hash    TEXT    NOT NULL,
    UNIQUE (subject, period_start_us)
);
CREATE TABLE billing_credit_notes (
    number          TEXT    NOT NULL PRIMARY KEY,
    invoice_number  TEXT    NOT NULL REFERENCES billing_invoices (number),
    subject         TEXT    NOT NULL,
    amount_micros   BIGINT  NOT NULL CHECK (amount_micros > 0),
    reason          TEXT    NOT NULL,
    refund          BOOLEAN NOT NULL,
    created_at_us   BIGINT  NOT NULL,
    body            TEXT    NOT NULL,
    content_hash    TEXT    NOT NULL
);
CREATE INDEX billing_credit_notes_invoice ON billing_credit_notes (invoice_number)
"""

# Migration 4: rating a period on SQLite (`tollway.billing.storage.usage`). SQLite aggregates
# by sorting: ``GROUP BY subject, plan, meter`` over a month of events built a temporary b-tree
# of every row, most of the rating's time (bench/RATING_RESULTS.md). This index holds the
# rows in group order with every column the aggregate reads but ``attributes``, so the scan
# needs no sort and reads the table only for a row a unique count looks into. PostgreSQL
# aggregates by hashing and gets nothing from it: its text is empty (the version is recorded).
_SQLITE_4 = """
CREATE INDEX usage_events_rating ON usage_events (
    subject, plan, meter, occurred_at_us, recorded_at_us,
    currency, amount_micros, quantity, limits, id
)
"""

# Migration 5: the control plane (`tollway.admin`). Admin tokens are kept as the sha256 of the
# raw token only (found by it: a unique index), with role, subject scope and lifetime. The
# audit log is append-only and hash-chained: each row's hash covers its fields and the hash
# before it; admin_audit_head (one row) holds the last seq and hash, updated in the appending
# transaction, so deleting rows from the end is seen too. Before/after are canonical JSON text,
# not jsonb, so the bytes hashed are the bytes kept. The same text for both dialects.
_ADMIN_TABLES = """
CREATE TABLE admin_tokens (
    id              TEXT    NOT NULL PRIMARY KEY,
    token_hash      TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    scope           TEXT,
    created_at_us   BIGINT  NOT NULL,
    expires_at_us   BIGINT,
    revoked_at_us   BIGINT,
    last_used_at_us BIGINT,
    created_by      TEXT    NOT NULL
);
CREATE TABLE admin_audit (
    seq             BIGINT  NOT NULL PRIMARY KEY,
    at_us           BIGINT  NOT NULL,
    actor_id        TEXT    NOT NULL,
    actor_name      TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    before_json     TEXT    NOT NULL,
    after_json      TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    client          TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL,
    hash            TEXT    NOT NULL
);
CREATE TABLE admin_audit_head (
    id              INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq             BIGINT  NOT NULL,
    hash            TEXT    NOT NULL
);
INSERT INTO admin_audit_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000')
"""

# Migration 6: policy versions (`tollway.admin.policies`). A version is the document's hash
# (`Policy.version`), so uploading the same document twice stores it once. An activation row
# is the state it put in force: ``version`` for the ``cohort`` (NULL: everyone), ``base`` for
# everyone else, ``prior`` the activation it replaced (what a rollback goes back to). An
# override raises (or adds) one limit of one subject until ``expires_at_us``.
_POLICIES = """
CREATE TABLE policy_versions (
    version         TEXT    NOT NULL PRIMARY KEY,
    format          TEXT    NOT NULL CHECK (format IN ('toml', 'yaml', 'json')),
    body            TEXT    NOT NULL,
    created_at_us   BIGINT  NOT NULL,
    created_by      TEXT    NOT NULL,
    note            TEXT    NOT NULL
);
CREATE TABLE policy_activations (
    seq             BIGINT  NOT NULL PRIMARY KEY,
    version         TEXT    NOT NULL REFERENCES policy_versions (version),
    cohort          TEXT,
    base            TEXT    NOT NULL REFERENCES policy_versions (version),
    prior           BIGINT,
    at_us           BIGINT  NOT NULL,
    activated_by    TEXT    NOT NULL,
    note            TEXT    NOT NULL
);
CREATE TABLE policy_overrides (
    subject         TEXT    NOT NULL,
    limit_name      TEXT    NOT NULL,
    spec            TEXT    NOT NULL,
    created_at_us   BIGINT  NOT NULL,
    expires_at_us   BIGINT  NOT NULL,
    created_by      TEXT    NOT NULL,
    PRIMARY KEY (subject, limit_name, created_at_us)
);
CREATE INDEX policy_overrides_expiry ON policy_overrides (expires_at_us)
"""

# Migration 7: the admin API's Idempotency-Key records (`tollway.admin.idempotency`): per
# (token, key) the request's hash and, once answered, the answer, replayed to a repeat.
_IDEMPOTENCY = """
CREATE TABLE admin_idempotency (
    token_id        TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_hash    TEXT    NOT NULL,
    status          INTEGER,
    body            TEXT,
    created_at_us   BIGINT  NOT NULL,
    PRIMARY KEY (token_id, key)
);
CREATE INDEX admin_idempotency_created ON admin_idempotency (created_at_us)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "usage_events, unique on id, indexed by subject and time", _SQLITE_1, _POSTGRES_1),
    Migration(
        2,
        "negative usage (corrections); notices, hook_messages and hook_buckets for hooks",
        _SQLITE_2,
        _POSTGRES_2,
    ),
    Migration(
        3,
        "billing: plan history, trials, grants, redemptions, numbers, invoices, credit notes",
        _BILLING_TABLES,
        _BILLING_TABLES,
    ),
    Migration(
        4, "rating: usage_events in group order, covering the aggregate (SQLite)", _SQLITE_4, ""
    ),
    Migration(
        5,
        "admin: admin_tokens (hashed), admin_audit hash-chained with admin_audit_head",
        _ADMIN_TABLES,
        _ADMIN_TABLES,
    ),
    Migration(
        6, "policies: versions, activations (pilots, rollback), overrides", _POLICIES, _POLICIES
    ),
    Migration(7, "admin: Idempotency-Key records of the admin API", _IDEMPOTENCY, _IDEMPOTENCY),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
"""The newest schema version this code knows."""

_CREATE_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS tollway_schema ("
    " version INTEGER NOT NULL PRIMARY KEY,"
    " description TEXT NOT NULL,"
    " applied_at_us BIGINT NOT NULL)"
)
# Any fixed 64-bit key: serializes concurrent migrators of one PostgreSQL database.
_PG_LOCK = "SELECT pg_advisory_xact_lock(7330480721592010341)"


def pending(applied: Iterable[int], *, where: str) -> list[Migration]:
    """The migrations still to apply, in order; refuses a database newer than this code."""
    done = set(applied)
    known = {m.version for m in MIGRATIONS}
    unknown = sorted(done - known)
    if unknown:
        raise LedgerSchemaError(
            f"the ledger database {where} has schema version {max(done)}, newer than this "
            f"tollway knows (up to {SCHEMA_VERSION}; unknown: {', '.join(map(str, unknown))}): "
            "upgrade tollway, or open a database made by this version"
        )
    return [m for m in MIGRATIONS if m.version not in done]


def migrate_flow(dialect: DialectName, *, where: str, now_us: int, param: str) -> Flow[int]:
    """The statements of a migration run, as a flow (`tollway.metering.ledger.flows`): the
    backend drives it inside one transaction. The return value is the number of migrations
    applied. SQLite, psycopg and psycopg's async face share it."""
    if dialect == "postgres":
        yield Query(_PG_LOCK)
        # Created only when missing: a least-privilege writer (examples/sql/roles.sql) may
        # not CREATE in the schema, even a table that exists.
        found = yield Query("SELECT to_regclass('tollway_schema') IS NOT NULL")
        if not next(iter(found))[0]:
            yield Query(_CREATE_SCHEMA_TABLE)
    else:
        yield Query(_CREATE_SCHEMA_TABLE)
    rows = yield Query("SELECT version FROM tollway_schema")
    todo = pending((int(row[0]) for row in rows), where=where)
    insert = (
        "INSERT INTO tollway_schema (version, description, applied_at_us) "
        f"VALUES ({param}, {param}, {param})"
    )
    for migration in todo:
        for statement in migration.statements(dialect):
            yield Query(statement)
        yield Query(insert, (migration.version, migration.description, now_us))
    return len(todo)
