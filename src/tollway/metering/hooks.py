"""The hook dispatcher: deliver what `Ledger.commit` enqueued, on each hook's schedule.

    dispatcher = Dispatcher(ledger, policy.hooks)
    while running:
        dispatcher.run_once()                   # deliver what is due; how many were attempted
        wait_until(dispatcher.next_due_us())    # None: nothing pending

`run_once` first turns the aggregation buckets that have closed (plus `grace_s`, for events
still on their way through the stream) into messages, then leases up to ``max_messages`` due
messages (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so several dispatchers on one ledger never
send one message at once), makes one attempt at each through the hook's sink with the
`Deliverer` logic (410 disables, Retry-After postpones, after the last attempt the message is
dead), and writes the state back, releasing the lease. A dispatcher that dies mid-attempt
leaves a lease that runs out after the attempt's timeout plus `lease_margin_s`; the message is
then sent again (at-least-once: receivers dedupe on the webhook-id). A new dispatcher on the same
ledger resumes every schedule where it was: the state is in the ledger, never in memory.

Sinks: ``url`` → `WebhookSink` (signed with the ``whsec_`` secrets in the environment variable
``secret_env``, read at start), ``callable`` → `CallableSink` (``package.module:function``
imported at start), ``stream`` → `RedisStreamSink`. ``sink_factory(hook, secrets)`` may supply
another sink (tests, custom transports); returning None keeps the default.
"""

from __future__ import annotations

import importlib
import os
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tollway.engine.step import system_clock
from tollway.errors import ConfigurationError
from tollway.metering.delivery import Deliverer, DeliveryState
from tollway.metering.hookevents import (
    OutboxMessage,
    bucket_event,
    first_delay_us,
    message_of,
)
from tollway.metering.ledger.base import Ledger
from tollway.metering.ledger.hookstore import BucketBuilder
from tollway.metering.ledger.outbox import HookMessage
from tollway.metering.retry import DEFAULT_DELAYS, RetrySchedule
from tollway.metering.sinks import CallableSink, Message, RedisStreamSink, Sink, WebhookSink
from tollway.metering.webhooks import WebhookSecret, parse_secrets
from tollway.policy.model import HookConfig

__all__ = ["Dispatcher", "SinkFactory", "hook_secrets", "resolve_callable"]

SinkFactory = Callable[[HookConfig, tuple[WebhookSecret, ...]], Sink | None]
US = 1_000_000


def _where(hook: HookConfig, index: int) -> str:
    return hook.path or f"hooks[{index}]"


def hook_secrets(hook: HookConfig, env: Mapping[str, str], where: str) -> tuple[WebhookSecret, ...]:
    """The signing secrets of a url hook, from its ``secret_env`` variable (several secrets
    space-separated while one is rotated, the current one first)."""
    name = hook.secret_env
    if name is None:
        raise ConfigurationError(
            f"{where}.secret_env: missing; a url hook needs the name of an environment variable "
            "holding its whsec_ secret"
        )
    value = env.get(name)
    if value is None or not value.strip():
        raise ConfigurationError(
            f"{where}.secret_env: the environment variable {name} is "
            f"{'empty' if value is not None else 'not set'}; expected it to hold the hook's "
            "whsec_ secret (several space-separated while rotating)"
        )
    try:
        return parse_secrets(value.split())
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}.secret_env: {name}: {exc}") from None


def resolve_callable(spec: str, where: str) -> Callable[[Message], object]:
    """Import ``package.module:function`` (the function may be dotted: ``module:Class.method``)."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"{where}.callable: {spec!r}: cannot import {module_name!r} ({exc})"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"{where}.callable: {spec!r}: {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise ConfigurationError(f"{where}.callable: {spec!r} is not callable")
    fn: Callable[[Message], object] = target
    return fn


class Dispatcher:
    """Deliver the hook messages of ``ledger`` for ``hooks`` (``policy.hooks``).

    ``clock`` (microseconds since the epoch, like every tollway clock; default the system's)
    drives schedules, leases and bucket closing;
    ``env`` holds the secrets; ``rng`` draws the schedules' jitter (``jitter`` the fraction).
    Raises `ConfigurationError` naming ``hooks[i].KEY`` for a missing secret or a callable that
    cannot be imported."""

    def __init__(
        self,
        ledger: Ledger,
        hooks: Sequence[HookConfig],
        *,
        clock: Callable[[], int] | None = None,
        env: Mapping[str, str] = os.environ,
        sink_factory: SinkFactory | None = None,
        rng: Callable[[], float] = random.random,
        jitter: float = 0.1,
        grace_s: float = 5.0,
        lease_margin_s: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.ledger = ledger
        clock_us = clock or system_clock
        self._clock_us = clock_us
        # The delivery schedules (`Deliverer`, `DeliveryState`) count in seconds.
        self._clock: Callable[[], float] = lambda: clock_us() / US
        self._grace_us = round(grace_s * US)
        self._owner = owner or f"dispatcher-{uuid.uuid4().hex[:12]}"
        self._hooks: dict[str, HookConfig] = {}
        self._deliverers: dict[str, Deliverer] = {}
        self._lease_us: dict[str, int] = {}
        self._builders: dict[str, BucketBuilder] = {}
        try:
            for index, hook in enumerate(hooks):
                self._add(index, hook, env, sink_factory, rng, jitter, lease_margin_s)
        except BaseException:
            self.close()
            raise
        self._names = list(self._hooks)

    def _add(
        self,
        index: int,
        hook: HookConfig,
        env: Mapping[str, str],
        sink_factory: SinkFactory | None,
        rng: Callable[[], float],
        jitter: float,
        margin_s: float,
    ) -> None:
        where = _where(hook, index)
        if hook.name in self._hooks:
            raise ConfigurationError(f"{where}.name: {hook.name!r} is already a hook's name")
        secrets = hook_secrets(hook, env, where) if hook.kind == "url" else ()
        timeout = hook.timeout_ms / 1000
        sink = sink_factory(hook, secrets) if sink_factory is not None else None
        if sink is None:
            sink = self._default_sink(hook, secrets, where, timeout)
        schedule = RetrySchedule(hook.schedule or DEFAULT_DELAYS, jitter=jitter)
        self._hooks[hook.name] = hook
        self._deliverers[hook.name] = Deliverer(
            sink, schedule=schedule, timeout=timeout, clock=self._clock, rng=rng
        )
        self._lease_us[hook.name] = round((timeout + margin_s) * US)
        if hook.aggregate != "none":
            self._builders[hook.name] = _bucket_builder(hook)

    @staticmethod
    def _default_sink(
        hook: HookConfig, secrets: tuple[WebhookSecret, ...], where: str, timeout: float
    ) -> Sink:
        if hook.kind == "url":
            assert hook.url is not None
            try:
                return WebhookSink(hook.url, secrets)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}.url: {exc}") from None
        if hook.kind == "callable":
            assert hook.callable is not None
            return CallableSink(resolve_callable(hook.callable, where), name=hook.callable)
        if hook.stream is None or hook.stream_url is None:
            raise ConfigurationError(f"{where}.stream_url: missing; expected a redis:// URL")
        return RedisStreamSink.from_url(hook.stream_url, hook.stream, timeout=timeout)

    # ------------------------------------------------------------------ running
    @property
    def hooks(self) -> tuple[HookConfig, ...]:
        return tuple(self._hooks.values())

    def sink(self, hook: str) -> Sink:
        return self._deliverers[hook].sink

    def _now_us(self) -> int:
        return self._clock_us()

    def run_once(self, max_messages: int = 100) -> int:
        """Close the buckets that are due, then make one attempt at each of up to
        ``max_messages`` due messages; returns how many messages were attempted (or finished:
        a disabled sink's messages are dead-lettered without one)."""
        if not self._names:
            return 0
        now_us = self._now_us()
        if self._builders:
            self.ledger.close_hook_buckets(
                self._builders, cutoff_us=now_us - self._grace_us, now_us=now_us
            )
        leased = self.ledger.lease_hook_messages(
            self._names,
            now_us=now_us,
            until_us=now_us + max(self._lease_us.values()),
            owner=self._owner,
            limit=max_messages,
        )
        for message in leased:
            self._attempt(message)
        return len(leased)

    def _attempt(self, message: HookMessage) -> None:
        deliverer = self._deliverers[message.hook]
        now = self._clock()
        state = DeliveryState(
            message_id=message.id,
            event_ids=list(message.event_ids),
            content_type=message.content_type,
            body=message.body,
            target=deliverer.sink.target,
            created_at=message.created_at_us / US,
            # It was leased as due: microsecond rounding must not make it look early.
            next_at=min(message.next_at_us / US, now),
            attempts=list(message.current_attempts),
        )
        deliverer.step(state)
        self.ledger.save_hook_message(
            message,
            owner=self._owner,
            status=state.status,
            dead_reason=state.dead_reason,
            attempts=[*message.attempts[: message.round_start], *state.attempts],
            next_at_us=int(state.next_at * US),
            now_us=self._now_us(),
        )

    def next_due_us(self) -> int | None:
        """When the soonest message is due or bucket closes (Unix us, the clock's), None when
        nothing is pending."""
        return self.ledger.next_hook_due_us(self._names, grace_us=self._grace_us)

    def close(self) -> None:
        """Release the sinks' connections (the ledger is the caller's to close)."""
        for deliverer in self._deliverers.values():
            close = getattr(deliverer.sink, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bucket_builder(hook: HookConfig) -> BucketBuilder:
    delay = first_delay_us(hook)

    def build(message_id: str, row: dict[str, Any]) -> OutboxMessage:
        event = bucket_event(message_id, hook.aggregate, row)
        message = message_of(hook.name, [event], batch=hook.batch > 1)
        return OutboxMessage(
            message.hook, message.id, message.type, message.event_ids, message.content_type,
            message.body, delay,
        )  # fmt: skip

    return build
