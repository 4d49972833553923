"""`Tollway` and `AsyncTollway`: the facades. Both drive the same `Engine`; only I/O differs."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tollway.engine.decision import Decision
from tollway.engine.step import ACQUIRE, DUPLICATE, OK, RESERVE, Engine, Reply, Step, degraded
from tollway.engine.step import reply as make_reply
from tollway.engine.template import call_extras
from tollway.errors import (
    ConfigurationError,
    StoreError,
    StoreUnavailableError,
    UnknownLimitError,
    UnknownPlanError,
)
from tollway.policy import load
from tollway.policy.model import Policy
from tollway.reservation import AsyncReservation, Reservation, ReservationCore
from tollway.stores import AsyncStore, MemoryStore, SyncStore, open_async_store, open_store
from tollway.usage import Usage

if TYPE_CHECKING:
    from datetime import datetime

    from tollway.metering.embedded import EmbeddedDrain
    from tollway.metering.ledger import Ledger, UsageEvent
    from tollway.metering.recorder import Recorder
    from tollway.outbound.router import AsyncRoute, Route

# A step is rebuilt when the store says it was built on stale knowledge (a plan changed, a
# window ended); more rebuilds than this means something is flapping, not just stale.
_MAX_TRIES = 4
PolicySource = Policy | Mapping[str, Any] | str | os.PathLike[str]


def _policy(source: PolicySource) -> Policy:
    if isinstance(source, Policy):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load(Path(source))
    return load(source)


class _Face:
    """What both facades share: the policy, the engine and the argument checks."""

    def __init__(self, policy: PolicySource, clock: Callable[[], int] | None) -> None:
        self._engine = Engine(_policy(policy), clock)
        self._recorder: Recorder | None = None
        self._ledger: Ledger | None = None
        self._ledger_lock = threading.Lock()
        self._drain: EmbeddedDrain | None = None

    def _start_drain(self, store: object) -> None:
        """Embedded mode with events: this process writes them, from a background thread."""
        memory = getattr(store, "sync", store)
        if self._engine.events and isinstance(memory, MemoryStore):
            from tollway.metering.embedded import EmbeddedDrain

            self._drain = EmbeddedDrain(
                memory, lambda: self.ledger, self._engine.policy, self._engine.clock
            )
            self._drain.start()

    # -- usage measured elsewhere (tollway.metering) ----------------------------------------

    def record(
        self,
        subject: str,
        meter: str,
        quantity: int,
        *,
        id: str | None = None,
        occurred_at: datetime | None = None,
        amount: Decimal | None = None,
        currency: str | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
    ) -> UsageEvent:
        """Queue a usage event measured elsewhere (``id``: its idempotency key; the ledger
        keeps one event per id); `flush` writes the queue to the ledger. Refused with a clear
        error, and nothing queued, when older than ``[ledger] lateness_s``."""
        self._engine.check_subject(subject)
        if self._recorder is None:
            from tollway.metering.recorder import Recorder

            self._recorder = Recorder(self.policy, self._engine.clock)
        return self._recorder.record(
            subject,
            meter,
            quantity,
            id=id,
            occurred_at=occurred_at,
            amount=amount,
            currency=currency,
            attributes=attributes,
        )

    @property
    def ledger(self) -> Ledger:
        """The ``[ledger]`` of the policy, opened (and migrated) on first use."""
        if self._ledger is None:
            url = self.policy.ledger.url
            if url is None:
                raise ConfigurationError(
                    "ledger: the policy has no [ledger] url; expected e.g. "
                    'url = "sqlite:///tollway.db" or "postgresql://user@host/db"'
                )
            from tollway.metering.ledger import open_ledger

            with self._ledger_lock:  # the drain thread may ask at the same time
                if self._ledger is None:
                    self._ledger = open_ledger(url)
        return self._ledger

    def _write_queued(self) -> int:
        """Write the queued events (of `record`, and in embedded mode of the steps) to the
        ledger (from a worker thread, for asyncio); on a failure they go back to the queue, so
        a retried flush loses and doubles nothing."""
        written = self._drain.drain() if self._drain is not None else 0
        return written + self._write_recorded()

    def _write_recorded(self) -> int:
        recorder = self._recorder
        events = recorder.take() if recorder is not None else []
        if not events:
            return 0
        assert recorder is not None
        try:
            return self.ledger.write(events).inserted
        except BaseException:
            recorder.put_back(events)
            raise

    def _close_ledger(self) -> None:
        try:
            if self._drain is not None:
                self._drain.close()
                self._drain = None
        finally:
            self._close_ledger_only()

    def _close_ledger_only(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    @staticmethod
    def _for_call(step: Step, call_id: str | None, attributes: object) -> Step:
        if call_id is None and attributes is None:
            return step
        ident, attrs = call_extras(call_id, attributes)
        return step.for_call(ident, attrs) if ident or attrs else step

    @property
    def policy(self) -> Policy:
        return self._engine.policy

    @property
    def engine(self) -> Engine:
        return self._engine

    def _check_plan(self, plan: str | None) -> None:
        if plan is not None and plan not in self.policy.plans:
            raise UnknownPlanError(
                f"plan: {plan!r} is not declared in the policy; known plans: "
                f"{', '.join(sorted(self.policy.plans)) or 'none'}"
            )

    def _reset_fields(self, usage: Usage, limit: str | None) -> list[str]:
        """The subject's counter fields (of one limit, if named)."""
        names = {state.name for state in usage.limits}
        if limit is not None and limit not in names:
            raise UnknownLimitError(
                f"limit: {limit!r} does not apply to {usage.subject!r} (plan {usage.plan!r}); "
                f"its limits: {', '.join(sorted(names)) or 'none'}"
            )
        return [
            field
            for field, state in zip(usage.fields, usage.limits, strict=True)
            if limit is None or state.name == limit
        ]

    def _degraded(self, step: Step, exc: StoreUnavailableError, store: object) -> Decision:
        """Decide without the store; journal what a fail-open acquire let through."""
        if step.plan is None:
            raise exc
        decision = degraded(step, str(exc), exc.retry_after, self._engine.clock())
        journal = getattr(store, "journal_step", None)
        if decision.allowed and step.mode == ACQUIRE and journal is not None:
            journal(step)
        return decision

    def _degraded_hold(self, step: Step, exc: StoreUnavailableError) -> ReservationCore:
        """A reservation decided without the store: nothing is held anywhere; its commit
        records the actual cost (journaled if the store is still away)."""
        decision = self._degraded(step, exc, None)
        now = self._engine.clock()
        return ReservationCore(self._engine, step, make_reply(OK, now, []), decision)

    def _usage(self, step: Step, reply: Reply) -> Usage | None:
        decision = self._engine.finish(step, reply)
        if decision is None:
            return None
        return Usage(
            subject=step.subject,
            plan=step.plan,
            limits=decision.limits,
            fields=tuple(rule.field for rule in step.rules),
        )


class Tollway(_Face):
    """Fair-usage control, synchronous face.

    ``Tollway(policy, store="redis://127.0.0.1:6379/0")``; ``policy`` is a `Policy`, a dict
    shaped like the policy file, or a path to a TOML/YAML file. The store defaults to the
    policy's ``[store] url``. ``clock`` (microseconds since the epoch) drives the memory store
    and is how tests avoid sleeping.
    """

    def __init__(
        self,
        policy: PolicySource,
        store: str | SyncStore | None = None,
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(policy, clock)
        self._store: SyncStore = open_store(store, self.policy, self._engine.clock)
        self._start_drain(self._store)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        store: str | None = None,
        *,
        clock: Callable[[], int] | None = None,
    ) -> Tollway:
        return cls(load(Path(path)), store, clock=clock)

    @property
    def store(self) -> SyncStore:
        return self._store

    def _run(self, build: Callable[[], Step]) -> tuple[Step, Reply]:
        for _ in range(_MAX_TRIES):
            step = build()
            reply = self._store.execute(step)
            if reply.code <= 1 or reply.code == DUPLICATE:
                return step, reply
            self._engine.finish(step, reply)
        raise StoreError("the store kept answering that the step was stale; giving up")

    def acquire(
        self,
        subject: str,
        operation: str,
        cost: int | None = None,
        *,
        amount: Decimal | None = None,
        id: str | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
    ) -> Decision:
        """Take ``cost`` units (default: the operation's cost) under every limit, or none.

        ``id``: the caller's request id. It is the usage event's id, and a step retried with
        an id already taken (within ``[ledger] dedupe_s``) consumes nothing again: the decision
        is allowed, with ``duplicate`` set. ``attributes`` travel with the usage event."""
        engine = self._engine
        step = engine.consume(subject, operation, cost, amount, ACQUIRE)
        if id is not None or attributes is not None:
            step = self._for_call(step, id, attributes)
        try:
            reply = self._store.execute(step)
            if reply.code > 1 and reply.code != DUPLICATE:
                step, reply = self._run(
                    lambda: self._for_call(
                        engine.consume(subject, operation, cost, amount, ACQUIRE), id, attributes
                    )
                )
        except StoreUnavailableError as exc:
            return self._degraded(step, exc, self._store)
        decision = engine.finish(step, reply)
        assert decision is not None
        return decision

    def reserve(
        self,
        subject: str,
        operation: str,
        estimate: int | None = None,
        *,
        amount: Decimal | None = None,
        id: str | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
    ) -> Reservation:
        """Hold ``estimate`` units until `Reservation.commit` or `Reservation.release`; the
        commit appends the usage event (``id``: its id; ``attributes``: its attributes)."""
        return self._reserve(
            lambda: self._for_call(
                self._engine.consume(subject, operation, estimate, amount, RESERVE), id, attributes
            )
        )

    def _reserve(self, make: Callable[[], Step]) -> Reservation:
        """A reservation of the step ``make`` builds (rebuilt if the store finds it stale)."""
        engine = self._engine

        def build() -> Step:
            step = make()
            step.hold_id = self._store.new_hold_id()
            return step

        try:
            step, reply = self._run(build)
        except StoreUnavailableError as exc:
            step = build()
            return Reservation(self._degraded_hold(step, exc), self._store)
        decision = engine.finish(step, reply)
        assert decision is not None
        return Reservation(ReservationCore(engine, step, reply, decision), self._store)

    def _take(self, make: Callable[[], Step]) -> Reservation:
        """The step ``make`` builds, consumed at once and held as a taken reservation (see
        `ReservationCore`): one round trip, and none more when committed as taken."""
        engine = self._engine
        try:
            step, reply = self._run(make)
        except StoreUnavailableError as exc:
            return Reservation(self._degraded_hold(make(), exc), self._store)
        decision = engine.finish(step, reply)
        assert decision is not None
        core = ReservationCore(engine, step, reply, decision, taken=True)
        return Reservation(core, self._store)

    def _decide(self, build: Callable[[], Step]) -> Decision:
        """The decision of the step ``build`` makes (a peek, say), rebuilt while stale."""
        step, reply = self._run(build)
        decision = self._engine.finish(step, reply)
        assert decision is not None
        return decision

    def _append(self, subject: str, entry: dict[str, str]) -> None:
        self._store.append(subject, entry)

    def route(self, name: str, **options: Any) -> Route:
        """The route ``name`` of the policy: `Route.call` and `Route.run` pick a provider
        with headroom and fail over (see `tollway.outbound.router`)."""
        from tollway.outbound.router import Route

        return Route(self, name, **options)

    def usage(self, subject: str) -> Usage:
        """Where every limit of the subject's plan stands, consuming nothing."""
        step, reply = self._run(lambda: self._engine.peek(subject))
        usage = self._usage(step, reply)
        assert usage is not None
        return usage

    def reset(self, subject: str, limit: str | None = None) -> int:
        """Clear the subject's counters (of one limit, if named); returns how many existed."""
        return self._store.delete(subject, self._reset_fields(self.usage(subject), limit))

    def assign(self, subject: str, plan: str | None) -> None:
        """Put the subject on ``plan`` (``None``: back to the default), everywhere at once."""
        self._engine.check_subject(subject)
        self._check_plan(plan)
        self._store.assign(subject, plan)
        self._engine.remember(subject, plan)

    def plan_of(self, subject: str) -> str | None:
        """The plan in force for the subject, read from the store."""
        self._engine.check_subject(subject)
        assigned = self._store.assigned(subject)
        self._engine.remember(subject, assigned)
        return self._engine.plan_of(subject, assigned)

    def ping(self) -> None:
        """Raise `StoreUnavailableError` unless the store answers (for health checks)."""
        self._store.ping()

    def flush(self) -> int:
        """Write the queued usage events (of `record`, and in embedded mode of the steps) to
        the ledger now; how many were new."""
        return self._write_queued()

    def close(self) -> None:
        try:
            if self._recorder is not None and self._recorder.pending:
                self._write_recorded()
        finally:
            self._close_ledger()
            self._store.close()

    def __enter__(self) -> Tollway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTollway(_Face):
    """Fair-usage control, asyncio face: the same engine, awaited store calls."""

    def __init__(
        self,
        policy: PolicySource,
        store: str | AsyncStore | None = None,
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(policy, clock)
        self._store: AsyncStore = open_async_store(store, self.policy, self._engine.clock)
        self._start_drain(self._store)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        store: str | None = None,
        *,
        clock: Callable[[], int] | None = None,
    ) -> AsyncTollway:
        return cls(load(Path(path)), store, clock=clock)

    @property
    def store(self) -> AsyncStore:
        return self._store

    async def _run(self, build: Callable[[], Step]) -> tuple[Step, Reply]:
        for _ in range(_MAX_TRIES):
            step = build()
            reply = await self._store.execute(step)
            if reply.code <= 1 or reply.code == DUPLICATE:
                return step, reply
            self._engine.finish(step, reply)
        raise StoreError("the store kept answering that the step was stale; giving up")

    async def acquire(
        self,
        subject: str,
        operation: str,
        cost: int | None = None,
        *,
        amount: Decimal | None = None,
        id: str | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
    ) -> Decision:
        """See `Tollway.acquire`."""
        engine = self._engine
        step = engine.consume(subject, operation, cost, amount, ACQUIRE)
        if id is not None or attributes is not None:
            step = self._for_call(step, id, attributes)
        try:
            reply = await self._store.execute(step)
            if reply.code > 1 and reply.code != DUPLICATE:
                step, reply = await self._run(
                    lambda: self._for_call(
                        engine.consume(subject, operation, cost, amount, ACQUIRE), id, attributes
                    )
                )
        except StoreUnavailableError as exc:
            return self._degraded(step, exc, self._store)
        decision = engine.finish(step, reply)
        assert decision is not None
        return decision

    async def reserve(
        self,
        subject: str,
        operation: str,
        estimate: int | None = None,
        *,
        amount: Decimal | None = None,
        id: str | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
    ) -> AsyncReservation:
        """See `Tollway.reserve`."""
        return await self._reserve(
            lambda: self._for_call(
                self._engine.consume(subject, operation, estimate, amount, RESERVE), id, attributes
            )
        )

    async def _reserve(self, make: Callable[[], Step]) -> AsyncReservation:
        engine = self._engine

        def build() -> Step:
            step = make()
            step.hold_id = self._store.new_hold_id()
            return step

        try:
            step, reply = await self._run(build)
        except StoreUnavailableError as exc:
            step = build()
            return AsyncReservation(self._degraded_hold(step, exc), self._store)
        decision = engine.finish(step, reply)
        assert decision is not None
        return AsyncReservation(ReservationCore(engine, step, reply, decision), self._store)

    async def _take(self, make: Callable[[], Step]) -> AsyncReservation:
        engine = self._engine
        try:
            step, reply = await self._run(make)
        except StoreUnavailableError as exc:
            return AsyncReservation(self._degraded_hold(make(), exc), self._store)
        decision = engine.finish(step, reply)
        assert decision is not None
        core = ReservationCore(engine, step, reply, decision, taken=True)
        return AsyncReservation(core, self._store)

    async def _decide(self, build: Callable[[], Step]) -> Decision:
        step, reply = await self._run(build)
        decision = self._engine.finish(step, reply)
        assert decision is not None
        return decision

    async def _append(self, subject: str, entry: dict[str, str]) -> None:
        await self._store.append(subject, entry)

    def route(self, name: str, **options: Any) -> AsyncRoute:
        """The route ``name`` of the policy, asyncio face (see `Tollway.route`)."""
        from tollway.outbound.router import AsyncRoute

        return AsyncRoute(self, name, **options)

    async def usage(self, subject: str) -> Usage:
        step, reply = await self._run(lambda: self._engine.peek(subject))
        usage = self._usage(step, reply)
        assert usage is not None
        return usage

    async def reset(self, subject: str, limit: str | None = None) -> int:
        fields = self._reset_fields(await self.usage(subject), limit)
        return await self._store.delete(subject, fields)

    async def assign(self, subject: str, plan: str | None) -> None:
        self._engine.check_subject(subject)
        self._check_plan(plan)
        await self._store.assign(subject, plan)
        self._engine.remember(subject, plan)

    async def plan_of(self, subject: str) -> str | None:
        self._engine.check_subject(subject)
        assigned = await self._store.assigned(subject)
        self._engine.remember(subject, assigned)
        return self._engine.plan_of(subject, assigned)

    async def ping(self) -> None:
        """Raise `StoreUnavailableError` unless the store answers (for health checks)."""
        await self._store.ping()

    async def flush(self) -> int:
        """`Tollway.flush`, in a worker thread."""
        return await asyncio.to_thread(self._write_queued)

    async def aclose(self) -> None:
        try:
            if self._recorder is not None and self._recorder.pending:
                await asyncio.to_thread(self._write_recorded)
        finally:
            await asyncio.to_thread(self._close_ledger)
            await self._store.aclose()

    async def __aenter__(self) -> AsyncTollway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


__all__ = ["AsyncTollway", "Tollway"]
