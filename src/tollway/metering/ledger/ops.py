"""The ledger's operations written once, as generators over two backend primitives.

An operation yields `Ingest` (insert a prepared batch, skipping ids already there, then run
``after(new events)`` in the same transaction; the backend sends back ``(inserted, stored rows,
extras)``) or `Fetch` (one read; the backend sends back the rows), and returns the answer.
`Ledger` drives them with plain calls, `AsyncLedger` with awaited ones, so checking a batch,
telling duplicates from conflicts, planning the hooks' messages, building the queries and
folding the rows live here once (httpx's ``auth_flow`` is the model).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

from tollway.errors import InvalidArgumentError
from tollway.events import USAGE_RECORDED
from tollway.metering.ledger.events import UsageEvent
from tollway.metering.ledger.flows import Flow
from tollway.metering.ledger.outbox import CommitExtras, Dialect, commit_flow
from tollway.metering.ledger.queries import (
    COUNT_SQL,
    Instant,
    PeriodUsage,
    PreparedBatch,
    Totals,
    UsageStyle,
    WriteResult,
    finish,
    fold_totals,
    fold_usage,
    instant,
    period_buckets,
    prepare,
    totals_query,
    usage_query,
)
from tollway.metering.ledger.sealing import Sealer
from tollway.policy.model import HookConfig

if TYPE_CHECKING:
    from tollway.metering.entries import Notice

__all__ = ["After", "Fetch", "Ingest", "Op", "Rows", "Shape"]

logger = logging.getLogger("tollway.ledger")

T = TypeVar("T")
Rows = list[Sequence[Any]]
After = Callable[[list[UsageEvent]], Flow[CommitExtras]]
"""What `Ledger.commit` runs once the usage events are in: given the new ones."""


@dataclass(frozen=True, slots=True)
class Ingest:
    batch: PreparedBatch
    need_new: bool
    """Whether the new events must be told apart (``after`` gets them)."""
    after: After | None


@dataclass(frozen=True, slots=True)
class Fetch:
    sql: str
    params: Sequence[Any]


Request = Union[Ingest, Fetch]  # noqa: UP007 (a runtime alias)
Op = Generator[Request, Any, T]


@dataclass(frozen=True, slots=True)
class Shape:
    """What the operations need to know of a backend."""

    url: str
    dialect: Dialect
    param: str
    usage_style: UsageStyle
    sealer: Sealer | None = None
    """Seals the sensitive attributes of what is written (`tollway.metering.ledger.sealing`)."""


def write_op(shape: Shape, events: Iterable[UsageEvent]) -> Op[WriteResult]:
    """`insert`, returning the new, duplicate and conflicting events in a `WriteResult`."""
    return (yield from commit_op(shape, events))


def commit_op(
    shape: Shape,
    events: Iterable[UsageEvent],
    notices: Iterable[Notice] = (),
    hooks: Iterable[HookConfig] = (),
    *,
    now_us: int | None = None,
) -> Op[WriteResult]:
    """`write` the events and record the notices (idempotent on id, both) and, for those
    that were new, enqueue a delivery for each hook subscribed to their type (or add to the
    hook's aggregation bucket): one transaction, all or nothing. A batch committed again
    (a redelivery) enqueues nothing twice. ``now_us`` stamps the enqueued messages
    (default: now). With no notices and no hook on usage, it is `write`."""
    plan = _commit_plan(shape.dialect, notices, hooks, now_us)
    batch = prepare(_sealed(shape.sealer, events))
    if plan is None and not batch.events:
        return WriteResult(0, 0)
    need_new, after = plan if plan is not None else (False, None)
    inserted, stored, extras = yield Ingest(batch, need_new, after)
    result = finish(batch, inserted, stored)
    _report(shape.url, result)
    if extras is None:
        return result
    return dataclasses.replace(result, notices=extras.notices, enqueued=extras.enqueued)


def _sealed(sealer: Sealer | None, events: Iterable[UsageEvent]) -> Iterable[UsageEvent]:
    """The events as stored: sensitive attributes sealed (anything else left for `prepare`
    to refuse, naming the item)."""
    if sealer is None or isinstance(events, (UsageEvent, str, bytes)):
        return events
    if not isinstance(events, Iterable):
        return events
    return [sealer.seal(e) if isinstance(e, UsageEvent) else e for e in events]


def totals_op(
    shape: Shape,
    subject: str,
    start: Instant,
    end: Instant,
    *,
    as_of: Instant | None = None,
    meter: str | None = None,
    operation: str | None = None,
) -> Op[dict[str, Totals]]:
    """Totals per meter of ``subject``'s events that occurred in ``[start, end)``; with
    ``as_of``, only those recorded at or before it (what was known then: re-running an
    invoice leaves out the late events recorded since). Instants are timezone-aware
    datetimes or integer microseconds since the epoch."""
    sql, params = totals_query(
        shape.param,
        subject,
        instant(start, "start"),
        instant(end, "end"),
        as_of_us=None if as_of is None else instant(as_of, "as_of"),
        meter=meter,
        operation=operation,
    )
    return fold_totals((yield Fetch(sql, params)))


def usage_op(
    shape: Shape,
    subject: str,
    start: Instant,
    end: Instant,
    *,
    period: str = "day",
    tz: str = "UTC",
    anchor: int | None = None,
    as_of: Instant | None = None,
    meter: str | None = None,
    operation: str | None = None,
) -> Op[list[PeriodUsage]]:
    """`totals` per calendar ``period`` (hour, day, week, month...) in timezone ``tz``
    (DST-correct: a New York day is 23 or 25 hours on a change), every period of
    ``[start, end)`` listed, empty ones too."""
    buckets = period_buckets(
        instant(start, "start"), instant(end, "end"), period=period, tz=tz, anchor=anchor
    )
    if not buckets.bounds:
        return []
    sql, params = usage_query(
        shape.param,
        subject,
        buckets,
        as_of_us=None if as_of is None else instant(as_of, "as_of"),
        meter=meter,
        operation=operation,
        style=shape.usage_style,
    )
    return fold_usage(buckets, (yield Fetch(sql, params)))


def count_op(shape: Shape) -> Op[int]:
    """How many events the ledger holds."""
    rows = yield Fetch(COUNT_SQL, [])
    return int(rows[0][0])


def subjects_op(shape: Shape, since: Instant) -> Op[list[str]]:
    """Every subject with an event that occurred at or after ``since``, sorted."""
    sql = f"SELECT DISTINCT subject FROM usage_events WHERE occurred_at_us >= {shape.param}"
    rows = yield Fetch(sql, [instant(since, "since")])
    return sorted(str(row[0]) for row in rows)


def _commit_plan(
    dialect: Dialect,
    notices: Iterable[Notice],
    hooks: Iterable[HookConfig],
    now_us: int | None,
) -> tuple[bool, After] | None:
    """(whether the new events must be told apart, the flow to run after them); None when
    there is nothing for hooks to do (no notices, no hook on usage): `commit` is `write`."""
    # Imported here: entries and hookevents import the ledger package (a cycle at import time).
    from tollway.metering.entries import Notice
    from tollway.metering.hookevents import plan_deliveries, subscribes

    hooks = tuple(hooks)
    notice_list = list(notices)
    for index, notice in enumerate(notice_list):
        if not isinstance(notice, Notice):
            raise InvalidArgumentError(
                f"notices[{index}]: a {type(notice).__name__}; expected a Notice"
            )
    for index, hook in enumerate(hooks):
        if not isinstance(hook, HookConfig):
            raise InvalidArgumentError(
                f"hooks[{index}]: a {type(hook).__name__}; expected a HookConfig (policy.hooks)"
            )
    need_new = subscribes(hooks, (USAGE_RECORDED,))
    if not notice_list and not need_new:
        return None
    stamp = time.time_ns() // 1000 if now_us is None else now_us

    def after(new_events: list[UsageEvent]) -> Flow[CommitExtras]:
        return commit_flow(
            dialect,
            notice_list,
            lambda fresh: plan_deliveries(hooks, new_events, fresh),
            stamp,
        )

    return need_new, after


def _report(url: str, result: WriteResult) -> None:
    if result.conflicts:
        shown = ", ".join(f"{c.event_id!r} ({', '.join(c.fields)})" for c in result.conflicts[:5])
        more = f" and {len(result.conflicts) - 5} more" if len(result.conflicts) > 5 else ""
        logger.warning(
            "ledger %s: %d event(s) reuse a recorded id with another payload; "
            "the recorded one was kept: %s%s",
            url,
            len(result.conflicts),
            shown,
            more,
        )
