"""Where one message's delivery stands: `DeliveryState` (a plain dataclass that round-trips
through JSON, so a worker that stops, crashes or restarts continues the schedule where it was),
its `Attempt` records, and the finished results `Delivered` and `DeadLetter`. The logic that
moves a state on is `tollway.metering.delivery`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tollway.errors import InvalidArgumentError
from tollway.metering.sinks import AttemptOutcome, Message
from tollway.metering.webhooks import check_message_id

__all__ = [
    "Attempt",
    "DeadLetter",
    "DeadReason",
    "Delivered",
    "DeliveryState",
    "DeliveryStatus",
    "outcome_of",
]

DeliveryStatus = Literal["pending", "delivered", "dead"]
DeadReason = Literal["exhausted", "gone", "disabled", "refused"]
"""Why a message was dead-lettered: every attempt failed, the sink answered 410 Gone, the
sink was already disabled, or its target's address was refused (`tollway.netrules`: the
attempt's error says which address and why)."""

_STATE_VERSION = 1
_OUTCOMES = ("delivered", "failed", "gone")
_STATUSES = ("pending", "delivered", "dead")
_REASONS = ("exhausted", "gone", "disabled", "refused")


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
