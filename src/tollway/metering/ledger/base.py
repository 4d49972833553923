"""`Ledger` and `AsyncLedger`: the interface every backend offers, as thin faces.

Each operation is written once, in `tollway.metering.ledger.ops`, as a generator taking the
backend's `Shape` first; `_sync` and `_async` turn it into a method of the sync and the async
face (the operation's own signature and docstring) that drives it: `Ledger` with plain calls
to the backend, `AsyncLedger` with awaited ones. A backend implements three primitives:

- ``_ingest(batch, need_new, after)``: one transaction: insert the rows, skipping ids already
  there; read back the stored rows of the batch's ids when some were skipped; tell which events
  were new when ``need_new``; then run the flow ``after(new_events)`` (None: nothing to run);
- ``_fetch(sql, params)``: one read;
- ``_transact(make)``: the flow ``make()`` in a transaction of its own (the hook outbox's
  operations, `tollway.metering.ledger.hookstore`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from tollway.metering.ledger.events import UsageEvent
from tollway.metering.ledger.faces import described
from tollway.metering.ledger.hookstore import AsyncHookStore, HookStore
from tollway.metering.ledger.ops import (
    After,
    Ingest,
    Op,
    Rows,
    Shape,
    commit_op,
    count_op,
    subjects_op,
    totals_op,
    usage_op,
    write_op,
)
from tollway.metering.ledger.outbox import CommitExtras, Dialect
from tollway.metering.ledger.queries import PreparedBatch, UsageStyle
from tollway.metering.ledger.sealing import Sealer

__all__ = ["After", "AsyncLedger", "Ledger", "Rows"]

P = ParamSpec("P")
T = TypeVar("T")
Ingested = tuple[int, Rows, "CommitExtras | None"]


class _Backend:
    """What both faces share: the backend's shape, for the operations."""

    url: str
    sealer: Sealer | None = None
    """Seals sensitive attributes on write; opens them in `opened` (None: none sensitive)."""
    _param: ClassVar[str] = "?"
    _dialect: ClassVar[Dialect] = "sqlite"
    _usage_style: ClassVar[UsageStyle] = "values"

    @property
    def shape(self) -> Shape:
        return Shape(self.url, self._dialect, self._param, self._usage_style, self.sealer)

    def seal_with(self, sealer: Sealer | None) -> None:
        """Seal the sensitive attributes of every event written from now on with ``sealer``
        (`tollway.metering.ledger.sealing.sealer_for` of the policy's ``[ledger]``)."""
        self.sealer = sealer

    def opened(self, events: Sequence[UsageEvent]) -> list[UsageEvent]:
        """``events`` as read from this ledger, their sealed attributes opened."""
        return list(events) if self.sealer is None else self.sealer.opened(events)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _sync(op: Callable[Concatenate[Shape, P], Op[T]]) -> Callable[Concatenate[Ledger, P], T]:
    def method(self: Ledger, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.drive(op(self.shape, *args, **kwargs))

    return described(method, op)


def _async(
    op: Callable[Concatenate[Shape, P], Op[T]],
) -> Callable[Concatenate[AsyncLedger, P], Awaitable[T]]:
    async def method(self: AsyncLedger, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.drive(op(self.shape, *args, **kwargs))

    return described(method, op)


class Ledger(_Backend, HookStore, ABC):
    """The system of record for usage events (sync face). Thread-safe; use as a context
    manager or call `close`."""

    def insert(self, events: Iterable[UsageEvent]) -> int:
        """Record a batch in one transaction, all or nothing; returns how many were new.

        Idempotent on the event id: an id already recorded is skipped (a different payload
        under it is a conflict: the recorded event is kept and a warning is logged; `write`
        returns the conflicts)."""
        return self.write(events).inserted

    write = _sync(write_op)
    commit = _sync(commit_op)
    totals = _sync(totals_op)
    usage = _sync(usage_op)
    count = _sync(count_op)
    subjects = _sync(subjects_op)

    def drive(self, op: Op[T]) -> T:
        """Run one operation of `tollway.metering.ledger.ops` on this backend."""
        try:
            request = next(op)
            while True:
                answer: Any
                if isinstance(request, Ingest):
                    answer = self._ingest(request.batch, request.need_new, request.after)
                else:
                    answer = self._fetch(request.sql, request.params)
                request = op.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _ingest(self, batch: PreparedBatch, need_new: bool, after: After | None) -> Ingested: ...

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any]) -> Rows: ...

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLedger(_Backend, AsyncHookStore, ABC):
    """The async face of `Ledger`: the same methods, awaited; ``aclose()`` or ``async with``."""

    _param: ClassVar[str] = "%s"
    _dialect: ClassVar[Dialect] = "postgres"

    async def insert(self, events: Iterable[UsageEvent]) -> int:
        """See `Ledger.insert`."""
        return (await self.write(events)).inserted

    write = _async(write_op)
    commit = _async(commit_op)
    totals = _async(totals_op)
    usage = _async(usage_op)
    count = _async(count_op)
    subjects = _async(subjects_op)

    async def drive(self, op: Op[T]) -> T:
        """See `Ledger.drive`."""
        try:
            request = next(op)
            while True:
                answer: Any
                if isinstance(request, Ingest):
                    answer = await self._ingest(request.batch, request.need_new, request.after)
                else:
                    answer = await self._fetch(request.sql, request.params)
                request = op.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    async def _ingest(
        self, batch: PreparedBatch, need_new: bool, after: After | None
    ) -> Ingested: ...

    @abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> Rows: ...

    async def __aenter__(self) -> AsyncLedger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
