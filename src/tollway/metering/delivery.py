"""At-least-once delivery of one event (or one batch) to one sink, retried, then dead-lettered.

A delivery is a `DeliveryState`: the message (its id, body and content type), the sink it is
for, every attempt made so far and when the next one is due. It is a plain dataclass that
round-trips through JSON (`DeliveryState.to_json` / `from_json`), so a worker that stops,
crashes or restarts continues the schedule where it was: the ledger persists the state after
every attempt (the ``checkpoint`` of `Deliverer.run`).

- The message's id is the event's id (a batch's is derived from its events' ids), sent as
  ``webhook-id`` on every attempt, so a receiver dedupes retries and replays on it.
- `RetrySchedule` gives the delay before each attempt. The default is the Standard Webhooks
  example schedule: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h
  (ten attempts over about 75 hours, a little over three days). ``jitter`` shortens each delay
  by up to that fraction (1.0 is "full jitter": anywhere from 0 to the delay), so a schedule
  never runs later than its nominal times. `RetrySchedule.exponential` builds a capped
  exponential backoff instead.
- An attempt succeeds on 2xx (or a callable returning). ``410 Gone`` disables the sink and
  dead-letters the message at once. Anything else (3xx, 4xx, 5xx, a timeout, a refused
  connection, an exception) is retried; a ``Retry-After`` answer postpones the next attempt up
  to the schedule's longest delay. After the last attempt the message is dead-lettered: the
  result is a `DeadLetter` carrying every attempt's status and error, and the body, to replay.
- The clock, the sleep and the jitter's random source are injected (tests never wait); each
  attempt has its own ``timeout``.
- The logic is written once (`Delivery`): generators that yield `Send`, `Sleep` and
  `Checkpoint` requests. `Deliverer` drives them with a `Sink`, `AsyncDeliverer` with an
  `tollway.metering.asyncsinks.AsyncSink` and ``asyncio.sleep``.

Sinks follow the `Sink` protocol: `WebhookSink` (HTTP(S) POST signed per Standard Webhooks,
with the standard library's ``http.client``: no new dependency), `CallableSink` (any Python
callable; an exception is a failure, retried on the same schedule) and `RedisStreamSink`
(XADD; consumers dedupe on the ``id`` field as webhook receivers dedupe on ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, Union

from tollway.drive import adrive, drive
from tollway.errors import ConfigurationError, InvalidArgumentError
from tollway.metering.asyncsinks import AsyncSink
from tollway.metering.cloudevents import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    encode,
    encode_batch,
)
from tollway.metering.deliverystate import (
    Attempt,
    DeadLetter,
    DeadReason,
    Delivered,
    DeliveryState,
    DeliveryStatus,
    outcome_of,
)
from tollway.metering.retry import DEFAULT_DELAYS, RetrySchedule
from tollway.metering.sinks import (
    DEFAULT_TIMEOUT,
    AttemptOutcome,
    CallableSink,
    Message,
    SendResult,
    Sink,
    WebhookSink,
    check_sink_url,
    exception_text,
)
from tollway.metering.webhooks import check_message_id

__all__ = [
    "DEFAULT_DELAYS",
    "DEFAULT_TIMEOUT",
    "AsyncDeliverer",
    "Attempt",
    "AttemptOutcome",
    "CallableSink",
    "Checkpoint",
    "DeadLetter",
    "DeadReason",
    "Deliverer",
    "Delivered",
    "Delivery",
    "DeliveryState",
    "DeliveryStatus",
    "Message",
    "RetrySchedule",
    "Send",
    "SendResult",
    "Sink",
    "Sleep",
    "WebhookSink",
    "check_sink_url",
    "outcome_of",
]


class SinkInfo(Protocol):
    """What the delivery logic reads of a sink (sync or async)."""

    @property
    def target(self) -> str: ...

    @property
    def disabled(self) -> bool: ...


S = TypeVar("S", bound=SinkInfo)


@dataclass(frozen=True, slots=True)
class Send(Generic[S]):
    """Make one attempt: ``sink.send(message, timeout=timeout)``; answer its `SendResult`."""

    sink: S
    message: Message
    timeout: float


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The state changed: persist it (`Deliverer.run`'s ``checkpoint``)."""

    state: DeliveryState


Result = Union[Delivered, DeadLetter]  # noqa: UP007 (a runtime alias)
StepFlow = Generator[Send[S], SendResult, Union[Result, None]]  # noqa: UP007
RunFlow = Generator[Union[Send[S], Sleep, Checkpoint], Any, Result]  # noqa: UP007


def _check_timeout(timeout: float) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ConfigurationError(f"timeout: {timeout!r}; expected seconds > 0")
    return float(timeout)


class Delivery(Generic[S]):
    """The delivery logic for one sink, with no I/O: what `Deliverer` and `AsyncDeliverer`
    (and the hook dispatchers) drive. See `Deliverer` for the arguments."""

    def __init__(
        self,
        sink: S,
        *,
        schedule: RetrySchedule | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        honour_retry_after: bool = True,
    ) -> None:
        self.sink = sink
        self.schedule = schedule if schedule is not None else RetrySchedule()
        self.timeout = _check_timeout(timeout)
        self.clock = clock
        self._rng = rng
        self._honour_retry_after = honour_retry_after

    def prepare(self, events: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> DeliveryState:
        """A new pending delivery of one event (a mapping) or a batch (a list of them), due
        after the schedule's first delay. A batch's id is derived from its events' ids, so the
        same batch always gets the same ``webhook-id``."""
        if isinstance(events, Mapping):
            body = encode(events)
            event_ids = [str(events["id"])]
            message_id = event_ids[0]
            content_type = CONTENT_TYPE
        elif isinstance(events, Sequence) and not isinstance(events, (str, bytes)):
            if not events:
                raise InvalidArgumentError("events: an empty batch; expected at least one event")
            body = encode_batch(events)
            event_ids = [str(event["id"]) for event in events]
            twice = sorted(i for i, n in Counter(event_ids).items() if n > 1)
            if twice:
                raise InvalidArgumentError(f"events: the batch repeats ids {', '.join(twice)}")
            digest = hashlib.sha256("\n".join(event_ids).encode("utf-8")).hexdigest()
            message_id = f"batch_{digest[:32]}"
            content_type = BATCH_CONTENT_TYPE
        else:
            raise InvalidArgumentError(
                f"events: a {type(events).__name__}; expected one event (a mapping) or a list"
            )
        check_message_id(message_id)
        now = self.clock()
        return DeliveryState(
            message_id=message_id,
            event_ids=event_ids,
            content_type=content_type,
            body=body.decode("ascii"),
            target=self.sink.target,
            created_at=now,
            next_at=now + self.schedule.delay(0, self._rng),
        )

    def replay(self, dead: DeadLetter) -> DeliveryState:
        """A fresh delivery of a dead-lettered message: same id and body (receivers that
        already have it dedupe), a new schedule from the start."""
        check_message_id(dead.message_id)
        now = self.clock()
        return DeliveryState(
            message_id=dead.message_id,
            event_ids=list(dead.event_ids),
            content_type=dead.content_type,
            body=dead.body,
            target=self.sink.target,
            created_at=now,
            next_at=now + self.schedule.delay(0, self._rng),
        )

    def step_flow(self, state: DeliveryState) -> StepFlow[S]:
        """Make the next attempt if it is due now; return the result once the delivery is
        finished, None while it is pending (for a worker polling many deliveries)."""
        if state.status == "pending" and not self._finish_early(state):
            if self.clock() < state.next_at:
                return None
            yield from self._attempt(state)
        return outcome_of(state)

    def run_flow(self, state: DeliveryState) -> RunFlow[S]:
        """Attempt until delivered or dead-lettered, sleeping until each attempt is due, with
        a `Checkpoint` after every change."""
        while state.status == "pending":
            if not self._finish_early(state):
                wait = state.next_at - self.clock()
                if wait > 0:
                    yield Sleep(wait)
                yield from self._attempt(state)
            yield Checkpoint(state)
        result = outcome_of(state)
        assert result is not None
        return result

    def _finish_early(self, state: DeliveryState) -> bool:
        """Dead-letter without an attempt when the sink is disabled or the schedule (perhaps
        shortened since the state was saved) has no attempt left."""
        if self.sink.disabled:
            self._dead(state, "disabled")
            return True
        if len(state.attempts) >= self.schedule.attempts:
            self._dead(state, "exhausted")
            return True
        return False

    def _attempt(self, state: DeliveryState) -> Generator[Send[S], SendResult, None]:
        number = len(state.attempts) + 1
        started_at = self.clock()
        started = time.monotonic()
        try:
            result = yield Send(self.sink, state.message, self.timeout)
        except Exception as exc:  # a sink that raises still only fails this attempt
            result = SendResult.failed(exception_text(exc))
        if not isinstance(result, SendResult):
            result = SendResult.failed(f"the sink returned {result!r}, not a SendResult")
        state.attempts.append(
            Attempt(
                number=number,
                at=started_at,
                duration=round(time.monotonic() - started, 6),
                outcome=result.outcome,
                status=result.status,
                error=result.error,
            )
        )
        now = self.clock()
        if result.outcome == "delivered":
            state.status = "delivered"
            state.finished_at = now
        elif result.outcome == "gone":
            self._dead(state, "gone")
        elif result.refused:
            self._dead(state, "refused")
        elif number >= self.schedule.attempts:
            self._dead(state, "exhausted")
        else:
            delay = self.schedule.delay(number, self._rng)
            if self._honour_retry_after and result.retry_after is not None:
                delay = max(delay, min(result.retry_after, max(self.schedule.delays)))
            state.next_at = now + delay

    def _dead(self, state: DeliveryState, reason: DeadReason) -> None:
        state.status = "dead"
        state.dead_reason = reason
        state.finished_at = self.clock()


Checkpointer = Callable[[DeliveryState], None]


class Deliverer(Delivery[Sink]):
    """Deliver messages to one ``sink`` on ``schedule``; ``timeout`` seconds per attempt.

    ``clock`` (Unix seconds), ``sleep`` and ``rng`` (jitter, in [0, 1)) are injected for
    tests. ``honour_retry_after``: a sink's ``Retry-After`` postpones the next attempt (never
    beyond the schedule's longest delay)."""

    def __init__(
        self,
        sink: Sink,
        *,
        schedule: RetrySchedule | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        honour_retry_after: bool = True,
    ) -> None:
        if not isinstance(sink, Sink):
            raise ConfigurationError(
                f"sink: {sink!r}; expected a Sink (target, disabled, send(message, timeout=))"
            )
        super().__init__(
            sink,
            schedule=schedule,
            timeout=timeout,
            clock=clock,
            rng=rng,
            honour_retry_after=honour_retry_after,
        )
        self._sleep = sleep

    def step(self, state: DeliveryState) -> Delivered | DeadLetter | None:
        """See `Delivery.step_flow`."""
        return drive(self.step_flow(state), _send)

    def run(self, state: DeliveryState, *, checkpoint: Checkpointer | None = None) -> Result:
        """Attempt until delivered or dead-lettered, sleeping until each attempt is due;
        ``checkpoint(state)`` after every change (persist it there to resume after a restart).
        """

        def handle(request: Send[Sink] | Sleep | Checkpoint) -> Any:
            if isinstance(request, Send):
                return _send(request)
            if isinstance(request, Sleep):
                return self._sleep(request.seconds)
            return checkpoint(request.state) if checkpoint is not None else None

        return drive(self.run_flow(state), handle)

    def deliver(
        self,
        events: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        checkpoint: Checkpointer | None = None,
    ) -> Result:
        """`prepare` then `run`."""
        return self.run(self.prepare(events), checkpoint=checkpoint)


class AsyncDeliverer(Delivery[AsyncSink]):
    """`Deliverer` for asyncio: the same logic, an `AsyncSink` awaited and ``sleep`` awaited
    (``asyncio.sleep`` by default); ``checkpoint`` may be a coroutine function."""

    def __init__(
        self,
        sink: AsyncSink,
        *,
        schedule: RetrySchedule | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        honour_retry_after: bool = True,
    ) -> None:
        if not isinstance(sink, AsyncSink) or not inspect.iscoroutinefunction(sink.send):
            raise ConfigurationError(
                f"sink: {sink!r}; expected an AsyncSink (target, disabled, async "
                "send(message, timeout=)); wrap a sync one in ThreadedSink"
            )
        super().__init__(
            sink,
            schedule=schedule,
            timeout=timeout,
            clock=clock,
            rng=rng,
            honour_retry_after=honour_retry_after,
        )
        self._sleep = sleep

    async def step(self, state: DeliveryState) -> Delivered | DeadLetter | None:
        """See `Delivery.step_flow`."""
        return await adrive(self.step_flow(state), _asend)

    async def run(
        self,
        state: DeliveryState,
        *,
        checkpoint: Callable[[DeliveryState], object] | None = None,
    ) -> Result:
        """See `Deliverer.run`."""

        async def handle(request: Send[AsyncSink] | Sleep | Checkpoint) -> Any:
            if isinstance(request, Send):
                return await _asend(request)
            if isinstance(request, Sleep):
                return await self._sleep(request.seconds)
            done = checkpoint(request.state) if checkpoint is not None else None
            return await done if inspect.isawaitable(done) else done

        return await adrive(self.run_flow(state), handle)

    async def deliver(
        self,
        events: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        checkpoint: Callable[[DeliveryState], object] | None = None,
    ) -> Result:
        """`prepare` then `run`."""
        return await self.run(self.prepare(events), checkpoint=checkpoint)


def _send(request: Send[Sink]) -> SendResult:
    return request.sink.send(request.message, timeout=request.timeout)


async def _asend(request: Send[AsyncSink]) -> SendResult:
    return await request.sink.send(request.message, timeout=request.timeout)
