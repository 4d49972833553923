"""Sinks for asyncio: the `AsyncSink` protocol, `ThreadedSink` (any sync `Sink` run in a worker
thread, a bounded number at a time), `AsyncCallableSink` (a coroutine function) and
`AsyncRedisStreamSink` (XADD through ``redis.asyncio``).

Webhooks go through `ThreadedSink` around the same `WebhookSink`: one implementation of the
signing, the 410 handling and the timeouts, and no HTTP client added to tollway's dependencies;
the bound (``limit`` threads at once, 4 by default) keeps a burst of deliveries from taking
every thread of the event loop's default executor.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from tollway.errors import ConfigurationError
from tollway.metering.sinks import Message, SendResult, Sink, StreamSinkBase, exception_text

__all__ = [
    "AsyncCallableSink",
    "AsyncRedisStreamSink",
    "AsyncSink",
    "ThreadedSink",
    "as_async_sink",
    "close_sink",
]


@runtime_checkable
class AsyncSink(Protocol):
    """`tollway.metering.sinks.Sink`, with ``send`` a coroutine function."""

    @property
    def target(self) -> str: ...

    @property
    def disabled(self) -> bool: ...

    async def send(self, message: Message, *, timeout: float) -> SendResult: ...


class ThreadedSink:
    """Run a sync ``sink``'s ``send`` in a worker thread, at most ``limit`` at once (across
    every `ThreadedSink` given the same ``semaphore``)."""

    def __init__(
        self, sink: Sink, *, limit: int = 4, semaphore: asyncio.Semaphore | None = None
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit: {limit!r}; expected an int >= 1")
        self.sink = sink
        self._semaphore = semaphore or asyncio.Semaphore(limit)

    @property
    def target(self) -> str:
        return self.sink.target

    @property
    def disabled(self) -> bool:
        return self.sink.disabled

    def __repr__(self) -> str:
        return f"ThreadedSink({self.sink!r})"

    async def send(self, message: Message, *, timeout: float) -> SendResult:
        async with self._semaphore:
            return await asyncio.to_thread(self.sink.send, message, timeout=timeout)

    async def aclose(self) -> None:
        close = getattr(self.sink, "close", None)
        if callable(close):
            await asyncio.to_thread(close)


class AsyncCallableSink:
    """Await ``fn(message)`` for each message; its value is ignored, an exception is a failure
    retried on the schedule, and so is running past the attempt's ``timeout`` (the call is
    cancelled)."""

    def __init__(
        self, fn: Callable[[Message], Awaitable[object]], *, name: str | None = None
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(f"fn: {fn!r} is not a coroutine function")
        self._fn = fn
        self._name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self.disabled = False

    @property
    def target(self) -> str:
        return f"callable:{self._name}"

    def __repr__(self) -> str:
        return f"AsyncCallableSink({self._name})"

    async def send(self, message: Message, *, timeout: float) -> SendResult:
        try:
            await asyncio.wait_for(self._fn(message), timeout)
        except asyncio.TimeoutError:
            return SendResult.failed(f"timed out after {timeout:g} s")
        except Exception as exc:
            return SendResult.failed(exception_text(exc))
        return SendResult.delivered()


class AsyncRedisStreamSink(StreamSinkBase):
    """`tollway.metering.sinks.RedisStreamSink` on a ``redis.asyncio`` client: the same fields,
    the same bound on the stream's length."""

    _redis_module = "redis.asyncio"

    async def send(self, message: Message, *, timeout: float) -> SendResult:
        try:
            await self._xadd(message)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ResponseError...
            return SendResult.failed(exception_text(exc))
        return SendResult.delivered()

    async def aclose(self) -> None:
        await close_sink(self._client)  # redis-py >= 5.0.1 has aclose, older ones close


def as_async_sink(sink: Any, *, semaphore: asyncio.Semaphore | None = None) -> AsyncSink:
    """``sink`` itself when its ``send`` is a coroutine function, else a `ThreadedSink` of it
    (sharing ``semaphore``). Raises `ConfigurationError` for something that is no sink."""
    if isinstance(sink, AsyncSink) and inspect.iscoroutinefunction(sink.send):
        return sink
    if isinstance(sink, Sink):
        return ThreadedSink(sink, semaphore=semaphore)
    raise ConfigurationError(
        f"sink: {sink!r}; expected a Sink or an AsyncSink (target, disabled, send(message, "
        "timeout=))"
    )


async def close_sink(sink: object) -> None:
    """Release what a sink holds: ``await aclose()``, else ``close()``."""
    aclose = getattr(sink, "aclose", None)
    if callable(aclose):
        await aclose()
        return
    close = getattr(sink, "close", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result):
            await result
