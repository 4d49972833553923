"""`tw.record(...)`: usage measured elsewhere, queued as usage events until `flush`.

What both faces share: the checks (a subject, a meter, a whole quantity, money as `Decimal`,
an ``occurred_at`` inside the lateness window, never ahead of the clock by more than a
little), the event (time-ordered id unless the caller gives one: the ledger is idempotent on
it), and the queue. Only the flush differs (a thread call or an awaited one). A flush that
fails puts its events back at the head of the queue: nothing is lost, and a retried flush
adds nothing twice.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal

from tollway.clock import US
from tollway.engine.template import new_event_id
from tollway.errors import InvalidArgumentError
from tollway.metering.ledger.events import AttributeValue, UsageEvent
from tollway.money import decimal_to_micros
from tollway.policy.model import Policy

__all__ = ["MAX_AHEAD_US", "Recorder"]

MAX_AHEAD_US = 300 * US
"""How far ahead of this process's clock an ``occurred_at`` may be (clock skew)."""


class Recorder:
    def __init__(self, policy: Policy, clock: Callable[[], int]) -> None:
        self.policy = policy
        self.clock = clock
        self.lateness_us = policy.ledger.lateness_s * US
        self._queue: deque[UsageEvent] = deque()
        self._lock = threading.Lock()

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
        operation: str | None = None,
        plan: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> UsageEvent:
        now = self.clock()
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            raise InvalidArgumentError(
                f"quantity: {quantity!r}; expected a whole number of units >= 0"
            )
        at = now if occurred_at is None else self._instant(occurred_at, now)
        micros = None
        if amount is not None:
            micros = decimal_to_micros(amount, what="amount")
            if currency is None:
                raise InvalidArgumentError(
                    f"currency: missing for amount {amount}; expected a code such as 'USD'"
                )
        elif currency is not None:
            raise InvalidArgumentError(f"currency: {currency!r} without an amount; give both")
        event = UsageEvent(
            id=new_event_id(now) if id is None else id,
            subject=subject,
            operation=operation or meter,
            meter=meter,
            quantity=quantity,
            occurred_at_us=at,
            recorded_at_us=now,
            amount_micros=micros,
            currency=currency,
            plan=plan,
            policy_version=self.policy.version or None,
            attributes=dict(attributes or {}),
        )
        with self._lock:
            self._queue.append(event)
        return event

    def _instant(self, occurred_at: object, now: int) -> int:
        if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
            raise InvalidArgumentError(
                f"occurred_at: {occurred_at!r}; expected a timezone-aware datetime"
            )
        at = int(occurred_at.timestamp() * US)
        if at < now - self.lateness_us:
            raise InvalidArgumentError(
                f"occurred_at: {occurred_at.isoformat()} is older than the lateness window "
                f"({self.lateness_us // US} s, [ledger] lateness_s); expected a later time"
            )
        if at > now + MAX_AHEAD_US:
            raise InvalidArgumentError(
                f"occurred_at: {occurred_at.isoformat()} is more than {MAX_AHEAD_US // US} s "
                "ahead of this clock; expected a time that has happened"
            )
        return at

    def take(self) -> list[UsageEvent]:
        """Every queued event, oldest first; the queue is empty after."""
        with self._lock:
            events = list(self._queue)
            self._queue.clear()
        return events

    def put_back(self, events: list[UsageEvent]) -> None:
        """A failed flush's events, back at the head of the queue in their order."""
        with self._lock:
            self._queue.extendleft(reversed(events))

    @property
    def pending(self) -> int:
        return len(self._queue)
