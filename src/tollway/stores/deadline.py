"""Bounded store calls for asyncio without a timer per call.

redis.asyncio enforces ``socket_timeout`` by wrapping every read in an asyncio timeout, which
costs about a quarter of the throughput of a busy event loop. `Deadlines` keeps one watchdog
task per store instead: each call registers its task and start time, and the watchdog, waking
every half timeout, cancels the calls that have run past the timeout. A call is so bounded by
1.5 timeouts, and a healthy call pays two dict operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from tollway.errors import StoreUnavailableError

_T = TypeVar("_T")


class Deadlines:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._calls: dict[int, tuple[float, asyncio.Task[Any]]] = {}
        self._expired: set[int] = set()
        self._ids = itertools.count()
        self._watchdog: asyncio.Task[None] | None = None

    def enter(self) -> int:
        """Register the current task's store call; pass the token to `leave` when it ends."""
        task = asyncio.current_task()
        assert task is not None
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        token = next(self._ids)
        self._calls[token] = (time.monotonic(), task)
        return token

    def leave(self, token: int) -> bool:
        """End the call; True when the watchdog cancelled it for running past the timeout
        (the caller then turns its `CancelledError` into `StoreUnavailableError`)."""
        del self._calls[token]
        if token not in self._expired:
            return False
        self._expired.discard(token)
        task = asyncio.current_task()
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: undo our cancel() only
        if uncancel is not None:
            uncancel()
        return True

    def expired(self) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"the store did not answer within {self.timeout_s * 1000:.0f} ms"
        )

    async def run(self, call: Awaitable[_T]) -> _T:
        """Await ``call``; raise `StoreUnavailableError` if it runs past the timeout."""
        token = self.enter()
        try:
            result = await call
        except asyncio.CancelledError:
            if self.leave(token):
                raise self.expired() from None
            raise
        except BaseException:
            self.leave(token)
            raise
        self.leave(token)
        return result

    async def _watch(self) -> None:
        period = self.timeout_s / 2
        while self._calls:
            await asyncio.sleep(period)
            limit = time.monotonic() - self.timeout_s
            for token, (started, task) in list(self._calls.items()):
                if started < limit and token not in self._expired:
                    self._expired.add(token)
                    task.cancel()

    async def close(self) -> None:
        if self._watchdog is not None and not self._watchdog.done():
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
