"""The drivers: the one place a flow's requests become store calls, for threads and asyncio.

`drive` and `drive_async` run any `Flow` (`tollway.engine.requests`) against a store; the
faces (`Tollway`, `Reservation`, `Route`...) only build flows and hand them here. A store
error is thrown into the flow, which decides what it means (fail open, journal, fail over).

`Driver` and `AsyncDriver` (``tw.driver``) are the typed interface that tollway's own
features (outbound, metering, billing next) build on instead of the client's internals: the
engine, the policy, the store, `run` for a flow of their own, and the few operations they
share.

Prepaid credits (for `tollway.billing`): ``grant(subject, currency, grant_id, micros,
priority=0, expires_us=None)`` adds a grant, idempotent on its id (True added, False already
there; `GrantConflictError` when the id is there with other terms); ``balance(subject,
currency)`` answers the live balance in micro-units at the store's now and the live grants in
draw order (`tollway.engine.credits.Grant`, ``remaining`` what is left of each); ``revoke``
removes what is left of a grant (the micro-units removed). All three run `tollway.engine.flows`'
credits flows, so the sync and async faces share them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tollway.engine import flows
from tollway.engine.requests import (
    Append,
    Assign,
    Assigned,
    Control,
    Credits,
    Delete,
    Flow,
    Health,
    Invoke,
    Journal,
    NewHoldId,
    Settle,
)
from tollway.engine.step import Step
from tollway.stores import control

if TYPE_CHECKING:
    from tollway.engine.core import Engine
    from tollway.engine.credits import Grant
    from tollway.engine.decision import Decision
    from tollway.engine.health import HealthOp, HealthReply
    from tollway.engine.reservation import ReservationCore
    from tollway.policy.model import Policy
    from tollway.reservation import AsyncReservation, Reservation
    from tollway.stores import AsyncStore, SyncStore

T = TypeVar("T")


def _journal(store: Any, request: Journal) -> None:
    journal = getattr(store, "journal_step", None)  # only a store that can be away has one
    if journal is not None:
        journal(request.step)


_SYNC: dict[type, Callable[[Any, Any], Any]] = {
    Settle: lambda store, r: store.settle(r.settle),
    Append: lambda store, r: store.append(r.subject, r.entry),
    Health: lambda store, r: store.health(r.op),
    Credits: lambda store, r: store.credits(r.op),
    NewHoldId: lambda store, r: store.new_hold_id(),
    Journal: _journal,
    Assign: lambda store, r: store.assign(r.subject, r.plan),
    Assigned: lambda store, r: store.assigned(r.subject),
    Delete: lambda store, r: store.delete(r.subject, r.fields),
    Invoke: lambda store, r: r.fn(r.arg),
    Control: lambda store, r: control.answer(store, r.op),
}


async def _hold_id(store: Any, request: NewHoldId) -> str:
    return str(store.new_hold_id())


async def _journal_async(store: Any, request: Journal) -> None:
    _journal(store, request)


_ASYNC: dict[type, Callable[[Any, Any], Awaitable[Any]]] = {
    **_SYNC,
    # What the async stores answer without awaiting.
    NewHoldId: _hold_id,
    Journal: _journal_async,
    Control: lambda store, r: control.answer_async(store, r.op),
}


def drive(flow: Flow[T], store: SyncStore, _step: type = Step) -> T:
    """Run ``flow`` to its end against a sync store."""
    send = flow.send
    try:
        request = send(None)
        while True:
            try:
                if type(request) is _step:  # the hot path: the atomic step itself
                    answer = store.execute(request)  # type: ignore[arg-type]
                else:
                    answer = _SYNC[type(request)](store, request)
            except Exception as exc:
                request = flow.throw(exc)
            else:
                request = send(answer)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def drive_async(flow: Flow[T], store: AsyncStore) -> T:
    """Run ``flow`` to its end against an asyncio store."""
    try:
        request = next(flow)
        while True:
            try:
                if type(request) is Step:
                    answer = await store.execute(request)
                else:
                    answer = await _ASYNC[type(request)](store, request)
            except Exception as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(answer)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class _Base:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        """The pure engine: builds steps (`Engine.consume`, `provider`, `peek`)."""

    @property
    def policy(self) -> Policy:
        return self.engine.policy


class Driver(_Base):
    """What tollway's features use of a `Tollway` (``tw.driver``); stable across versions of
    the client's internals. Every method is one flow driven against the client's store."""

    def __init__(self, engine: Engine, store: SyncStore) -> None:
        super().__init__(engine)
        self.store = store

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow of the caller's own against the store."""
        return drive(flow, self.store)

    def decide(self, build: Callable[[], Step]) -> Decision:
        """The decision of the step ``build`` makes (rebuilt while the store finds it stale)."""
        return drive(flows.decide(self.engine, build), self.store)

    def take(self, build: Callable[[], Step]) -> Reservation:
        """The step ``build`` makes, consumed at once and held as a taken reservation."""
        return self.reservation(drive(flows.hold(self.engine, build, taken=True), self.store))

    def reservation(self, core: ReservationCore) -> Reservation:
        """The sync face of a reservation a flow returned."""
        from tollway.reservation import Reservation

        return Reservation(core, self)

    def append(self, subject: str, entry: dict[str, str]) -> None:
        """Append an entry to the subject's event stream."""
        self.store.append(subject, entry)

    def health(self, op: HealthOp) -> HealthReply:
        """Write a provider's health gates."""
        return self.store.health(op)

    def grant(
        self,
        subject: str,
        currency: str,
        grant_id: str,
        micros: int,
        priority: int = 0,
        expires_us: int | None = None,
    ) -> bool:
        """Add a prepaid grant (see the module docstring)."""
        return self.run(flows.grant(subject, currency, grant_id, micros, priority, expires_us))

    def balance(self, subject: str, currency: str) -> tuple[int, tuple[Grant, ...]]:
        """The live balance (micro-units) and the live grants in draw order."""
        return self.run(flows.balance(subject, currency))

    def revoke(self, subject: str, currency: str, grant_id: str) -> int:
        """Remove what is left of a grant; the micro-units removed."""
        return self.run(flows.revoke(subject, currency, grant_id))


class AsyncDriver(_Base):
    """`Driver`, for an `AsyncTollway` (``tw.driver``)."""

    def __init__(self, engine: Engine, store: AsyncStore) -> None:
        super().__init__(engine)
        self.store = store

    async def run(self, flow: Flow[T]) -> T:
        return await drive_async(flow, self.store)

    async def decide(self, build: Callable[[], Step]) -> Decision:
        return await drive_async(flows.decide(self.engine, build), self.store)

    async def take(self, build: Callable[[], Step]) -> AsyncReservation:
        core = await drive_async(flows.hold(self.engine, build, taken=True), self.store)
        return self.reservation(core)

    def reservation(self, core: ReservationCore) -> AsyncReservation:
        from tollway.reservation import AsyncReservation

        return AsyncReservation(core, self)

    async def append(self, subject: str, entry: dict[str, str]) -> None:
        await self.store.append(subject, entry)

    async def grant(
        self,
        subject: str,
        currency: str,
        grant_id: str,
        micros: int,
        priority: int = 0,
        expires_us: int | None = None,
    ) -> bool:
        return await self.run(
            flows.grant(subject, currency, grant_id, micros, priority, expires_us)
        )

    async def balance(self, subject: str, currency: str) -> tuple[int, tuple[Grant, ...]]:
        return await self.run(flows.balance(subject, currency))

    async def revoke(self, subject: str, currency: str, grant_id: str) -> int:
        return await self.run(flows.revoke(subject, currency, grant_id))

    async def health(self, op: HealthOp) -> HealthReply:
        return await self.store.health(op)


__all__ = ["AsyncDriver", "Driver", "drive", "drive_async"]
