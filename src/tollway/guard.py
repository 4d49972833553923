"""Limits for background work: a decorator for functions and context managers for blocks.

```python
@limited(tw, "enrich", subject=lambda account, *a, **k: account, max_wait=2.0)
def enrich(account: str, rows: list[Row]) -> None: ...

async with guard(atw, "acct_42", "export", max_wait=5.0) as decision:
    await run_export()
```

Each call (or block) acquires first. When the step is denied, it either raises `LimitExceeded`
carrying the decision, or, when ``max_wait`` allows it, waits the decision's ``retry_after``
and tries again, as long as the total wait stays within ``max_wait``. A decision that can never
pass (``retry_after is None``: the cost exceeds a limit outright) is raised at once.

One pure helper, `_Admission`, decides "go", "wait X seconds" or "raise"; the sync and async
drivers only acquire and sleep as it says.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any, ParamSpec, TypeVar, overload

from tollway.client import AsyncTollway, Tollway
from tollway.engine.decision import Decision
from tollway.errors import ConfigurationError, InvalidArgumentError, LimitExceeded

P = ParamSpec("P")
R = TypeVar("R")

Sleep = Callable[[float], object]
"""Waits the given seconds. With the async helpers, an awaitable it returns is awaited."""
Subject = str | Callable[..., str]
Cost = int | Callable[..., int] | None

# A denial whose wait rounds to nothing (a fail-closed limit with no cooldown) still waits this
# long, so the total wait grows with every try and ``max_wait`` always ends the retries.
_MIN_WAIT = 0.001
# Retry-after figures come from whole microseconds; sums of them may round past max_wait.
_SLACK = 1e-6


class _Admission:
    """The retry policy of one call: given each decision, go, wait, or raise. No I/O."""

    __slots__ = ("max_wait", "waited")

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        self.waited = 0.0

    def after(self, decision: Decision) -> float | None:
        """``None`` when the decision lets the call go; otherwise the seconds to wait before
        the next try. Raises `LimitExceeded` when waiting cannot help or would exceed
        ``max_wait`` in total."""
        if decision.allowed:
            return None
        retry = decision.retry_after
        if retry is None or self.max_wait <= 0:
            raise LimitExceeded(decision)
        delay = max(retry, _MIN_WAIT)
        if self.waited + delay > self.max_wait + _SLACK:
            raise LimitExceeded(decision)
        self.waited += delay
        return delay


def _admit(acquire: Callable[[], Decision], max_wait: float, sleep: Sleep | None) -> Decision:
    admission = _Admission(max_wait)
    wait = time.sleep if sleep is None else sleep
    while (delay := admission.after(decision := acquire())) is not None:
        wait(delay)
    return decision


async def _admit_async(
    acquire: Callable[[], Awaitable[Decision]], max_wait: float, sleep: Sleep | None
) -> Decision:
    admission = _Admission(max_wait)
    wait = asyncio.sleep if sleep is None else sleep
    while (delay := admission.after(decision := await acquire())) is not None:
        waiting = wait(delay)
        if inspect.isawaitable(waiting):
            await waiting
    return decision


def _check_max_wait(max_wait: float) -> float:
    if (
        isinstance(max_wait, bool)
        or not isinstance(max_wait, (int, float))
        or not math.isfinite(max_wait)
        or max_wait < 0
    ):
        raise InvalidArgumentError(
            f"max_wait: {max_wait!r} is not a wait; expected a finite number of seconds >= 0"
        )
    return float(max_wait)


def _wrong_face(tw: object, expected: str, what: str) -> ConfigurationError:
    article = "an" if expected[0] in "AEIOU" else "a"
    return ConfigurationError(f"{what} needs {article} {expected}; got {type(tw).__name__}")


def _resolve(
    subject: Subject, cost: Cost, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, int | None]:
    """The subject and cost of one call: callables see the call's arguments."""
    who = subject(*args, **kwargs) if callable(subject) else subject
    units = cost(*args, **kwargs) if callable(cost) else cost
    return who, units


@overload
def limited(
    tw: Tollway,
    operation: str,
    *,
    subject: Subject,
    cost: Cost = None,
    max_wait: float = 0.0,
    sleep: Sleep | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


@overload
def limited(
    tw: AsyncTollway,
    operation: str,
    *,
    subject: Subject,
    cost: Cost = None,
    max_wait: float = 0.0,
    sleep: Sleep | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]: ...


def limited(
    tw: Tollway | AsyncTollway,
    operation: str,
    *,
    subject: Subject,
    cost: Cost = None,
    max_wait: float = 0.0,
    sleep: Sleep | None = None,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]:
    """Apply ``operation``'s limits to every call of the decorated function.

    Sync functions take a `Tollway`, coroutine functions an `AsyncTollway`; anything else is a
    `ConfigurationError` when decorating. ``subject`` and ``cost`` may be callables that receive
    the call's arguments. A denied call raises `LimitExceeded`, or waits (``sleep``; default
    `time.sleep` / `asyncio.sleep`) up to ``max_wait`` seconds in total for capacity.
    """
    wait_limit = _check_max_wait(max_wait)
    if not isinstance(tw, (Tollway, AsyncTollway)):
        raise _wrong_face(tw, "Tollway or an AsyncTollway", "limited")

    def decorate(func: Callable[P, Any]) -> Callable[P, Any]:
        name = getattr(func, "__qualname__", repr(func))
        if inspect.iscoroutinefunction(func):
            if not isinstance(tw, AsyncTollway):
                raise _wrong_face(tw, "AsyncTollway", f"async function {name}")
            atw = tw

            @functools.wraps(func)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                who, units = _resolve(subject, cost, args, kwargs)
                await _admit_async(lambda: atw.acquire(who, operation, units), wait_limit, sleep)
                return await func(*args, **kwargs)

            return run_async

        if not isinstance(tw, Tollway):
            raise _wrong_face(tw, "Tollway", f"function {name}")
        stw = tw

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            who, units = _resolve(subject, cost, args, kwargs)
            _admit(lambda: stw.acquire(who, operation, units), wait_limit, sleep)
            return func(*args, **kwargs)

        return run

    return decorate


def guard(
    atw: AsyncTollway,
    subject: str,
    operation: str,
    cost: int | None = None,
    max_wait: float = 0.0,
    sleep: Sleep | None = None,
) -> AbstractAsyncContextManager[Decision]:
    """``async with guard(atw, subject, operation) as decision:`` runs the block only once the
    step is allowed; raises `LimitExceeded`, or waits up to ``max_wait`` seconds for capacity."""
    if not isinstance(atw, AsyncTollway):
        raise _wrong_face(atw, "AsyncTollway", "guard")
    wait_limit = _check_max_wait(max_wait)

    @asynccontextmanager
    async def block() -> AsyncIterator[Decision]:
        yield await _admit_async(lambda: atw.acquire(subject, operation, cost), wait_limit, sleep)

    return block()


def guard_sync(
    tw: Tollway,
    subject: str,
    operation: str,
    cost: int | None = None,
    max_wait: float = 0.0,
    sleep: Sleep | None = None,
) -> AbstractContextManager[Decision]:
    """``with guard_sync(tw, subject, operation) as decision:``, the synchronous `guard`."""
    if not isinstance(tw, Tollway):
        raise _wrong_face(tw, "Tollway", "guard_sync")
    wait_limit = _check_max_wait(max_wait)

    @contextmanager
    def block() -> Iterator[Decision]:
        yield _admit(lambda: tw.acquire(subject, operation, cost), wait_limit, sleep)

    return block()


__all__ = ["guard", "guard_sync", "limited"]
