"""The hook tables (migration 2) as flows: what `Ledger.commit` adds to its transaction, and
what a dispatcher and ``tollway hooks`` ask of ``hook_messages`` and ``hook_buckets``.

Every function here returns a `tollway.metering.ledger.flows.Flow`; each backend runs a flow in
one transaction (`Ledger._transact`), so SQLite, PostgreSQL and the async face share every
statement and every decision. Leases: PostgreSQL picks due rows ``FOR UPDATE SKIP LOCKED``, so
two dispatchers leasing at once get different messages and never wait on each other; SQLite's
``BEGIN IMMEDIATE`` serializes writers, which gives the same guarantee on one file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tollway.metering.deliverystate import Attempt, DeliveryStatus
from tollway.metering.ledger.flows import Flow, Many, Query

if TYPE_CHECKING:  # both import the ledger package, which imports this module
    from tollway.metering.entries import Notice
    from tollway.metering.hookevents import BucketAdd, OutboxMessage

__all__ = ["CommitExtras", "HookMessage", "StoredBucket"]

Dialect = Literal["sqlite", "postgres"]

_MESSAGE_COLS = (
    "hook", "id", "type", "event_ids", "content_type", "body", "status", "dead_reason",
    "attempts", "round_start", "replays", "next_at_us", "leased_until_us", "lease_owner",
    "created_at_us", "updated_at_us",
)  # fmt: skip
_BUCKET_COLS = (
    "hook", "subject", "meter", "currency", "start_us", "end_us", "serial", "operation", "plan",
    "policy_version", "quantity", "amount_micros", "events", "first_at_us", "last_at_us",
)  # fmt: skip
_MCOLS = ", ".join(_MESSAGE_COLS)
_BCOLS = ", ".join(_BUCKET_COLS)
_encode = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _p(dialect: Dialect) -> str:
    return "?" if dialect == "sqlite" else "%s"


def _marks(dialect: Dialect, count: int) -> str:
    return ", ".join([_p(dialect)] * count)


# =========================================================================== read model


@dataclass(frozen=True, slots=True)
class HookMessage:
    """One row of ``hook_messages``: a message for one hook and where its delivery stands."""

    hook: str
    id: str
    """The webhook-id (the event's id; a batch's or a bucket's derived one)."""
    type: str
    event_ids: tuple[str, ...]
    content_type: str
    body: str
    status: DeliveryStatus
    dead_reason: str | None
    attempts: tuple[Attempt, ...]
    """Every attempt ever made; those of the current round from ``round_start`` on."""
    round_start: int
    replays: int
    next_at_us: int
    leased_until_us: int
    lease_owner: str | None
    created_at_us: int
    updated_at_us: int

    @property
    def current_attempts(self) -> tuple[Attempt, ...]:
        return self.attempts[self.round_start :]

    @property
    def last_error(self) -> str | None:
        for attempt in reversed(self.attempts):
            if attempt.outcome != "delivered":
                return attempt.error
            return None
        return None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> HookMessage:
        values = dict(zip(_MESSAGE_COLS, row, strict=True))
        values["event_ids"] = tuple(json.loads(values["event_ids"]))
        values["attempts"] = tuple(_attempt(item) for item in json.loads(values["attempts"]))
        return cls(**values)


def _attempt(item: dict[str, Any]) -> Attempt:
    return Attempt(
        number=int(item["number"]),
        at=float(item["at"]),
        duration=float(item["duration"]),
        outcome=item["outcome"],
        status=item.get("status"),
        error=item.get("error"),
    )


def attempts_json(attempts: Sequence[Attempt]) -> str:
    return _encode([attempt.to_dict() for attempt in attempts])


@dataclass(frozen=True, slots=True)
class StoredBucket:
    hook: str
    values: dict[str, Any]

    @property
    def key(self) -> tuple[Any, ...]:
        v = self.values
        return (v["subject"], v["meter"], v["currency"], v["start_us"])


@dataclass(frozen=True, slots=True)
class CommitExtras:
    notices: int
    """Notices that were new."""
    enqueued: int
    """Messages enqueued plus bucket additions."""


# =========================================================================== commit


def notice_row(notice: Notice, recorded_at_us: int) -> tuple[Any, ...]:
    return (
        notice.id,
        notice.type,
        notice.subject,
        notice.occurred_at_us,
        recorded_at_us,
        _encode(dict(notice.data)),
    )


def message_row(message: OutboxMessage, now_us: int) -> tuple[Any, ...]:
    return (
        message.hook, message.id, message.type, _encode(list(message.event_ids)),
        message.content_type, message.body, "pending", None, "[]", 0, 0,
        now_us + message.delay_us, 0, None, now_us, now_us,
    )  # fmt: skip


def _insert_messages_sql(dialect: Dialect) -> str:
    return (
        f"INSERT INTO hook_messages ({_MCOLS}) VALUES ({_marks(dialect, len(_MESSAGE_COLS))}) "
        "ON CONFLICT (hook, id) DO NOTHING"
    )


def _upsert_bucket_sql(dialect: Dialect) -> str:
    least, greatest = ("MIN", "MAX") if dialect == "sqlite" else ("LEAST", "GREATEST")
    return (
        f"INSERT INTO hook_buckets ({_BCOLS}) VALUES ({_marks(dialect, len(_BUCKET_COLS))}) "
        "ON CONFLICT (hook, subject, meter, currency, start_us) DO UPDATE SET "
        "quantity = hook_buckets.quantity + excluded.quantity, "
        "amount_micros = hook_buckets.amount_micros + excluded.amount_micros, "
        "events = hook_buckets.events + excluded.events, "
        f"first_at_us = {least}(hook_buckets.first_at_us, excluded.first_at_us), "
        f"last_at_us = {greatest}(hook_buckets.last_at_us, excluded.last_at_us), "
        "operation = excluded.operation, plan = excluded.plan, "
        "policy_version = excluded.policy_version"
    )


def _bucket_row(add: BucketAdd) -> tuple[Any, ...]:
    return (
        add.hook, add.subject, add.meter, add.currency, add.start_us, add.end_us, add.serial,
        add.operation, add.plan, add.policy_version, add.quantity, add.amount_micros,
        add.events, add.first_at_us, add.last_at_us,
    )  # fmt: skip


def commit_flow(
    dialect: Dialect,
    notices: Sequence[Notice],
    plan: Callable[[list[Notice]], tuple[list[OutboxMessage], list[BucketAdd]]],
    now_us: int,
) -> Flow[CommitExtras]:
    """After the usage events of a commit are inserted: insert the notices (idempotent on id;
    ``RETURNING`` tells the new ones), then enqueue what ``plan(new_notices)`` says (it already
    knows the new usage events)."""
    p = _p(dialect)
    insert = (
        "INSERT INTO notices (id, type, subject, occurred_at_us, recorded_at_us, data) "
        f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (id) DO NOTHING RETURNING id"
    )
    fresh: list[Notice] = []
    seen: set[str] = set()
    for notice in notices:
        if notice.id in seen:
            continue
        seen.add(notice.id)
        rows = yield Query(insert, notice_row(notice, now_us))
        if rows:
            fresh.append(notice)
    messages, buckets = plan(fresh)
    if messages:
        yield Many(_insert_messages_sql(dialect), [message_row(m, now_us) for m in messages])
    if buckets:
        yield Many(_upsert_bucket_sql(dialect), [_bucket_row(b) for b in buckets])
    return CommitExtras(len(fresh), len(messages) + len(buckets))


# =========================================================================== dispatching


def _hooks_filter(dialect: Dialect, hooks: Sequence[str]) -> tuple[str, list[Any]]:
    return f"hook IN ({_marks(dialect, len(hooks))})", list(hooks)


def lease_flow(
    dialect: Dialect,
    hooks: Sequence[str],
    *,
    now_us: int,
    until_us: int,
    owner: str,
    limit: int,
) -> Flow[list[HookMessage]]:
    """Lease up to ``limit`` due messages of ``hooks`` (pending, due, not leased by anyone)
    for ``owner`` until ``until_us``."""
    if not hooks or limit < 1:
        return []
    p = _p(dialect)
    where, params = _hooks_filter(dialect, hooks)
    skip = " FOR UPDATE SKIP LOCKED" if dialect == "postgres" else ""
    sql = (
        f"UPDATE hook_messages SET leased_until_us = {p}, lease_owner = {p} "
        "WHERE (hook, id) IN (SELECT hook, id FROM hook_messages "
        f"WHERE status = 'pending' AND next_at_us <= {p} AND leased_until_us <= {p} AND {where} "
        f"ORDER BY next_at_us LIMIT {p}{skip}) RETURNING {_MCOLS}"
    )
    rows = yield Query(sql, [until_us, owner, now_us, now_us, *params, limit])
    leased = [HookMessage.from_row(row) for row in rows]
    leased.sort(key=lambda m: (m.next_at_us, m.created_at_us, m.id))
    return leased


def save_flow(
    dialect: Dialect,
    message: HookMessage,
    *,
    owner: str,
    status: DeliveryStatus,
    dead_reason: str | None,
    attempts: Sequence[Attempt],
    next_at_us: int,
    now_us: int,
) -> Flow[None]:
    """Write back one attempt's outcome and release the lease (only while it is still ours)."""
    p = _p(dialect)
    yield Query(
        f"UPDATE hook_messages SET status = {p}, dead_reason = {p}, attempts = {p}, "
        f"next_at_us = {p}, leased_until_us = 0, lease_owner = NULL, updated_at_us = {p} "
        f"WHERE hook = {p} AND id = {p} AND lease_owner = {p}",
        [status, dead_reason, attempts_json(attempts), next_at_us, now_us, message.hook,
         message.id, owner],
    )  # fmt: skip
    return None


def close_buckets_flow(
    dialect: Dialect,
    hooks: dict[str, Callable[[str, dict[str, Any]], OutboxMessage]],
    *,
    cutoff_us: int,
    now_us: int,
    limit: int = 1000,
) -> Flow[int]:
    """Turn the buckets of ``hooks`` whose window ended at or before ``cutoff_us`` into messages
    (``hooks[name](message_id, row)`` builds one), and delete them; one transaction."""
    if not hooks:
        return 0
    p = _p(dialect)
    where, params = _hooks_filter(dialect, list(hooks))
    skip = " FOR UPDATE SKIP LOCKED" if dialect == "postgres" else ""
    rows = yield Query(
        f"SELECT {_BCOLS} FROM hook_buckets WHERE end_us <= {p} AND {where} "
        f"ORDER BY end_us LIMIT {p}{skip}",
        [cutoff_us, *params, limit],
    )
    if not rows:
        return 0
    from tollway.metering.hookevents import bucket_message_id

    messages: list[OutboxMessage] = []
    keys: list[tuple[Any, ...]] = []
    for row in rows:
        values = dict(zip(_BUCKET_COLS, row, strict=True))
        bucket = StoredBucket(values["hook"], values)
        message_id = bucket_message_id(bucket.hook, bucket.key, values["serial"])
        messages.append(hooks[bucket.hook](message_id, values))
        keys.append((bucket.hook, *bucket.key, values["serial"]))
    yield Many(_insert_messages_sql(dialect), [message_row(m, now_us) for m in messages])
    yield Many(
        f"DELETE FROM hook_buckets WHERE hook = {p} AND subject = {p} AND meter = {p} "
        f"AND currency = {p} AND start_us = {p} AND serial = {p}",
        keys,
    )
    return len(messages)


def next_due_flow(dialect: Dialect, hooks: Sequence[str], *, grace_us: int = 0) -> Flow[int | None]:
    """When the soonest pending message of ``hooks`` is due, or its first bucket closes
    (plus ``grace_us``); Unix microseconds, None when nothing is pending."""
    if not hooks:
        return None
    where, params = _hooks_filter(dialect, hooks)
    rows = yield Query(
        f"SELECT MIN(next_at_us) FROM hook_messages WHERE status = 'pending' AND {where}", params
    )
    due = rows[0][0] if rows else None
    rows = yield Query(f"SELECT MIN(end_us) FROM hook_buckets WHERE {where}", params)
    closes = rows[0][0] + grace_us if rows and rows[0][0] is not None else None
    found = [int(at) for at in (due, closes) if at is not None]
    return min(found) if found else None


# =========================================================================== operations


def list_flow(
    dialect: Dialect,
    *,
    hook: str | None = None,
    status: DeliveryStatus | None = None,
    ids: Sequence[str] = (),
    limit: int = 1000,
) -> Flow[list[HookMessage]]:
    """Stored hook messages, oldest first, filtered by hook, status and ids."""
    p = _p(dialect)
    where: list[str] = []
    params: list[Any] = []
    if hook is not None:
        where.append(f"hook = {p}")
        params.append(hook)
    if status is not None:
        where.append(f"status = {p}")
        params.append(status)
    if ids:
        where.append(f"id IN ({_marks(dialect, len(ids))})")
        params.extend(ids)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = yield Query(
        f"SELECT {_MCOLS} FROM hook_messages{clause} ORDER BY created_at_us, hook, id LIMIT {p}",
        [*params, limit],
    )
    return [HookMessage.from_row(row) for row in rows]


def _restart(
    dialect: Dialect, messages: Sequence[HookMessage], now_us: int, *, replay: bool
) -> Many:
    """A new round for each message: pending, due now, unleased; its attempts so far kept as
    history (``round_start``), so the schedule starts over."""
    p = _p(dialect)
    bump = "replays + 1" if replay else "replays"
    return Many(
        f"UPDATE hook_messages SET status = 'pending', dead_reason = NULL, round_start = {p}, "
        f"replays = {bump}, next_at_us = {p}, leased_until_us = 0, lease_owner = NULL, "
        f"updated_at_us = {p} WHERE hook = {p} AND id = {p}",
        [(len(m.attempts), now_us, now_us, m.hook, m.id) for m in messages],
    )


def retry_flow(
    dialect: Dialect,
    now_us: int,
    *,
    hook: str | None = None,
    ids: Sequence[str] = (),
    all_dead: bool = False,
) -> Flow[list[HookMessage]]:
    """Make messages due now: the given ``ids`` (pending or dead), else every dead one
    (``all_dead``), else every pending one; of ``hook`` only when given. A pending message keeps
    its place in its schedule; a dead one starts a new round."""
    found: list[HookMessage] = []
    for status in ("pending", "dead"):
        if not ids and (status == "pending") == all_dead:
            continue
        found += yield from list_flow(dialect, hook=hook, status=status, ids=ids, limit=10**9)
    pending = [m for m in found if m.status == "pending"]
    dead = [m for m in found if m.status == "dead"]
    p = _p(dialect)
    if pending:
        yield Many(
            f"UPDATE hook_messages SET next_at_us = {p}, leased_until_us = 0, lease_owner = NULL, "
            f"updated_at_us = {p} WHERE hook = {p} AND id = {p}",
            [(now_us, now_us, m.hook, m.id) for m in pending],
        )
    if dead:
        yield _restart(dialect, dead, now_us, replay=False)
    return found


def replay_flow(
    dialect: Dialect,
    now_us: int,
    *,
    hook: str | None = None,
    ids: Sequence[str] = (),
    dead: bool = False,
) -> Flow[list[HookMessage]]:
    """Send again, as fresh deliveries under the same webhook-id, the given ``ids`` (dead or
    delivered) or every dead message (``dead``). Pending messages are left alone."""
    found: list[HookMessage] = []
    for status in ("dead", "delivered"):
        if not ids and status == "delivered":
            continue
        if not ids and not dead:
            continue
        found += yield from list_flow(dialect, hook=hook, status=status, ids=ids, limit=10**9)
    if found:
        yield _restart(dialect, found, now_us, replay=True)
    return found


def prune_flow(
    dialect: Dialect, before_us: int, *, hook: str | None = None, dead: bool = False
) -> Flow[int]:
    """Delete the delivered messages (and the dead ones too with ``dead``) last changed
    before ``before_us``: delivery state kept for support, not forever. Pending messages are
    never deleted. Returns how many were."""
    p = _p(dialect)
    statuses = ("delivered", "dead") if dead else ("delivered",)
    where = f"status IN ({_marks(dialect, len(statuses))}) AND updated_at_us < {p}"
    params: list[Any] = [*statuses, before_us]
    if hook is not None:
        where += f" AND hook = {p}"
        params.append(hook)
    rows = yield Query(f"SELECT COUNT(*) FROM hook_messages WHERE {where}", params)
    yield Query(f"DELETE FROM hook_messages WHERE {where}", params)
    return int(rows[0][0]) if rows else 0
