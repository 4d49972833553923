"""`Tollway` and `AsyncTollway`: the facades. Each operation is one flow of the engine
(`tollway.engine.flows`, or below), driven against a sync or an async store
(`tollway.driver`): the logic is written once, only the I/O differs."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from tollway.driver import AsyncDriver, Driver, drive, drive_async
from tollway.engine import flows
from tollway.engine.core import Engine
from tollway.engine.decision import Decision
from tollway.engine.replies import Reply
from tollway.engine.requests import Delete, Flow
from tollway.errors import (
    BillingError,
    ConfigurationError,
    InvalidArgumentError,
    StoreUnavailableError,
    UnknownLimitError,
)
from tollway.policy import load
from tollway.policy.model import Policy
from tollway.reservation import AsyncReservation, Reservation
from tollway.stores import AsyncStore, MemoryStore, SyncStore, open_async_store, open_store
from tollway.usage import Usage
from tollway.watch import PolicyWatch, Watcher, shadow_counts, watch_options

if TYPE_CHECKING:
    from datetime import datetime

    from tollway.billing.facade import AsyncBilling, Billing
    from tollway.billing.records import Proration
    from tollway.metering.embedded import EmbeddedDrain
    from tollway.metering.ledger import Ledger, Sealer, UsageEvent
    from tollway.metering.recorder import Recorder
    from tollway.outbound.router import AsyncRoute, Route

PolicySource = Policy | Mapping[str, Any] | str | os.PathLike[str]
Observer = Callable[[Decision, float], None]
"""Called after each `acquire` with its decision and the seconds the call took (e.g.
`tollway.metrics.Metrics.observer`); it must not raise."""


def _sealer(policy: Policy) -> Sealer | None:
    """The sealer of the policy's sensitive attributes (`tollway.metering.ledger.sealing`)."""
    if not policy.ledger.sensitive:
        return None
    from tollway.metering.ledger import sealer_for

    return sealer_for(policy.ledger)


def _policy(source: PolicySource) -> Policy:
    if isinstance(source, Policy):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load(Path(source))
    return load(source)


S = TypeVar("S", SyncStore, AsyncStore)
D = TypeVar("D", Driver, AsyncDriver)
F = TypeVar("F", bound="_Face[Any, Any]")


class _Face(Generic[S, D]):
    """What both facades share: the policy, the engine, the store, the driver, the ledger;
    each face says only how it opens its store and drives its flows."""

    def __init__(
        self,
        policy: PolicySource,
        store: str | S | None = None,
        *,
        clock: Callable[[], int] | None = None,
        observer: Observer | None = None,
        policy_from: str | PolicyWatch | None = None,
    ) -> None:
        self._engine = Engine(_policy(policy), clock)
        options = watch_options(policy_from)
        self._watch = None if options is None else Watcher(self._engine, options)
        """Follows the activations of `tollway.admin.policies` (None: the policy is fixed)."""
        self._recorder: Recorder | None = None
        self._ledger: Ledger | None = None
        self._ledger_lock = threading.Lock()
        self._sealer = _sealer(self._engine.policy)  # a missing key fails here, not later
        self._drain: EmbeddedDrain | None = None
        self._billing: Any = None
        self._store: S = self._open(store)
        self._driver: D = self._driven(self._store)
        self._start_drain(self._store)
        if observer is not None:
            # Only an observed face wraps its acquire: without one, `acquire` is the very same
            # code as before (nothing checked, no clock read).
            self._observe(observer)

    def _observe(self, observer: Observer) -> None:
        raise NotImplementedError

    def _open(self, spec: str | S | None) -> S:
        raise NotImplementedError

    def _driven(self, store: S) -> D:
        raise NotImplementedError

    @classmethod
    def from_file(
        cls: type[F],
        path: str | os.PathLike[str],
        store: str | None = None,
        *,
        clock: Callable[[], int] | None = None,
        observer: Observer | None = None,
        policy_from: str | PolicyWatch | None = None,
    ) -> F:
        return cls(load(Path(path)), store, clock=clock, observer=observer, policy_from=policy_from)

    @property
    def store(self) -> S:
        return self._store

    @property
    def driver(self) -> D:
        """The typed interface tollway's own features (outbound, metering, billing) build on:
        the engine, the policy, the store, and `run` for a flow (see `tollway.driver`)."""
        return self._driver

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
        plan: str | None = None,
    ) -> UsageEvent:
        """Queue a usage event measured elsewhere (``id``: its idempotency key; the ledger
        keeps one event per id); `flush` writes the queue to the ledger. Refused with a clear
        error, and nothing queued, when older than ``[ledger] lateness_s``. ``plan``: the
        plan the usage is billed under (None: the plan in force when it occurred)."""
        self._engine.check_subject(subject)
        if plan is not None and plan not in self.policy.plans:
            raise InvalidArgumentError(
                f"plan: {plan!r} is not a plan of the policy; expected one of "
                f"{', '.join(sorted(self.policy.plans))}"
            )
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
            plan=plan,
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
                    ledger = open_ledger(url)
                    ledger.seal_with(self._sealer)
                    self._ledger = ledger
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

    @property
    def policy(self) -> Policy:
        return self._engine.policy

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def watcher(self) -> Watcher | None:
        """What follows the active policy (``policy_from``), or None."""
        return self._watch


def _billed(
    policy: Policy,
    proration: str | None,
    trial: bool,
    identity: str | None,
    effective: object,
) -> bool:
    """Whether an assignment goes through billing: always with ``[billing]``; its options
    without one are a clear error."""
    if policy.billing is not None:
        return True
    given = [
        name
        for name, value in (
            ("proration", proration),
            ("trial", trial or None),
            ("identity", identity),
            ("effective", effective),
        )
        if value is not None
    ]
    if given:
        raise BillingError(
            f"{', '.join(given)}: billing options need a [billing] section in the policy"
        )
    return False


def _usage(engine: Engine, subject: str) -> Flow[Usage]:
    """Where every limit of the subject's plan stands, consuming nothing."""
    step, answer = yield from flows.send(engine, lambda: engine.peek(subject))
    decision = engine.finish(step, answer)
    assert decision is not None
    return Usage(
        subject=step.subject,
        plan=step.plan,
        limits=decision.limits,
        fields=tuple(rule.field for rule in step.rules),
    )


def _reset(engine: Engine, subject: str, limit: str | None) -> Flow[int]:
    """Clear the subject's counters (of one limit, if named); how many existed."""
    usage = yield from _usage(engine, subject)
    names = {state.name for state in usage.limits}
    if limit is not None and limit not in names:
        raise UnknownLimitError(
            f"limit: {limit!r} does not apply to {usage.subject!r} (plan {usage.plan!r}); "
            f"its limits: {', '.join(sorted(names)) or 'none'}"
        )
    kinds = {state.name: state.kind for state in usage.limits}
    if limit is not None and kinds[limit] == "credits":
        raise UnknownLimitError(
            f"limit: {limit!r} is a prepaid balance, not a counter: it is not reset "
            "(revoke or grant credits instead)"
        )
    # A credits limit's field is the subject's balance: money, never cleared by a reset.
    fields = [
        field
        for field, state in zip(usage.fields, usage.limits, strict=True)
        if (limit is None or state.name == limit) and state.kind != "credits"
    ]
    deleted: int = yield Delete(subject, fields)
    return deleted


class Tollway(_Face[SyncStore, Driver]):
    """Fair-usage control, synchronous face.

    ``Tollway(policy, store="redis://127.0.0.1:6379/0")``; ``policy`` is a `Policy`, a dict
    shaped like the policy file, or a path to a TOML/YAML file. The store defaults to the
    policy's ``[store] url``. ``clock`` (microseconds since the epoch) drives the memory store
    and is how tests avoid sleeping. ``observer`` (optional) is called after each `acquire`
    with the decision and the seconds it took (see `tollway.metrics`).
    """

    def _open(self, spec: str | SyncStore | None) -> SyncStore:
        return open_store(spec, self.policy, self._engine.clock)

    def _driven(self, store: SyncStore) -> Driver:
        return Driver(self._engine, store)

    def _observe(self, observer: Observer) -> None:
        plain = self.acquire

        @functools.wraps(plain)
        def acquire(
            subject: str, operation: str, cost: int | None = None, **options: Any
        ) -> Decision:
            started = time.perf_counter()
            decision = plain(subject, operation, cost, **options)
            observer(decision, time.perf_counter() - started)
            return decision

        self.acquire = acquire  # type: ignore[method-assign]

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

        ``id``: the caller's request id, scoped to (subject, operation). It is the usage
        event's id; a repeat (same cost and amount, within ``[ledger] dedupe_s``) is not
        counted again against quotas or budgets but takes rate capacity (``duplicate`` set),
        at most ``[ledger] max_repeats`` times (then ``refused == "repeats"``); another cost
        or amount is refused (``"conflict"``). ``attributes`` travel with the usage event."""
        # The common case makes no generator: one store call, then the decision (see
        # `flows.acquire_step`); anything else is the shared flow's.
        engine, store, watch = self._engine, self._store, self._watch
        if watch is not None and watch.routing:  # a pilot, or the first call (tollway.watch)
            engine = drive(watch.select(subject, operation, cost, amount), store)
        step = flows.acquire_step(engine, subject, operation, cost, amount, id, attributes)
        outcome: Reply | StoreUnavailableError
        try:
            outcome = answer = store.execute(step)
        except StoreUnavailableError as exc:
            outcome = exc
        else:
            decision = flows.acquire_answered(engine, step, answer)
            if decision is not None:
                if watch is not None and answer.now_us >= watch.due_us:
                    drive(watch.poll(answer.now_us), store)  # for the calls after this one
                return decision
        rest = flows.acquire_rest(
            engine, step, outcome, subject, operation, cost, amount, id, attributes
        )
        return drive(rest, store)

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
        engine = self._engine_for(subject)
        flow = flows.reserve(engine, subject, operation, estimate, amount, id, attributes)
        return Reservation(drive(flow, self._store), self._driver)

    def route(self, name: str, **options: Any) -> Route:
        """The route ``name`` of the policy: `Route.call` and `Route.run` pick a provider
        with headroom and fail over (see `tollway.outbound.router`)."""
        from tollway.outbound.router import Route

        return Route(self, name, **options)

    def usage(self, subject: str) -> Usage:
        """Where every limit of the subject's plan stands, consuming nothing."""
        return drive(_usage(self._engine_for(subject), subject), self._store)

    def reset(self, subject: str, limit: str | None = None) -> int:
        """Clear the subject's counters (of one limit, if named); returns how many existed."""
        return drive(_reset(self._engine_for(subject), subject, limit), self._store)

    def _engine_for(self, subject: str) -> Engine:
        watch = self._watch
        if watch is None or not watch.routing:
            return self._engine
        return drive(watch.select(subject), self._store)

    def shadow_report(self, version: str) -> dict[str, Any]:
        """What the pilot ``version`` would have denied of the calls evaluated in its shadow
        (see `tollway.watch`): ``{"version", "evaluated", "would_deny": {limit: count}}``."""
        return drive(shadow_counts(version), self._store)

    @property
    def billing(self) -> Billing:
        """Billing on the policy's ``[billing]`` and ledger (`tollway.billing.facade`)."""
        if self._billing is None:
            from tollway.billing.facade import Billing

            self._billing = Billing(self._engine, self._store, lambda: self.ledger)
        return cast("Billing", self._billing)

    def assign(
        self,
        subject: str,
        plan: str | None,
        *,
        proration: Proration | None = None,
        trial: bool = False,
        identity: str | None = None,
        effective: datetime | None = None,
    ) -> None:
        """Put the subject on ``plan`` (``None``: back to the default), everywhere at once.
        With ``[billing]`` the change is recorded in the plan history (see `Billing.assign`
        for ``proration``, ``trial``, ``identity`` and ``effective``)."""
        if _billed(self.policy, proration, trial, identity, effective):
            self.billing.assign(
                subject,
                plan,
                proration=proration or "prorate",
                trial=trial,
                identity=identity,
                effective=effective,
            )
        else:
            drive(flows.assign(self._engine, subject, plan), self._store)

    def plan_of(self, subject: str) -> str | None:
        """The plan in force for the subject, read from the store."""
        return drive(flows.plan_of(self._engine, subject), self._store)

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


class AsyncTollway(_Face[AsyncStore, AsyncDriver]):
    """Fair-usage control, asyncio face: the same flows, awaited store calls
    (``AsyncTollway(policy, store=None, *, clock=None, observer=None)``, as `Tollway`)."""

    def _open(self, spec: str | AsyncStore | None) -> AsyncStore:
        return open_async_store(spec, self.policy, self._engine.clock)

    def _driven(self, store: AsyncStore) -> AsyncDriver:
        return AsyncDriver(self._engine, store)

    def _observe(self, observer: Observer) -> None:
        plain = self.acquire

        @functools.wraps(plain)
        async def acquire(
            subject: str, operation: str, cost: int | None = None, **options: Any
        ) -> Decision:
            started = time.perf_counter()
            decision = await plain(subject, operation, cost, **options)
            observer(decision, time.perf_counter() - started)
            return decision

        self.acquire = acquire  # type: ignore[method-assign]

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
        engine, store, watch = self._engine, self._store, self._watch  # see `Tollway.acquire`
        if watch is not None and watch.routing:
            engine = await drive_async(watch.select(subject, operation, cost, amount), store)
        step = flows.acquire_step(engine, subject, operation, cost, amount, id, attributes)
        outcome: Reply | StoreUnavailableError
        try:
            outcome = answer = await store.execute(step)
        except StoreUnavailableError as exc:
            outcome = exc
        else:
            decision = flows.acquire_answered(engine, step, answer)
            if decision is not None:
                if watch is not None and answer.now_us >= watch.due_us:
                    await drive_async(watch.poll(answer.now_us), store)
                return decision
        rest = flows.acquire_rest(
            engine, step, outcome, subject, operation, cost, amount, id, attributes
        )
        return await drive_async(rest, store)

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
        engine = await self._engine_for(subject)
        flow = flows.reserve(engine, subject, operation, estimate, amount, id, attributes)
        return AsyncReservation(await drive_async(flow, self._store), self._driver)

    def route(self, name: str, **options: Any) -> AsyncRoute:
        """The route ``name`` of the policy, asyncio face (see `Tollway.route`)."""
        from tollway.outbound.router import AsyncRoute

        return AsyncRoute(self, name, **options)

    async def usage(self, subject: str) -> Usage:
        engine = await self._engine_for(subject)
        return await drive_async(_usage(engine, subject), self._store)

    async def reset(self, subject: str, limit: str | None = None) -> int:
        engine = await self._engine_for(subject)
        return await drive_async(_reset(engine, subject, limit), self._store)

    async def _engine_for(self, subject: str) -> Engine:
        watch = self._watch
        if watch is None or not watch.routing:
            return self._engine
        return await drive_async(watch.select(subject), self._store)

    async def shadow_report(self, version: str) -> dict[str, Any]:
        """See `Tollway.shadow_report`."""
        return await drive_async(shadow_counts(version), self._store)

    @property
    def billing(self) -> AsyncBilling:
        """Billing, asyncio face (see `Tollway.billing`)."""
        if self._billing is None:
            from tollway.billing.facade import AsyncBilling

            self._billing = AsyncBilling(self._engine, self._store, lambda: self.ledger)
        return cast("AsyncBilling", self._billing)

    async def assign(
        self,
        subject: str,
        plan: str | None,
        *,
        proration: Proration | None = None,
        trial: bool = False,
        identity: str | None = None,
        effective: datetime | None = None,
    ) -> None:
        """See `Tollway.assign`."""
        if _billed(self.policy, proration, trial, identity, effective):
            await self.billing.assign(
                subject,
                plan,
                proration=proration or "prorate",
                trial=trial,
                identity=identity,
                effective=effective,
            )
        else:
            await drive_async(flows.assign(self._engine, subject, plan), self._store)

    async def plan_of(self, subject: str) -> str | None:
        return await drive_async(flows.plan_of(self._engine, subject), self._store)

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
