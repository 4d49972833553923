"""The logic of the client's operations, written once as generators (see `requests`).

Each function here returns a `Flow`: acquire with its stale-reply retries and the degraded
path, reserve, take (a provider call), a peek's decision, and a reservation's commit and
release. `tollway.driver` drives them against a sync or an async store; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal

from tollway.engine.core import Engine
from tollway.engine.credits import BALANCE, REVOKE, CreditsOp, Grant, grant_op, granted
from tollway.engine.decision import Decision
from tollway.engine.replies import OK, Reply, is_stale, reply
from tollway.engine.requests import Assign, Assigned, Credits, Flow, Journal, NewHoldId, Settle
from tollway.engine.reservation import ReservationCore
from tollway.engine.step import ACQUIRE, RESERVE, Step, degraded
from tollway.engine.template import call_extras
from tollway.errors import StoreError, StoreUnavailableError, UnknownPlanError
from tollway.policy.model import Policy

# A step is rebuilt when the store says it was built on stale knowledge (a plan changed, a
# window ended); more rebuilds than this means something is flapping, not just stale.
MAX_TRIES = 4

Attributes = Mapping[str, str | int | bool]


def for_call(step: Step, call_id: str | None, attributes: Attributes | None) -> Step:
    """``step`` carrying the caller's request id and event attributes, if any."""
    if call_id is None and attributes is None:
        return step
    ident, attrs = call_extras(call_id, attributes)
    return step.for_call(ident, attrs) if ident or attrs else step


def send(
    engine: Engine,
    build: Callable[[], Step],
    step: Step | None = None,
    answer: Reply | None = None,
    *,
    hold: bool = False,
) -> Flow[tuple[Step, Reply]]:
    """Send ``step`` (else what ``build`` makes, with a hold id when ``hold``; or take
    ``answer``, the reply ``step`` already had), rebuilding the step while the store says it is
    stale; the step that counted and its reply."""
    for _ in range(MAX_TRIES):
        if answer is None:
            if step is None:
                step = build()
                if hold:
                    step.hold_id = yield NewHoldId()
            answer = yield step
        assert step is not None
        if not is_stale(answer.code):
            return step, answer
        engine.finish(step, answer)  # learns the store's plan or clock
        step = answer = None
    raise StoreError("the store kept answering that the step was stale; giving up")


def without_store(engine: Engine, step: Step, exc: StoreUnavailableError) -> Decision:
    """Decide without the store (the limits' ``on_error``). What an acquire let through is
    journaled by the store itself, which alone knows whether its step may have been applied
    (see `tollway.stores.in_doubt`), by the same rule as `degraded`."""
    if step.plan is None:
        raise exc
    return degraded(step, str(exc), exc.retry_after, engine.clock())


def acquire_step(
    engine: Engine,
    subject: str,
    operation: str,
    cost: int | None,
    amount: Decimal | None,
    call_id: str | None,
    attributes: Attributes | None,
) -> Step:
    """The step an acquire sends first. With `acquire_answered` it is the whole acquire in
    the common case, which the faces run without making a generator (the hot path: a flow
    costs about half a microsecond); `acquire_rest` is the rest, when there is any."""
    step = engine.consume(subject, operation, cost, amount, ACQUIRE)
    if call_id is not None or attributes is not None:
        step = for_call(step, call_id, attributes)
    return step


def acquire_answered(engine: Engine, step: Step, answer: Reply) -> Decision | None:
    """The decision of an acquire whose first step was answered, or None when the answer
    says the step was stale (then `acquire_rest` rebuilds it)."""
    if answer.code and is_stale(answer.code):  # OK, the common answer, is never stale
        return None
    decision = engine.finish(step, answer)
    assert decision is not None
    return decision


def acquire_rest(
    engine: Engine,
    step: Step,
    outcome: Reply | StoreUnavailableError,
    subject: str,
    operation: str,
    cost: int | None,
    amount: Decimal | None,
    call_id: str | None,
    attributes: Attributes | None,
) -> Flow[Decision]:
    """An acquire after its first step came back stale (``outcome`` is the reply) or found
    no store (``outcome`` is the error): rebuilt while stale, decided without the store (and
    journaled when let through) while the store is away."""
    try:
        if isinstance(outcome, StoreUnavailableError):
            raise outcome
        build = _builder(engine, subject, operation, cost, amount, call_id, attributes)
        step, answer = yield from send(engine, build, step, outcome)
    except StoreUnavailableError as exc:
        return without_store(engine, step, exc)
    decision = engine.finish(step, answer)
    assert decision is not None
    return decision


def acquire(
    engine: Engine,
    subject: str,
    operation: str,
    cost: int | None,
    amount: Decimal | None,
    call_id: str | None,
    attributes: Attributes | None,
) -> Flow[Decision]:
    """Take ``cost`` units under every limit, or none (see `Tollway.acquire`): the whole
    acquire as one flow, for a driver's ``run``."""
    args = (subject, operation, cost, amount, call_id, attributes)
    step = acquire_step(engine, *args)
    try:
        answer: Reply = yield step
    except StoreUnavailableError as exc:
        return (yield from acquire_rest(engine, step, exc, *args))
    decision = acquire_answered(engine, step, answer)
    if decision is None:
        decision = yield from acquire_rest(engine, step, answer, *args)
    return decision


def _builder(
    engine: Engine,
    subject: str,
    operation: str,
    cost: int | None,
    amount: Decimal | None,
    call_id: str | None,
    attributes: Attributes | None,
) -> Callable[[], Step]:
    """Rebuilds an acquire's step. A function of its own: a closure in `acquire` would cost
    the hot path a cell per argument each time its flow is made."""
    return lambda: for_call(
        engine.consume(subject, operation, cost, amount, ACQUIRE), call_id, attributes
    )


def reserve(
    engine: Engine,
    subject: str,
    operation: str,
    estimate: int | None,
    amount: Decimal | None,
    call_id: str | None,
    attributes: Attributes | None,
) -> Flow[ReservationCore]:
    """Hold ``estimate`` units until the reservation is committed or released."""
    return (
        yield from hold(
            engine,
            lambda: for_call(
                engine.consume(subject, operation, estimate, amount, RESERVE), call_id, attributes
            ),
        )
    )


def hold(
    engine: Engine, build: Callable[[], Step], *, taken: bool = False
) -> Flow[ReservationCore]:
    """A reservation of the step ``build`` makes. ``taken``: the step consumes at once (a
    provider call, see `ReservationCore`): one round trip, none more when committed as taken.
    With the store away nothing is held anywhere; the commit records the actual cost."""
    try:
        step, answer = yield from send(engine, build, hold=not taken)
    except StoreUnavailableError as exc:
        step = build()
        if not taken:
            step.hold_id = yield NewHoldId()
        away = without_store(engine, step, exc)
        return ReservationCore(engine, step, reply(OK, engine.clock(), []), away, taken=taken)
    decision = engine.finish(step, answer)
    assert decision is not None
    return ReservationCore(engine, step, answer, decision, taken=taken)


def decide(engine: Engine, build: Callable[[], Step]) -> Flow[Decision]:
    """The decision of the step ``build`` makes (a peek, say), rebuilt while stale."""
    step, answer = yield from send(engine, build)
    decision = engine.finish(step, answer)
    assert decision is not None
    return decision


def commit(core: ReservationCore, actual: int | None, amount: Decimal | None) -> Flow[Decision]:
    """Settle a reservation at the actual cost; journaled if the store is away."""
    if core.commit_as_taken(actual, amount):
        return core.decision
    settle = core.commit_step(actual, amount)
    if core.nothing_to_settle(settle):
        return core.decision
    try:
        answer = yield Settle(settle)
    except StoreUnavailableError as exc:
        owed, decision = core.unsettled(exc)
        if owed is not None:
            yield Journal(owed)
        return decision
    return core.settled_decision(answer)


def release(core: ReservationCore) -> Flow[None]:
    """Give the whole hold back. With the store away there is nothing to do: the hold
    expires by itself."""
    settle = core.release_step()
    try:
        yield Settle(settle)
    except StoreUnavailableError:
        return


def grant(
    subject: str,
    currency: str,
    grant_id: object,
    micros: object,
    priority: object = 0,
    expires_us: object = None,
) -> Flow[bool]:
    """Add a prepaid grant: True added, False the same grant was there already."""
    op = grant_op(subject, currency, grant_id, micros, priority, expires_us)
    return granted(op, (yield Credits(op)))


def balance(subject: str, currency: str) -> Flow[tuple[int, tuple[Grant, ...]]]:
    """The live balance (micro-units) at the store's now, and the live grants in draw order."""
    answer = yield Credits(CreditsOp(BALANCE, subject, currency))
    return answer.balance, answer.grants


def revoke(subject: str, currency: str, grant_id: str) -> Flow[int]:
    """Remove what is left of a grant: the micro-units removed (0: no such live grant)."""
    answer = yield Credits(CreditsOp(REVOKE, subject, currency, grant_id))
    return int(answer.revoked)


def check_plan(policy: Policy, plan: str | None) -> None:
    if plan is not None and plan not in policy.plans:
        raise UnknownPlanError(
            f"plan: {plan!r} is not declared in the policy; known plans: "
            f"{', '.join(sorted(policy.plans)) or 'none'}"
        )


def assign(engine: Engine, subject: str, plan: str | None) -> Flow[None]:
    """Put the subject on ``plan`` (None: back to the default) in the store."""
    engine.check_subject(subject)
    check_plan(engine.policy, plan)
    yield Assign(subject, plan)
    engine.remember(subject, plan)


def plan_of(engine: Engine, subject: str) -> Flow[str | None]:
    """The plan in force for the subject, read from the store."""
    engine.check_subject(subject)
    assigned: str | None = yield Assigned(subject)
    engine.remember(subject, assigned)
    return engine.plan_of(subject, assigned)


__all__ = [
    "assign",
    "check_plan",
    "plan_of",
    "balance",
    "grant",
    "revoke",
    "MAX_TRIES",
    "acquire",
    "commit",
    "decide",
    "for_call",
    "hold",
    "release",
    "reserve",
    "send",
    "without_store",
]
