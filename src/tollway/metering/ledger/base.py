"""`Ledger` and `AsyncLedger`: the interface every backend offers, built on two primitives.

A backend implements ``_write(batch)`` (one transaction: insert the rows, skipping ids already
there, and read back the stored rows of the batch's ids when some were skipped) and
``_fetch(sql, params)``; everything else (checking a batch, telling duplicates from conflicts,
building the queries, folding the rows) is shared, in `tollway.metering.ledger.queries`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from tollway.metering.ledger.events import UsageEvent
from tollway.metering.ledger.queries import (
    COUNT_SQL,
    PeriodUsage,
    PreparedBatch,
    Totals,
    UsageStyle,
    WriteResult,
    finish,
    fold_totals,
    fold_usage,
    period_buckets,
    prepare,
    totals_query,
    usage_query,
)

__all__ = ["AsyncLedger", "Ledger"]

logger = logging.getLogger("tollway.ledger")

Rows = list[Sequence[Any]]


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


class Ledger(ABC):
    """The system of record for usage events (sync face). Thread-safe; use as a context
    manager or call `close`."""

    url: str
    _param: ClassVar[str] = "?"
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

    # ------------------------------------------------------------------ reads
    def totals(
        self,
        subject: str,
        start_us: int,
        end_us: int,
        *,
        as_of_us: int | None = None,
        meter: str | None = None,
        operation: str | None = None,
    ) -> dict[str, Totals]:
        """Totals per meter of ``subject``'s events that occurred in ``[start_us, end_us)``;
        with ``as_of_us``, only those recorded at or before it (what was known then)."""
        sql, params = totals_query(
            self._param,
            subject,
            start_us,
            end_us,
            as_of_us=as_of_us,
            meter=meter,
            operation=operation,
        )
        return fold_totals(self._fetch(sql, params))

    def usage(
        self,
        subject: str,
        start_us: int,
        end_us: int,
        *,
        period: str = "day",
        tz: str = "UTC",
        anchor: int | None = None,
        as_of_us: int | None = None,
        meter: str | None = None,
        operation: str | None = None,
    ) -> list[PeriodUsage]:
        """`totals` per calendar ``period`` (hour, day, week, month...) in timezone ``tz``
        (DST-correct: a New York day is 23 or 25 hours on a change), every period of
        ``[start_us, end_us)`` listed, empty ones too."""
        buckets = period_buckets(start_us, end_us, period=period, tz=tz, anchor=anchor)
        if not buckets.bounds:
            return []
        sql, params = usage_query(
            self._param,
            subject,
            buckets,
            as_of_us=as_of_us,
            meter=meter,
            operation=operation,
            style=self._usage_style,
        )
        return fold_usage(buckets, self._fetch(sql, params))

    def count(self) -> int:
        """How many events the ledger holds."""
        return int(self._fetch(COUNT_SQL, [])[0][0])

    # ------------------------------------------------------------------ backend
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _write(self, batch: PreparedBatch) -> tuple[int, Rows]: ...

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any]) -> Rows: ...

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class AsyncLedger(ABC):
    """The async face of `Ledger`: the same methods, awaited; ``aclose()`` or ``async with``."""

    url: str
    _param: ClassVar[str] = "%s"
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

    async def totals(
        self,
        subject: str,
        start_us: int,
        end_us: int,
        *,
        as_of_us: int | None = None,
        meter: str | None = None,
        operation: str | None = None,
    ) -> dict[str, Totals]:
        """See `Ledger.totals`."""
        sql, params = totals_query(
            self._param,
            subject,
            start_us,
            end_us,
            as_of_us=as_of_us,
            meter=meter,
            operation=operation,
        )
        return fold_totals(await self._fetch(sql, params))

    async def usage(
        self,
        subject: str,
        start_us: int,
        end_us: int,
        *,
        period: str = "day",
        tz: str = "UTC",
        anchor: int | None = None,
        as_of_us: int | None = None,
        meter: str | None = None,
        operation: str | None = None,
    ) -> list[PeriodUsage]:
        """See `Ledger.usage`."""
        buckets = period_buckets(start_us, end_us, period=period, tz=tz, anchor=anchor)
        if not buckets.bounds:
            return []
        sql, params = usage_query(
            self._param,
            subject,
            buckets,
            as_of_us=as_of_us,
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
    async def _fetch(self, sql: str, params: Sequence[Any]) -> Rows: ...

    async def __aenter__(self) -> AsyncLedger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
