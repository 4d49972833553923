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

Sinks follow the `Sink` protocol: `WebhookSink` (HTTP(S) POST signed per Standard Webhooks,
with the standard library's ``http.client``: no new dependency) and `CallableSink` (any Python
callable; an exception is a failure, retried on the same schedule).

A Redis Stream sink would fit the same protocol: ``send`` runs ``XADD <stream> * id <message id>
content_type <…> body <…>`` (``MAXLEN ~`` to bound it) and returns delivered on success, failed
on a connection error or a timeout (the ``socket_timeout`` of the client set to ``timeout``).
Consumers dedupe on the ``id`` field exactly as webhook receivers dedupe on ``webhook-id``; an
idempotent variant can first check a ``SET <stream>:seen:<id> NX EX …`` marker in the same
MULTI. A stream has no "gone" answer; ``disabled`` is set by configuration only.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tollway.errors import ConfigurationError, InvalidArgumentError
from tollway.metering.cloudevents import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    encode,
    encode_batch,
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
    _exception_text,
    check_sink_url,
)
from tollway.metering.webhooks import (
    check_message_id,
)

__all__ = [
    "DEFAULT_DELAYS",
    "DEFAULT_TIMEOUT",
    "Attempt",
    "AttemptOutcome",
    "CallableSink",
    "DeadLetter",
    "DeadReason",
    "Deliverer",
    "Delivered",
    "DeliveryState",
    "DeliveryStatus",
    "Message",
    "RetrySchedule",
    "SendResult",
    "Sink",
    "WebhookSink",
    "check_sink_url",
    "outcome_of",
]


DeliveryStatus = Literal["pending", "delivered", "dead"]
DeadReason = Literal["exhausted", "gone", "disabled"]
"""Why a message was dead-lettered: every attempt failed, the sink answered 410 Gone, or the
sink was already disabled."""

_STATE_VERSION = 1
_OUTCOMES = ("delivered", "failed", "gone")
_STATUSES = ("pending", "delivered", "dead")
_REASONS = ("exhausted", "gone", "disabled")


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt: its number (from 1), when it started (deliverer's clock), how long it took,
    and what came of it."""

    number: int
    at: float
    duration: float
    outcome: AttemptOutcome
    status: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "at": self.at,
            "duration": self.duration,
            "outcome": self.outcome,
            "status": self.status,
            "error": self.error,
        }


@dataclass
class DeliveryState:
    """Where one message's delivery stands; JSON round-trip with `to_json` / `from_json`.

    ``body`` is the encoded event or batch as text (always ASCII JSON). ``next_at`` is when the
    next attempt is due (deliverer's clock, jitter already drawn)."""

    message_id: str
    event_ids: list[str]
    content_type: str
    body: str
    target: str
    created_at: float
    next_at: float
    attempts: list[Attempt] = field(default_factory=list)
    status: DeliveryStatus = "pending"
    dead_reason: DeadReason | None = None
    finished_at: float | None = None

    @property
    def message(self) -> Message:
        return Message(
            id=self.message_id,
            body=self.body.encode("utf-8"),
            content_type=self.content_type,
            event_ids=tuple(self.event_ids),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "message_id": self.message_id,
            "event_ids": list(self.event_ids),
            "content_type": self.content_type,
            "body": self.body,
            "target": self.target,
            "created_at": self.created_at,
            "next_at": self.next_at,
            "attempts": [attempt.to_dict() for attempt in self.attempts],
            "status": self.status,
            "dead_reason": self.dead_reason,
            "finished_at": self.finished_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeliveryState:
        """Rebuild a state written by `to_dict`; raises `InvalidArgumentError` naming the field
        at fault."""
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(
                f"delivery state: a {type(data).__name__}; expected a mapping"
            )
        if data.get("version") != _STATE_VERSION:
            raise InvalidArgumentError(
                f"delivery state: version {data.get('version')!r}; expected {_STATE_VERSION}"
            )
        message_id = _field(data, "message_id", str)
        check_message_id(message_id)
        event_ids = _field(data, "event_ids", list)
        if not event_ids or not all(isinstance(item, str) and item for item in event_ids):
            raise InvalidArgumentError(
                f"delivery state: event_ids: {event_ids!r}; expected a non-empty list of ids"
            )
        attempts_data = _field(data, "attempts", list)
        attempts = [_attempt_from(item, index) for index, item in enumerate(attempts_data)]
        status = _choice(data, "status", _STATUSES)
        dead_reason = data.get("dead_reason")
        if dead_reason is not None:
            dead_reason = _choice(data, "dead_reason", _REASONS)
        if (status == "dead") != (dead_reason is not None):
            raise InvalidArgumentError(
                f"delivery state: status {status!r} with dead_reason {dead_reason!r}; a dead "
                "delivery has a reason and only a dead one"
            )
        finished_at = data.get("finished_at")
        if finished_at is not None:
            finished_at = _number(data, "finished_at")
        return cls(
            message_id=message_id,
            event_ids=list(event_ids),
            content_type=_field(data, "content_type", str),
            body=_field(data, "body", str),
            target=_field(data, "target", str),
            created_at=_number(data, "created_at"),
            next_at=_number(data, "next_at"),
            attempts=attempts,
            status=status,
            dead_reason=dead_reason,
            finished_at=finished_at,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DeliveryState:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidArgumentError(f"delivery state: not JSON: {exc}") from None
        return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class Delivered:
    """The sink took the message; ``attempts`` shows what it took."""

    message_id: str
    event_ids: tuple[str, ...]
    target: str
    attempts: tuple[Attempt, ...]
    delivered_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The message could not be delivered: ``reason`` says why, ``attempts`` has every
    attempt's status and error; ``body`` and ``content_type`` let it be replayed as it was."""

    message_id: str
    event_ids: tuple[str, ...]
    target: str
    reason: DeadReason
    attempts: tuple[Attempt, ...]
    content_type: str
    body: str
    created_at: float
    dead_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "event_ids": list(self.event_ids),
            "target": self.target,
            "reason": self.reason,
            "attempts": [attempt.to_dict() for attempt in self.attempts],
            "content_type": self.content_type,
            "body": self.body,
            "created_at": self.created_at,
            "dead_at": self.dead_at,
        }


def outcome_of(state: DeliveryState) -> Delivered | DeadLetter | None:
    """The result of a finished delivery; None while it is pending."""
    if state.status == "delivered":
        return Delivered(
            message_id=state.message_id,
            event_ids=tuple(state.event_ids),
            target=state.target,
            attempts=tuple(state.attempts),
            delivered_at=state.finished_at if state.finished_at is not None else state.next_at,
        )
    if state.status == "dead":
        return DeadLetter(
            message_id=state.message_id,
            event_ids=tuple(state.event_ids),
            target=state.target,
            reason=state.dead_reason or "exhausted",
            attempts=tuple(state.attempts),
            content_type=state.content_type,
            body=state.body,
            created_at=state.created_at,
            dead_at=state.finished_at if state.finished_at is not None else state.next_at,
        )
    return None


# --------------------------------------------------------------------------- deliverer


class Deliverer:
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
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigurationError(f"timeout: {timeout!r}; expected seconds > 0")
        self.sink = sink
        self.schedule = schedule if schedule is not None else RetrySchedule()
        self.timeout = float(timeout)
        self._clock = clock
        self._sleep = sleep
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
        now = self._clock()
        return DeliveryState(
            message_id=message_id,
            event_ids=event_ids,
            content_type=content_type,
            body=body.decode("ascii"),
            target=self.sink.target,
            created_at=now,
            next_at=now + self.schedule.delay(0, self._rng),
        )

    def step(self, state: DeliveryState) -> Delivered | DeadLetter | None:
        """Make the next attempt if it is due now; return the result once the delivery is
        finished, None while it is pending (for a worker polling many deliveries)."""
        if state.status == "pending" and not self._finish_early(state):
            if self._clock() < state.next_at:
                return None
            self._attempt(state)
        return outcome_of(state)

    def run(
        self,
        state: DeliveryState,
        *,
        checkpoint: Callable[[DeliveryState], None] | None = None,
    ) -> Delivered | DeadLetter:
        """Attempt until delivered or dead-lettered, sleeping until each attempt is due;
        ``checkpoint(state)`` after every change (persist it there to resume after a restart).
        """
        while state.status == "pending":
            if not self._finish_early(state):
                wait = state.next_at - self._clock()
                if wait > 0:
                    self._sleep(wait)
                self._attempt(state)
            if checkpoint is not None:
                checkpoint(state)
        result = outcome_of(state)
        assert result is not None
        return result

    def deliver(
        self,
        events: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        checkpoint: Callable[[DeliveryState], None] | None = None,
    ) -> Delivered | DeadLetter:
        """`prepare` then `run`."""
        return self.run(self.prepare(events), checkpoint=checkpoint)

    def replay(self, dead: DeadLetter) -> DeliveryState:
        """A fresh delivery of a dead-lettered message: same id and body (receivers that
        already have it dedupe), a new schedule from the start."""
        check_message_id(dead.message_id)
        now = self._clock()
        return DeliveryState(
            message_id=dead.message_id,
            event_ids=list(dead.event_ids),
            content_type=dead.content_type,
            body=dead.body,
            target=self.sink.target,
            created_at=now,
            next_at=now + self.schedule.delay(0, self._rng),
        )

    # ----------------------------------------------------------------- internals

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

    def _attempt(self, state: DeliveryState) -> None:
        number = len(state.attempts) + 1
        started_at = self._clock()
        started = time.monotonic()
        try:
            result = self.sink.send(state.message, timeout=self.timeout)
        except Exception as exc:  # a sink that raises still only fails this attempt
            result = SendResult.failed(_exception_text(exc))
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
        now = self._clock()
        if result.outcome == "delivered":
            state.status = "delivered"
            state.finished_at = now
        elif result.outcome == "gone":
            self._dead(state, "gone")
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
        state.finished_at = self._clock()


def _field(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidArgumentError(f"delivery state: {name}: {value!r}; expected a {kind.__name__}")
    return value


def _number(data: Mapping[str, Any], name: str, where: str = "") -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(f"delivery state: {where}{name}: {value!r}; expected seconds")
    return float(value)


def _choice(data: Mapping[str, Any], name: str, choices: tuple[str, ...], where: str = "") -> Any:
    value = data.get(name)
    if value not in choices:
        raise InvalidArgumentError(
            f"delivery state: {where}{name}: {value!r}; expected one of {', '.join(choices)}"
        )
    return value


def _attempt_from(item: Any, index: int) -> Attempt:
    where = f"attempts[{index}]"
    if not isinstance(item, Mapping):
        raise InvalidArgumentError(f"delivery state: {where}: {item!r}; expected a mapping")
    number = item.get("number")
    if isinstance(number, bool) or not isinstance(number, int) or number != index + 1:
        raise InvalidArgumentError(
            f"delivery state: {where}.number: {number!r}; expected {index + 1}"
        )
    status = item.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise InvalidArgumentError(f"delivery state: {where}.status: {status!r}; expected an int")
    error = item.get("error")
    if error is not None and not isinstance(error, str):
        raise InvalidArgumentError(f"delivery state: {where}.error: {error!r}; expected text")
    return Attempt(
        number=number,
        at=_number(item, "at", f"{where}."),
        duration=_number(item, "duration", f"{where}."),
        outcome=_choice(item, "outcome", _OUTCOMES, f"{where}."),
        status=status,
        error=error,
    )
