"""The two drivers of a generator flow (httpx's ``auth_flow`` pattern): the logic of an
operation is a generator that yields requests and is sent their answers; `drive` answers
them with a plain function, `adrive` awaits a coroutine function. Nothing else differs
between a sync and an async face."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

_R = TypeVar("_R")
_T = TypeVar("_T")


def drive(flow: Generator[_R, Any, _T], answer: Callable[[_R], Any]) -> _T:
    """Run ``flow`` to its end, answering each request with ``answer(request)``."""
    try:
        request = next(flow)
        while True:
            request = flow.send(answer(request))
    except StopIteration as done:
        result: _T = done.value
        return result


async def adrive(flow: Generator[_R, Any, _T], answer: Callable[[_R], Awaitable[Any]]) -> _T:
    """`drive`, awaiting each answer."""
    try:
        request = next(flow)
        while True:
            request = flow.send(await answer(request))
    except StopIteration as done:
        result: _T = done.value
        return result
