"""`Ledger` and `AsyncLedger`: the interface every backend offers, built on two primitives.

A backend implements ``_write(batch)`` (one transaction: insert the rows, skipping ids already
there, and read back the stored rows of the batch's ids when some were skipped) and
``_fetch(sql, params)``; everything else (checking a batch, telling duplicates from conflicts,
building the queries, folding the rows) is shared, in `tollway.metering.ledger.queries`.

For hooks a backend also implements ``_commit(batch, need_new, after)`` (``_write`` that also
tells which events were new, then runs the flow ``after(new_events)`` in the same transaction)
and ``_transact(flow)`` (a flow in a transaction of its own); the flows are in
`tollway.metering.ledger.outbox`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from tollway.errors import InvalidArgumentError
from tollway.events import USAGE_RECORDED
from tollway.metering.ledger.events import UsageEvent
from tollway.metering.ledger.flows import Flow
from tollway.metering.ledger.hookstore import AsyncHookStore, HookStore
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
from tollway.policy.model import HookConfig

if TYPE_CHECKING:
    from tollway.metering.entries import Notice

__all__ = ["AsyncLedger", "Ledger"]

logger = logging.getLogger("tollway.ledger")

Rows = list[Sequence[Any]]
After = Callable[[list[UsageEvent]], Flow[CommitExtras]]
"""What `Ledger.commit` runs once the usage events are in: given the new ones."""


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


def _with_extras(result: WriteResult, extras: CommitExtras) -> WriteResult:
    return dataclasses.replace(result, notices=extras.notices, enqueued=extras.enqueued)


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


class Ledger(HookStore, ABC):
    """The system of record for usage events (sync face). Thread-safe; use as a context
    manager or call `close`."""

    url: str
    _param: ClassVar[str] = "?"
    _dialect: ClassVar[Dialect] = "sqlite"
    _usage_style: ClassVar[UsageStyle] = "values"

    # ------------------------------------------------------------------ writes
    def insert(self, events: Iterable[UsageEvent]) -> int:
        """Record a batch in one transaction, all or nothing; returns how many were new.

        Idempotent on the event id: an id already recorded is skipped (a different payload
        under it is a conflict: the recorded event is kept and a warning is logged; `write`
        returns the conflicts)."""
        return self.write(events).inserted

    def write(self, events: Iterable[UsageEvent]) -> WriteResult:
        """`insert`, returning the new, duplicate and conflicting events in a `WriteResult`."""
        batch = prepare(events)
        if not batch.events:
            return WriteResult(0, 0)
        inserted, stored = self._write(batch)
        result = finish(batch, inserted, stored)
        _report(self.url, result)
        return result

    def commit(
        self,
        events: Iterable[UsageEvent],
        notices: Iterable[Notice] = (),
        hooks: Iterable[HookConfig] = (),
        *,
        now_us: int | None = None,
    ) -> WriteResult:
        """`write` the events and record the notices (idempotent on id, both) and, for those
        that were new, enqueue a delivery for each hook subscribed to their type (or add to the
        hook's aggregation bucket): one transaction, all or nothing. A batch committed again
        (a redelivery) enqueues nothing twice. ``now_us`` stamps the enqueued messages
        (default: now). With no notices and no hook on usage, it is `write`."""
        plan = _commit_plan(self._dialect, notices, hooks, now_us)
        if plan is None:
            return self.write(events)
        batch = prepare(events)
        inserted, stored, extras = self._commit(batch, *plan)
        result = finish(batch, inserted, stored)
        _report(self.url, result)
        return _with_extras(result, extras)

    # ------------------------------------------------------------------ reads
    def totals(
        self,
        subject: str,
        start: Instant,
        end: Instant,
        *,
        as_of: Instant | None = None,
        meter: str | None = None,
        operation: str | None = None,
    ) -> dict[str, Totals]:
        """Totals per meter of ``subject``'s events that occurred in ``[start, end)``; with
        ``as_of``, only those recorded at or before it (what was known then: re-running an
        invoice leaves out the late events recorded since). Instants are timezone-aware
        datetimes or integer microseconds since the epoch."""
        sql, params = totals_query(
            self._param,
            subject,
            instant(start, "start"),
            instant(end, "end"),
            as_of_us=None if as_of is None else instant(as_of, "as_of"),
            meter=meter,
            operation=operation,
        )
        return fold_totals(self._fetch(sql, params))

    def usage(
        self,
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
    ) -> list[PeriodUsage]:
        """`totals` per calendar ``period`` (hour, day, week, month...) in timezone ``tz``
        (DST-correct: a New York day is 23 or 25 hours on a change), every period of
        ``[start, end)`` listed, empty ones too."""
        buckets = period_buckets(
            instant(start, "start"), instant(end, "end"), period=period, tz=tz, anchor=anchor
        )
        if not buckets.bounds:
            return []
        sql, params = usage_query(
            self._param,
            subject,
            buckets,
            as_of_us=None if as_of is None else instant(as_of, "as_of"),
            meter=meter,
            operation=operation,
            style=self._usage_style,
        )
        return fold_usage(buckets, self._fetch(sql, params))

    def count(self) -> int:
        """How many events the ledger holds."""
        return int(self._fetch(COUNT_SQL, [])[0][0])

    def subjects(self, since: Instant) -> list[str]:
        """Every subject with an event that occurred at or after ``since``, sorted."""
        sql = f"SELECT DISTINCT subject FROM usage_events WHERE occurred_at_us >= {self._param}"
        return sorted(str(row[0]) for row in self._fetch(sql, [instant(since, "since")]))

    # ------------------------------------------------------------------ backend
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _write(self, batch: PreparedBatch) -> tuple[int, Rows]: ...

    @abstractmethod
    def _commit(
        self, batch: PreparedBatch, need_new: bool, after: After
    ) -> tuple[int, Rows, CommitExtras]: ...

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any]) -> Rows: ...

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class AsyncLedger(AsyncHookStore, ABC):
    """The async face of `Ledger`: the same methods, awaited; ``aclose()`` or ``async with``."""

    url: str
    _param: ClassVar[str] = "%s"
    _dialect: ClassVar[Dialect] = "postgres"
    _usage_style: ClassVar[UsageStyle] = "values"

    async def insert(self, events: Iterable[UsageEvent]) -> int:
        """See `Ledger.insert`."""
        return (await self.write(events)).inserted

    async def write(self, events: Iterable[UsageEvent]) -> WriteResult:
        """See `Ledger.write`."""
        batch = prepare(events)
        if not batch.events:
            return WriteResult(0, 0)
        inserted, stored = await self._write(batch)
        result = finish(batch, inserted, stored)
        _report(self.url, result)
        return result

    async def commit(
        self,
        events: Iterable[UsageEvent],
        notices: Iterable[Notice] = (),
        hooks: Iterable[HookConfig] = (),
        *,
        now_us: int | None = None,
    ) -> WriteResult:
        """See `Ledger.commit`."""
        plan = _commit_plan(self._dialect, notices, hooks, now_us)
        if plan is None:
            return await self.write(events)
        batch = prepare(events)
        inserted, stored, extras = await self._commit(batch, *plan)
        result = finish(batch, inserted, stored)
        _report(self.url, result)
        return _with_extras(result, extras)

    async def totals(
        self,
        subject: str,
        start: Instant,
        end: Instant,
        *,
        as_of: Instant | None = None,
        meter: str | None = None,
        operation: str | None = None,
    ) -> dict[str, Totals]:
        """See `Ledger.totals`."""
        sql, params = totals_query(
            self._param,
            subject,
            instant(start, "start"),
            instant(end, "end"),
            as_of_us=None if as_of is None else instant(as_of, "as_of"),
            meter=meter,
            operation=operation,
        )
        return fold_totals(await self._fetch(sql, params))

    async def usage(
        self,
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
    ) -> list[PeriodUsage]:
        """See `Ledger.usage`."""
        buckets = period_buckets(
            instant(start, "start"), instant(end, "end"), period=period, tz=tz, anchor=anchor
        )
        if not buckets.bounds:
            return []
        sql, params = usage_query(
            self._param,
            subject,
            buckets,
            as_of_us=None if as_of is None else instant(as_of, "as_of"),
            meter=meter,
            operation=operation,
            style=self._usage_style,
        )
        return fold_usage(buckets, await self._fetch(sql, params))

    async def count(self) -> int:
        """See `Ledger.count`."""
        return int((await self._fetch(COUNT_SQL, []))[0][0])

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    async def _write(self, batch: PreparedBatch) -> tuple[int, Rows]: ...

    @abstractmethod
    async def _commit(
        self, batch: PreparedBatch, need_new: bool, after: After
    ) -> tuple[int, Rows, CommitExtras]: ...

    @abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> Rows: ...

    async def __aenter__(self) -> AsyncLedger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
