"""The hook dispatchers: deliver what `Ledger.commit` enqueued, on each hook's schedule.

    dispatcher = Dispatcher(ledger, policy.hooks)
    while running:
        dispatcher.run_once()                   # deliver what is due; how many were attempted
        wait_until(dispatcher.next_due_us())    # None: nothing pending

    async with AsyncDispatcher(async_ledger, policy.hooks) as dispatcher:   # asyncio
        await dispatcher.run_once()
        await dispatcher.serve(stop)            # or: round after round until ``stop`` is set

`run_once` first turns the aggregation buckets that have closed (plus `grace_s`, for events
still on their way through the stream) into messages, then leases up to ``max_messages`` due
messages (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so several dispatchers on one ledger never
send one message at once), makes one attempt at each through the hook's sink with the
`Delivery` logic (410 disables, Retry-After postpones, after the last attempt the message is
dead), and writes the state back, releasing the lease. A dispatcher that dies mid-attempt
leaves a lease that runs out after the attempt's timeout plus `lease_margin_s`; the message is
then sent again (at-least-once: receivers dedupe on the webhook-id). A new dispatcher on the same
ledger resumes every schedule where it was: the state is in the ledger, never in memory.

The logic is `tollway.metering.dispatch.DispatchLogic`, written once; `Dispatcher` drives it
on a sync `Ledger` with sync sinks, `AsyncDispatcher` on an `AsyncLedger` (`AsyncSqliteLedger`,
`AsyncPostgresLedger`) with async ones.

Sinks: ``url`` → `WebhookSink` (signed with the ``whsec_`` secrets in the environment variable
``secret_env``, read at start; async: in a `ThreadedSink`), ``callable`` → `CallableSink`
(``package.module:function`` imported at start; async: a coroutine function is awaited, a plain
one runs in a `ThreadedSink`), ``stream`` → `RedisStreamSink` (async: `AsyncRedisStreamSink`).
``sink_factory(hook, secrets)`` may supply another sink (tests, custom transports); returning
None keeps the default. The async face takes sync sinks from it too (run in threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic

from tollway.drive import adrive, drive
from tollway.engine.step import system_clock
from tollway.errors import ConfigurationError
from tollway.metering.asyncsinks import (
    AsyncCallableSink,
    AsyncRedisStreamSink,
    AsyncSink,
    ThreadedSink,
    as_async_sink,
    close_sink,
)
from tollway.metering.delivery import S, Send
from tollway.metering.dispatch import DispatchLogic, Request
from tollway.metering.ledger.base import AsyncLedger, Ledger
from tollway.metering.sinks import CallableSink, Message, RedisStreamSink, Sink, WebhookSink
from tollway.metering.webhooks import WebhookSecret, parse_secrets
from tollway.policy.model import HookConfig

__all__ = [
    "AsyncDispatcher",
    "AsyncSinkFactory",
    "Dispatcher",
    "SinkFactory",
    "hook_secrets",
    "resolve_callable",
]

SinkFactory = Callable[[HookConfig, tuple[WebhookSecret, ...]], Sink | None]
AsyncSinkFactory = Callable[[HookConfig, tuple[WebhookSecret, ...]], "AsyncSink | Sink | None"]
Secrets = tuple[WebhookSecret, ...]


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


def _configure(
    hooks: Sequence[HookConfig], env: Mapping[str, str]
) -> Iterator[tuple[HookConfig, Secrets, str]]:
    """Each hook with its secrets and where it is in the policy; refuses a name used twice."""
    names: set[str] = set()
    for index, hook in enumerate(hooks):
        where = _where(hook, index)
        if hook.name in names:
            raise ConfigurationError(f"{where}.name: {hook.name!r} is already a hook's name")
        names.add(hook.name)
        yield hook, hook_secrets(hook, env, where) if hook.kind == "url" else (), where


def _webhook(hook: HookConfig, secrets: Secrets, where: str) -> WebhookSink:
    assert hook.url is not None
    try:
        return WebhookSink(
            hook.url, secrets, allow_http=hook.allow_http, allow_private=hook.allow_private
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}.url: {exc}") from None


def _stream_of(hook: HookConfig, where: str) -> tuple[str, str]:
    if hook.stream is None or hook.stream_url is None:
        raise ConfigurationError(f"{where}.stream_url: missing; expected a redis:// URL")
    return hook.stream_url, hook.stream


def _default_sink(hook: HookConfig, secrets: Secrets, where: str) -> Sink:
    if hook.kind == "url":
        return _webhook(hook, secrets, where)
    if hook.kind == "callable":
        assert hook.callable is not None
        return CallableSink(resolve_callable(hook.callable, where), name=hook.callable)
    url, stream = _stream_of(hook, where)
    return RedisStreamSink.from_url(url, stream, timeout=hook.timeout_ms / 1000)


def _default_async_sink(
    hook: HookConfig, secrets: Secrets, where: str, semaphore: asyncio.Semaphore
) -> AsyncSink:
    if hook.kind == "url":
        return ThreadedSink(_webhook(hook, secrets, where), semaphore=semaphore)
    if hook.kind == "callable":
        assert hook.callable is not None
        fn: Any = resolve_callable(hook.callable, where)
        if inspect.iscoroutinefunction(fn):
            return AsyncCallableSink(fn, name=hook.callable)
        return ThreadedSink(CallableSink(fn, name=hook.callable), semaphore=semaphore)
    url, stream = _stream_of(hook, where)
    return AsyncRedisStreamSink.from_url(url, stream, timeout=hook.timeout_ms / 1000)


class _Faces(Generic[S]):
    """What both dispatchers show of their logic."""

    _logic: DispatchLogic[S]

    @property
    def hooks(self) -> tuple[HookConfig, ...]:
        return tuple(self._logic.hooks.values())

    def sink(self, hook: str) -> S:
        """The sink of the hook named ``hook``."""
        return self._logic.deliveries[hook].sink


class Dispatcher(_Faces[Sink]):
    """Deliver the hook messages of ``ledger`` for ``hooks`` (``policy.hooks``).

    ``clock`` (microseconds since the epoch, like every tollway clock; default the system's)
    drives schedules, leases and bucket closing;
    ``env`` holds the secrets; ``rng`` draws the schedules' jitter (``jitter`` the fraction);
    once ``stop()`` is true a round attempts nothing more (see `abort`).
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
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.ledger = ledger
        sinks: list[tuple[HookConfig, Sink]] = []
        try:
            for hook, secrets, where in _configure(hooks, env):
                sink = sink_factory(hook, secrets) if sink_factory is not None else None
                if sink is None:
                    sink = _default_sink(hook, secrets, where)
                if not isinstance(sink, Sink):
                    raise ConfigurationError(f"{where}: the sink factory gave {sink!r}, no Sink")
                sinks.append((hook, sink))
        except BaseException:
            for _, built in sinks:
                _close(built)
            raise
        self._logic = DispatchLogic(
            ledger.dialect, sinks, clock=clock or system_clock, rng=rng, jitter=jitter,
            grace_s=grace_s, lease_margin_s=lease_margin_s, owner=owner,
            stop=stop or (lambda: False),
        )  # fmt: skip

    def abort(self) -> None:
        """End the attempts in flight now, where a sink can (webhooks: `WebhookSink.abort`).
        With ``stop()`` true, an attempt cut short this way is not counted: its message is
        handed back, due at once, for the next dispatcher."""
        for delivery in self._logic.deliveries.values():
            abort = getattr(delivery.sink, "abort", None)
            if callable(abort):
                abort()

    def run_once(self, max_messages: int = 100) -> int:
        """Close the buckets that are due, then make one attempt at each of up to
        ``max_messages`` due messages; returns how many messages were attempted (or finished:
        a disabled sink's messages are dead-lettered without one)."""
        return drive(self._logic.round_flow(max_messages), self._handle)

    def next_due_us(self) -> int | None:
        """When the soonest message is due or bucket closes (Unix us, the clock's), None when
        nothing is pending."""
        return self.ledger.transact(self._logic.next_due().make)

    def _handle(self, request: Request[Sink]) -> Any:
        if isinstance(request, Send):
            return request.sink.send(request.message, timeout=request.timeout)
        return self.ledger.transact(request.make)

    def close(self) -> None:
        """Release the sinks' connections (the ledger is the caller's to close)."""
        for delivery in self._logic.deliveries.values():
            _close(delivery.sink)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDispatcher(_Faces[AsyncSink]):
    """`Dispatcher` for asyncio, on an `AsyncLedger`: the same arguments and the same logic,
    every ledger call and every attempt awaited. ``threads`` bounds the sync sinks (webhooks,
    plain callables) running in worker threads at once."""

    def __init__(
        self,
        ledger: AsyncLedger,
        hooks: Sequence[HookConfig],
        *,
        clock: Callable[[], int] | None = None,
        env: Mapping[str, str] = os.environ,
        sink_factory: AsyncSinkFactory | None = None,
        rng: Callable[[], float] = random.random,
        jitter: float = 0.1,
        grace_s: float = 5.0,
        lease_margin_s: float = 30.0,
        owner: str | None = None,
        threads: int = 4,
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigurationError(f"threads: {threads!r}; expected an int >= 1")
        self.ledger = ledger
        semaphore = asyncio.Semaphore(threads)
        sinks: list[tuple[HookConfig, AsyncSink]] = []
        for hook, secrets, where in _configure(hooks, env):
            given = sink_factory(hook, secrets) if sink_factory is not None else None
            if given is None:
                sink = _default_async_sink(hook, secrets, where, semaphore)
            else:
                try:
                    sink = as_async_sink(given, semaphore=semaphore)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"{where}: the sink factory gave {exc}") from None
            sinks.append((hook, sink))
        self._logic = DispatchLogic(
            ledger.dialect, sinks, clock=clock or system_clock, rng=rng, jitter=jitter,
            grace_s=grace_s, lease_margin_s=lease_margin_s, owner=owner,
        )  # fmt: skip

    async def run_once(self, max_messages: int = 100) -> int:
        """See `Dispatcher.run_once`."""
        return await adrive(self._logic.round_flow(max_messages), self._handle)

    async def next_due_us(self) -> int | None:
        """See `Dispatcher.next_due_us`."""
        return await self.ledger.transact(self._logic.next_due().make)

    async def serve(
        self, stop: asyncio.Event, *, max_messages: int = 100, idle_s: float = 1.0
    ) -> None:
        """Round after round until ``stop`` is set: a full round goes again at once, else it
        waits until the soonest message is due, ``idle_s`` at most (so messages enqueued
        meanwhile, by this process or another, are found within that)."""
        if not (isinstance(idle_s, (int, float)) and 0 < idle_s < float("inf")):
            raise ConfigurationError(f"idle_s: {idle_s!r}; expected seconds > 0")
        while not stop.is_set():
            if await self.run_once(max_messages) >= max_messages:
                continue
            due_us = await self.next_due_us()
            wait = idle_s
            if due_us is not None:
                wait = min(idle_s, max(0.0, (due_us - self._logic.clock_us()) / 1_000_000))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _handle(self, request: Request[AsyncSink]) -> Any:
        if isinstance(request, Send):
            return await request.sink.send(request.message, timeout=request.timeout)
        return await self.ledger.transact(request.make)

    async def aclose(self) -> None:
        """Release the sinks' connections (the ledger is the caller's to close)."""
        for delivery in self._logic.deliveries.values():
            await close_sink(delivery.sink)

    async def __aenter__(self) -> AsyncDispatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _close(sink: object) -> None:
    close = getattr(sink, "close", None)
    if callable(close):
        close()
