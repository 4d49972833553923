"""The hook outbox operations of a ledger (`HookStore`, `AsyncHookStore`).

Each operation is written once, as a flow of `tollway.metering.ledger.outbox` taking the SQL
dialect first; `_sync` and `_async` turn it into a method of the sync and the async face (the
flow's own signature and docstring, minus the dialect) that runs it in one transaction of the
backend. The dispatchers (`tollway.metering.hooks`) and ``tollway hooks`` use them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, ParamSpec

from tollway.metering.ledger.faces import described
from tollway.metering.ledger.flows import Flow, T
from tollway.metering.ledger.outbox import (
    Dialect,
    close_buckets_flow,
    lease_flow,
    list_flow,
    next_due_flow,
    prune_flow,
    replay_flow,
    retry_flow,
    save_flow,
)

if TYPE_CHECKING:  # it imports the ledger package, which imports this module
    from tollway.metering.hookevents import OutboxMessage

__all__ = ["AsyncHookStore", "BucketBuilder", "HookStore"]

P = ParamSpec("P")
BucketBuilder = Callable[[str, dict[str, Any]], "OutboxMessage"]
"""``(message_id, bucket row) -> message``: how a closed bucket of one hook is sent."""


def _sync(
    flow: Callable[Concatenate[Dialect, P], Flow[T]],
) -> Callable[Concatenate[HookStore, P], T]:
    def method(self: HookStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.transact(lambda: flow(self.dialect, *args, **kwargs))

    return described(method, flow)


def _async(
    flow: Callable[Concatenate[Dialect, P], Flow[T]],
) -> Callable[Concatenate[AsyncHookStore, P], Awaitable[T]]:
    async def method(self: AsyncHookStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.transact(lambda: flow(self.dialect, *args, **kwargs))

    return described(method, flow)


class HookStore:
    """The hook outbox of a sync ledger."""

    _dialect: ClassVar[Dialect]

    @property
    def dialect(self) -> Dialect:
        """The SQL dialect its flows are written for (``sqlite``, ``postgres``)."""
        return self._dialect

    def transact(self, make: Callable[[], Flow[T]]) -> T:
        """Run the flow ``make()`` (`tollway.metering.ledger.flows`) in one transaction: the
        interface metering's parts (the hook dispatcher) build on. ``make`` may be called
        again when a dead connection is replaced before the flow ran."""
        return self._transact(make)

    @abstractmethod
    def _transact(self, make: Callable[[], Flow[T]]) -> T: ...

    hook_messages = _sync(list_flow)
    lease_hook_messages = _sync(lease_flow)
    save_hook_message = _sync(save_flow)
    close_hook_buckets = _sync(close_buckets_flow)
    next_hook_due_us = _sync(next_due_flow)
    retry_hook_messages = _sync(retry_flow)
    replay_hook_messages = _sync(replay_flow)
    prune_hook_messages = _sync(prune_flow)


class AsyncHookStore:
    """`HookStore`, awaited: the same flows, each in one transaction of the async backend."""

    _dialect: ClassVar[Dialect]

    @property
    def dialect(self) -> Dialect:
        """See `HookStore.dialect`."""
        return self._dialect

    async def transact(self, make: Callable[[], Flow[T]]) -> T:
        """See `HookStore.transact`."""
        return await self._transact(make)

    @abstractmethod
    async def _transact(self, make: Callable[[], Flow[T]]) -> T: ...

    hook_messages = _async(list_flow)
    lease_hook_messages = _async(lease_flow)
    save_hook_message = _async(save_flow)
    close_hook_buckets = _async(close_buckets_flow)
    next_hook_due_us = _async(next_due_flow)
    retry_hook_messages = _async(retry_flow)
    replay_hook_messages = _async(replay_flow)
    prune_hook_messages = _async(prune_flow)
