"""The hook dispatcher's logic, written once: `DispatchLogic` yields `Transact` (run a flow of
`tollway.metering.ledger.outbox` in one ledger transaction) and `Send` (one attempt at one
sink) requests; `tollway.metering.hooks.Dispatcher` answers them with a sync ledger and sync
sinks, `AsyncDispatcher` with an async ledger and async sinks.

A round: turn the aggregation buckets that have closed (plus the grace, for events still on
their way through the stream) into messages; lease up to ``max_messages`` due messages for
this dispatcher's owner; make one attempt at each with the `Delivery` logic of its hook (410
disables, Retry-After postpones, after the last attempt the message is dead); write each
state back, releasing the lease.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

from tollway.clock import US
from tollway.metering.delivery import Delivery, S, Send
from tollway.metering.deliverystate import DeliveryState
from tollway.metering.hookevents import OutboxMessage, bucket_event, first_delay_us, message_of
from tollway.metering.ledger.flows import Flow
from tollway.metering.ledger.hookstore import BucketBuilder
from tollway.metering.ledger.outbox import (
    Dialect,
    HookMessage,
    close_buckets_flow,
    lease_flow,
    next_due_flow,
    save_flow,
)
from tollway.metering.retry import DEFAULT_DELAYS, RetrySchedule
from tollway.policy.model import HookConfig

__all__ = ["DispatchLogic", "Transact"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Transact(Generic[T]):
    """Run ``make()`` in one transaction of the ledger (`HookStore.transact`); answer its
    result."""

    make: Callable[[], Flow[T]]


Request = Union[Transact[Any], Send[S]]  # noqa: UP007 (a runtime alias)
RoundFlow = Generator[Request[S], Any, T]


class DispatchLogic(Generic[S]):
    """The dispatcher of ``sinks`` (one per hook, in the order of the policy's hooks) on a
    ledger of ``dialect``. ``clock`` counts microseconds since the epoch."""

    def __init__(
        self,
        dialect: Dialect,
        sinks: Sequence[tuple[HookConfig, S]],
        *,
        clock: Callable[[], int],
        rng: Callable[[], float],
        jitter: float,
        grace_s: float,
        lease_margin_s: float,
        owner: str | None,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.dialect = dialect
        self.stop = stop
        self.clock_us = clock
        self.owner = owner or f"dispatcher-{uuid.uuid4().hex[:12]}"
        self.grace_us = round(grace_s * US)
        self.hooks: dict[str, HookConfig] = {}
        self.deliveries: dict[str, Delivery[S]] = {}
        self._lease_us: dict[str, int] = {}
        self._attempt_us: dict[str, int] = {}
        self._builders: dict[str, BucketBuilder] = {}
        for hook, sink in sinks:
            timeout = hook.timeout_ms / 1000
            schedule = RetrySchedule(hook.schedule or DEFAULT_DELAYS, jitter=jitter)
            self.hooks[hook.name] = hook
            # The delivery schedules (`Delivery`, `DeliveryState`) count in seconds.
            self.deliveries[hook.name] = Delivery(
                sink, schedule=schedule, timeout=timeout, clock=self._clock_s, rng=rng
            )
            self._lease_us[hook.name] = round((timeout + lease_margin_s) * US)
            self._attempt_us[hook.name] = round(timeout * US)
            if hook.aggregate != "none":
                self._builders[hook.name] = bucket_builder(hook)
        self.names = list(self.hooks)

    def _clock_s(self) -> float:
        return self.clock_us() / US

    def round_flow(self, max_messages: int) -> RoundFlow[S, int]:
        """One round (see the module); returns how many messages were attempted (or finished:
        a disabled sink's messages are dead-lettered without one)."""
        if not self.names:
            return 0
        now_us = self.clock_us()
        if self._builders:
            builders, cutoff_us = self._builders, now_us - self.grace_us
            yield Transact(
                lambda: close_buckets_flow(
                    self.dialect, builders, cutoff_us=cutoff_us, now_us=now_us
                )
            )
        until_us = now_us + max(self._lease_us.values())
        leased: list[HookMessage] = yield Transact(
            lambda: lease_flow(
                self.dialect,
                self.names,
                now_us=now_us,
                until_us=until_us,
                owner=self.owner,
                limit=max_messages,
            )
        )
        for index, message in enumerate(leased):
            if self.stop() or self.clock_us() + self._attempt_us[message.hook] > until_us:
                # Stopping, or the lease could run out mid-attempt (slow receivers ate the
                # round): hand the rest back untouched, due as they were.
                for rest in leased[index:]:
                    yield self._release(rest)
                return index
            yield from self._attempt(message)
        return len(leased)

    def _release(self, message: HookMessage) -> Transact[None]:
        now_us = self.clock_us()
        return Transact(
            lambda: save_flow(
                self.dialect, message, owner=self.owner, status="pending", dead_reason=None,
                attempts=list(message.attempts), next_at_us=message.next_at_us, now_us=now_us,
            )
        )  # fmt: skip

    def _attempt(self, message: HookMessage) -> RoundFlow[S, None]:
        delivery = self.deliveries[message.hook]
        now = self._clock_s()
        state = DeliveryState(
            message_id=message.id,
            event_ids=list(message.event_ids),
            content_type=message.content_type,
            body=message.body,
            target=delivery.sink.target,
            created_at=message.created_at_us / US,
            # It was leased as due: microsecond rounding must not make it look early.
            next_at=min(message.next_at_us / US, now),
            attempts=list(message.current_attempts),
        )
        made = len(state.attempts)
        yield from delivery.step_flow(state)
        if len(state.attempts) > made and state.attempts[-1].outcome == "failed" and self.stop():
            # Cut short by a stop (not the receiver's doing): not counted, due again at once.
            yield self._release(message)
            return
        attempts = [*message.attempts[: message.round_start], *state.attempts]
        saved_at_us = self.clock_us()
        yield Transact(
            lambda: save_flow(
                self.dialect,
                message,
                owner=self.owner,
                status=state.status,
                dead_reason=state.dead_reason,
                attempts=attempts,
                next_at_us=int(state.next_at * US),
                now_us=saved_at_us,
            )
        )

    def next_due(self) -> Transact[int | None]:
        """When the soonest message is due or bucket closes (Unix us, the clock's), None when
        nothing is pending."""
        return Transact(lambda: next_due_flow(self.dialect, self.names, grace_us=self.grace_us))


def bucket_builder(hook: HookConfig) -> BucketBuilder:
    delay = first_delay_us(hook)

    def build(message_id: str, row: dict[str, Any]) -> OutboxMessage:
        event = bucket_event(message_id, hook.aggregate, row)
        message = message_of(hook.name, [event], batch=hook.batch > 1)
        return OutboxMessage(
            message.hook, message.id, message.type, message.event_ids, message.content_type,
            message.body, delay,
        )  # fmt: skip

    return build
