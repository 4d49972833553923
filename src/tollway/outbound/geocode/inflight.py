"""In-flight de-duplication ("single flight") within one process.

When several threads (`SingleFlight`) or asyncio tasks (`AsyncSingleFlight`) ask for the same
key at once, only the first (the *leader*) runs the function; the others wait and get its
result, or the exception it raised (the same exception object, with the leader's traceback).
Once the call has finished the key is forgotten: the next call runs again. Remembering answers
is the cache's job, not this module's.

Rule for failures, the same in both classes:

- the leader's function raises an `Exception`: every waiter gets it.
- the leader is interrupted by anything else (`asyncio.CancelledError` when the leading task
  is cancelled, `KeyboardInterrupt`, `SystemExit`): the interruption belongs to the leader
  alone. The waiters do not see it, and they do not hang: they re-run, one of them becomes
  the new leader and the rest wait for it. A waiter that is cancelled itself only stops its
  own wait; the leader and the other waiters carry on.

Calling ``do`` again for the key being run, from inside the function itself, would wait for
itself forever; it raises `ReentrantCallError` instead.

An `AsyncSingleFlight` serves tasks of one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from tollway.errors import ReentrantCallError

__all__ = ["AsyncSingleFlight", "ReentrantCallError", "SingleFlight"]

T = TypeVar("T")
E = TypeVar("E", threading.Event, asyncio.Event)

# States of one call.
_PENDING = "pending"
_OK = "ok"
_FAILED = "failed"
_ABANDONED = "abandoned"  # the leader was interrupted: waiters re-run

_RETRY: Any = object()  # returned by `_collect` when the waiter must join again


class _Call(Generic[E]):
    """One run of the function for one key: its outcome and the event its waiters wait on."""

    __slots__ = ("done", "error", "owner", "state", "traceback", "value", "waiters")

    def __init__(self, owner: object, done: E) -> None:
        self.owner = owner  # the leader's thread or task, to catch re-entrant calls
        self.done: E = done
        self.state = _PENDING
        self.value: Any = None
        self.error: BaseException | None = None
        self.traceback: TracebackType | None = None
        self.waiters = 0


class _Flights(Generic[E]):
    """The bookkeeping both classes share: which key has a call in flight, and the counters.

    A `threading.Lock` guards it in both classes: it is held for a few dictionary operations
    only, never across a wait, so it cannot block an event loop for long.
    """

    def __init__(self, new_event: Callable[[], E]) -> None:
        self._new_event: Callable[[], E] = new_event
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call[E]] = {}
        self._runs = 0
        self._shared = 0

    @property
    def runs(self) -> int:
        """How many times a function was actually run (one per leader)."""
        return self._runs

    @property
    def shared(self) -> int:
        """How many calls got another call's outcome (result or exception) instead of running."""
        return self._shared

    @property
    def in_flight(self) -> int:
        """How many keys have a call running now."""
        with self._lock:
            return len(self._calls)

    def waiting(self, key: Hashable) -> int:
        """How many callers are waiting now for the call running for ``key``."""
        with self._lock:
            call = self._calls.get(key)
            return call.waiters if call is not None else 0

    def _join(self, key: Hashable, owner: object) -> tuple[_Call[E], bool]:
        """The call in flight for ``key`` and False, or a new one led by ``owner`` and True."""
        with self._lock:
            call = self._calls.get(key)
            if call is None:
                call = _Call(owner, self._new_event())
                self._calls[key] = call
                self._runs += 1
                return call, True
            if owner is not None and call.owner is owner:
                raise ReentrantCallError(
                    f"key {key!r} was asked for again from inside its own call; "
                    "it would wait for itself forever"
                )
            call.waiters += 1
            return call, False

    def _leave(self, call: _Call[E]) -> None:
        with self._lock:
            call.waiters -= 1

    def _settle(
        self, key: Hashable, call: _Call[E], state: str, value: Any = None, error: Any = None
    ) -> None:
        """Record the outcome, forget the key, wake the waiters (the caller signals ``done``)."""
        with self._lock:
            call.state = state
            call.value = value
            call.error = error
            call.traceback = error.__traceback__ if error is not None else None
            # Forgotten before the waiters wake: a caller arriving from now on runs again.
            if self._calls.get(key) is call:
                del self._calls[key]

    def _lead_failed(self, key: Hashable, call: _Call[E], exc: BaseException) -> None:
        if isinstance(exc, Exception):
            self._settle(key, call, _FAILED, error=exc)
        else:  # CancelledError, KeyboardInterrupt, SystemExit: the leader's own business
            self._settle(key, call, _ABANDONED)

    @contextlib.contextmanager
    def _leading(self, key: Hashable, call: _Call[E]) -> Iterator[_Call[E]]:
        """Around the leader's run of the function: its outcome settles the call (the face
        sets ``call.value``), and the waiters wake whatever happens."""
        try:
            yield call
        except BaseException as exc:
            self._lead_failed(key, call, exc)
            raise
        else:
            self._settle(key, call, _OK, call.value)
        finally:
            call.done.set()

    @contextlib.contextmanager
    def _waiting(self, call: _Call[E]) -> Iterator[None]:
        """Around a waiter's wait: it stops counting as a waiter however the wait ends."""
        try:
            yield
        finally:
            self._leave(call)

    def _collect(self, call: _Call[E]) -> Any:
        """A waiter's answer once ``call`` is done: its value, its exception, or `_RETRY`."""
        if call.state == _ABANDONED:
            return _RETRY
        with self._lock:
            self._shared += 1
        if call.state == _FAILED:
            assert call.error is not None
            raise call.error.with_traceback(call.traceback)
        return call.value


class SingleFlight(_Flights[threading.Event]):
    """Single flight for threads: ``do(key, fn)`` runs ``fn`` once per key at a time."""

    def __init__(self) -> None:
        super().__init__(threading.Event)

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        """``fn()``, or the outcome of the ``fn`` already running for ``key``."""
        me = threading.current_thread()
        while True:
            call, leader = self._join(key, me)
            if leader:
                with self._leading(key, call):
                    call.value = fn()
                return call.value  # type: ignore[no-any-return]
            with self._waiting(call):
                call.done.wait()
            outcome = self._collect(call)
            if outcome is not _RETRY:
                return outcome  # type: ignore[no-any-return]


class AsyncSingleFlight(_Flights[asyncio.Event]):
    """Single flight for asyncio tasks: ``await do(key, coro_fn)`` awaits ``coro_fn()`` once."""

    def __init__(self) -> None:
        super().__init__(asyncio.Event)

    async def do(self, key: Hashable, coro_fn: Callable[[], Awaitable[T]]) -> T:
        """``await coro_fn()``, or the outcome of the one already running for ``key``.

        Cancelling the leading task cancels its ``coro_fn``; the waiters then re-run it (see
        the module's docstring).
        """
        me = asyncio.current_task()
        while True:
            call, leader = self._join(key, me)
            if leader:
                with self._leading(key, call):
                    call.value = await coro_fn()
                return call.value  # type: ignore[no-any-return]
            # Event.wait, unlike awaiting a shared future, can be cancelled for this waiter
            # alone.
            with self._waiting(call):
                await call.done.wait()
            outcome = self._collect(call)
            if outcome is not _RETRY:
                return outcome  # type: ignore[no-any-return]
