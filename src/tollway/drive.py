"""Drive a generator-written piece of logic with a sync or an async face.

The logic (a Redis store operation, an API key's, a ledger connection's, a delivery, a
dispatcher's round) is a generator that yields requests for I/O and
receives the answers: written once, with no I/O of its own (httpx's ``auth_flow`` is the
model). `drive` answers each request with ``handle(request)``, `adrive` with ``await
handle(request)``. An exception out of ``handle`` is thrown into the generator at the
``yield``, so the logic decides what a failed call means (a sink that raised is one failed
attempt); uncaught there, it propagates. ``catch=BaseException`` throws in a cancellation or
an interrupt too (a flow that must release a connection whatever happens).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["adrive", "drive"]

R = TypeVar("R")
T = TypeVar("T")


def drive(
    flow: Generator[R, Any, T],
    handle: Callable[[R], Any],
    catch: type[BaseException] = Exception,
) -> T:
    try:
        request = next(flow)
        while True:
            try:
                answer = handle(request)
            except catch as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def adrive(
    flow: Generator[R, Any, T],
    handle: Callable[[R], Awaitable[Any]],
    catch: type[BaseException] = Exception,
) -> T:
    try:
        request = next(flow)
        while True:
            try:
                answer = await handle(request)
            except catch as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result
