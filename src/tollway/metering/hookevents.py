"""What a hook is sent: usage events, notices and aggregated buckets as CloudEvents 1.0, packed
into messages (one event, or a CloudEvents batch of up to the hook's ``batch``). Pure: no I/O.

`plan_deliveries` is what `Ledger.commit` runs, inside its transaction, for the events and
notices it has just inserted: the messages to enqueue per hook, and the amounts to add to the
aggregating hooks' buckets. A message's body is encoded once, here, so every attempt (and a
replay) sends the same bytes under the same webhook-id.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tollway.clock import utc
from tollway.events import USAGE_RECORDED
from tollway.metering.cloudevents import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    DATA_CONTENT_TYPE,
    SPECVERSION,
    encode,
    encode_batch,
    format_time,
    make_event,
)
from tollway.metering.entries import Notice
from tollway.metering.ledger.events import UsageEvent
from tollway.money import micros_to_decimal
from tollway.policy.model import HookConfig

__all__ = [
    "AGGREGATE_US",
    "SOURCE",
    "BucketAdd",
    "OutboxMessage",
    "bucket_event",
    "message_of",
    "notice_event",
    "plan_deliveries",
    "usage_event",
]

SOURCE = "tollway"
"""The CloudEvents ``source`` of every event tollway sends."""
AGGREGATE_US = {"minute": 60_000_000, "hour": 3_600_000_000}

_MESSAGE_ID = re.compile(r"^[!-\-/-~]{1,256}$")  # a webhook-id: printable ASCII, no space, no "."


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message for one hook, ready to store and send."""

    hook: str
    id: str
    type: str
    event_ids: tuple[str, ...]
    content_type: str
    body: str
    delay_us: int = 0
    """How long after it is enqueued the first attempt is due (the schedule's first delay)."""


@dataclass(frozen=True, slots=True)
class BucketAdd:
    """Usage to add to one aggregation bucket (events of one commit, already summed)."""

    hook: str
    subject: str
    meter: str
    currency: str
    """'' when the events carry no amount."""
    start_us: int
    end_us: int
    operation: str
    plan: str | None
    policy_version: str | None
    quantity: int
    amount_micros: int
    events: int
    first_at_us: int
    last_at_us: int
    serial: str
    """Random, kept by the bucket row from its first add: a bucket that opens again for the same
    window (a late event after it was sent) gets another message id."""


_time = utc


def event_id(raw: str) -> str:
    """``raw`` when it can be a webhook-id, else a stable id derived from it (an event id may hold
    a ``.`` or non-ASCII; Standard Webhooks signs ``{id}.{timestamp}.{body}``)."""
    if _MESSAGE_ID.match(raw):
        return raw
    return "evt_" + hashlib.sha256(raw.encode("utf-8")).hexdigest()[:40]


def usage_event(event: UsageEvent) -> dict[str, Any]:
    """A usage event as a ``tollway.usage.recorded`` CloudEvent; money as a string.

    Built straight as JSON values (not through `make_event`, which checks and converts every
    value, twice with `encode`): a `UsageEvent` is already validated, and this runs once per
    event inside `Ledger.commit`. The result is what `make_event` would build (a test holds
    them equal)."""
    amount = event.amount_micros
    when = _stamp(event.occurred_at_us)
    data: dict[str, Any] = {
        "event_id": event.id,
        "subject": event.subject,
        "operation": event.operation,
        "meter": event.meter,
        "quantity": event.quantity,
        "amount": None if amount is None else format(micros_to_decimal(amount), "f"),
        "currency": event.currency,
        "plan": event.plan,
        "policy_version": event.policy_version,
        "limits": list(event.limits),
        "occurred_at": when,
        "recorded_at": _stamp(event.recorded_at_us),
        "attributes": dict(event.attributes),
    }
    return {
        "specversion": SPECVERSION,
        "id": event_id(event.id),
        "source": SOURCE,
        "type": USAGE_RECORDED,
        "time": when,
        "datacontenttype": DATA_CONTENT_TYPE,
        "subject": event.subject,
        "data": data,
    }


def _stamp(us: int) -> str:
    return format_time(_time(us))


def notice_event(notice: Notice) -> dict[str, Any]:
    """A threshold reached or a limit exceeded as a CloudEvent of its type."""
    data = {"event_id": notice.id, "subject": notice.subject, **dict(notice.data)}
    data["occurred_at"] = _time(notice.occurred_at_us)
    return make_event(
        notice.type,
        data,
        source=SOURCE,
        id=event_id(notice.id),
        time=_time(notice.occurred_at_us),
        subject=notice.subject,
    )


def bucket_event(message_id: str, aggregate: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A closed bucket as one ``tollway.usage.recorded`` CloudEvent: the summed quantity and
    amount of ``row["events"]`` usage events of one subject and meter in one window."""
    currency = row["currency"] or None
    data: dict[str, Any] = {
        "event_id": message_id,
        "subject": row["subject"],
        "operation": row["operation"],
        "meter": row["meter"],
        "quantity": int(row["quantity"]),
        "amount": micros_to_decimal(int(row["amount_micros"])) if currency else None,
        "currency": currency,
        "plan": row["plan"],
        "policy_version": row["policy_version"],
        "aggregate": aggregate,
        "events": int(row["events"]),
        "window_start": _time(int(row["start_us"])),
        "window_end": _time(int(row["end_us"])),
        "occurred_at": _time(int(row["last_at_us"])),
        "first_occurred_at": _time(int(row["first_at_us"])),
    }
    return make_event(
        USAGE_RECORDED,
        data,
        source=SOURCE,
        id=message_id,
        time=_time(int(row["start_us"])),
        subject=row["subject"],
    )


def bucket_message_id(hook: str, key: Sequence[Any], serial: str) -> str:
    text = "\n".join([hook, *map(str, key), serial])
    return "agg_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


# The bytes of cloudevents.encode (sorted keys, compact, ASCII) for events already made of JSON
# values, without its second checking pass.
_dump = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False
).encode


def message_of(
    hook: str, events: Sequence[Mapping[str, Any]], *, batch: bool, checked: bool = False
) -> OutboxMessage:
    """One event (``batch`` False) or a CloudEvents batch; a batch's id is derived from its
    events' ids, as `Deliverer.prepare` does, so a batch is always the same webhook-id.
    ``checked``: the events are already JSON values (`usage_event`'s), encoded as they are."""
    ids = tuple(str(event["id"]) for event in events)
    if not batch:
        (event,) = events
        text = _dump(event) if checked else encode(event).decode("ascii")
        return OutboxMessage(hook, ids[0], str(event["type"]), ids, CONTENT_TYPE, text)
    digest = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()
    body = _dump(list(events)) if checked else encode_batch(events).decode("ascii")
    return OutboxMessage(hook, f"batch_{digest[:32]}", str(events[0]["type"]), ids,
                         BATCH_CONTENT_TYPE, body)  # fmt: skip


def first_delay_us(hook: HookConfig) -> int:
    return round(hook.schedule[0] * 1_000_000) if hook.schedule else 0


def pack(
    hook: HookConfig, events: Iterable[Mapping[str, Any]], *, checked: bool = False
) -> list[OutboxMessage]:
    """Events of one type into messages of at most ``hook.batch`` events."""
    items = list(events)
    if hook.batch == 1:
        out = [message_of(hook.name, [event], batch=False, checked=checked) for event in items]
    else:
        out = [
            message_of(hook.name, items[at : at + hook.batch], batch=True, checked=checked)
            for at in range(0, len(items), hook.batch)
        ]
    delay = first_delay_us(hook)
    return [replace(m, delay_us=delay) for m in out] if delay else out


def _bucket_adds(hook: HookConfig, events: Iterable[UsageEvent]) -> list[BucketAdd]:
    width = AGGREGATE_US[hook.aggregate]
    sums: dict[tuple[str, str, str, int], BucketAdd] = {}
    for event in events:
        start = event.occurred_at_us - event.occurred_at_us % width
        currency = event.currency or ""
        key = (event.subject, event.meter, currency, start)
        amount = event.amount_micros or 0
        seen = sums.get(key)
        if seen is None:
            sums[key] = BucketAdd(
                hook.name, event.subject, event.meter, currency, start, start + width,
                event.operation, event.plan, event.policy_version, event.quantity, amount, 1,
                event.occurred_at_us, event.occurred_at_us, uuid.uuid4().hex,
            )  # fmt: skip
        else:
            later = event.occurred_at_us >= seen.last_at_us
            sums[key] = BucketAdd(
                hook.name, seen.subject, seen.meter, currency, start, start + width,
                event.operation if later else seen.operation,
                event.plan if later else seen.plan,
                event.policy_version if later else seen.policy_version,
                seen.quantity + event.quantity, seen.amount_micros + amount, seen.events + 1,
                min(seen.first_at_us, event.occurred_at_us),
                max(seen.last_at_us, event.occurred_at_us), seen.serial,
            )  # fmt: skip
    return list(sums.values())


def subscribes(hooks: Iterable[HookConfig], types: Iterable[str]) -> bool:
    wanted = set(types)
    return any(wanted.intersection(hook.events) for hook in hooks)


def plan_deliveries(
    hooks: Sequence[HookConfig], events: Sequence[UsageEvent], notices: Sequence[Notice]
) -> tuple[list[OutboxMessage], list[BucketAdd]]:
    """For newly recorded ``events`` and ``notices``: the messages to enqueue for each hook
    subscribed to their type, and what to add to aggregating hooks' buckets. A CloudEvent is
    built once per event, whatever the number of hooks."""
    messages: list[OutboxMessage] = []
    buckets: list[BucketAdd] = []
    usage: list[dict[str, Any]] | None = None
    by_type: dict[str, list[dict[str, Any]]] | None = None
    for hook in hooks:
        if events and USAGE_RECORDED in hook.events:
            if hook.aggregate != "none":
                buckets.extend(_bucket_adds(hook, events))
            else:
                if usage is None:
                    usage = [usage_event(event) for event in events]
                messages.extend(pack(hook, usage, checked=True))
        if notices:
            if by_type is None:
                by_type = {}
                for notice in notices:
                    by_type.setdefault(notice.type, []).append(notice_event(notice))
            for type_, built in by_type.items():
                if type_ in hook.events:
                    messages.extend(pack(hook, built))
    return messages, buckets
