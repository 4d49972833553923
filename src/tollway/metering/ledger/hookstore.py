"""The hook outbox operations of a ledger (`HookStore`, `AsyncHookStore`): thin faces over the
flows of `tollway.metering.ledger.outbox`, each run in one transaction by the backend's
``_transact``. The dispatcher (`tollway.metering.hooks`) and ``tollway hooks`` use them."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from tollway.metering.delivery import Attempt, DeliveryStatus
from tollway.metering.ledger.flows import Flow, T
from tollway.metering.ledger.outbox import (
    Dialect,
    HookMessage,
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

BucketBuilder = Callable[[str, dict[str, Any]], "OutboxMessage"]
"""``(message_id, bucket row) -> message``: how a closed bucket of one hook is sent."""


class HookStore:
    _dialect: ClassVar[Dialect]

    @abstractmethod
    def _transact(self, make: Callable[[], Flow[T]]) -> T: ...

    def hook_messages(
        self,
        *,
        hook: str | None = None,
        status: DeliveryStatus | None = None,
        ids: Sequence[str] = (),
        limit: int = 1000,
    ) -> list[HookMessage]:
        """Stored hook messages, oldest first, filtered by hook, status and ids."""
        return self._transact(
            lambda: list_flow(self._dialect, hook=hook, status=status, ids=ids, limit=limit)
        )

    def lease_hook_messages(
        self, hooks: Sequence[str], *, now_us: int, until_us: int, owner: str, limit: int
    ) -> list[HookMessage]:
        """Take up to ``limit`` due messages of ``hooks`` for ``owner`` until ``until_us``."""
        return self._transact(
            lambda: lease_flow(
                self._dialect, hooks, now_us=now_us, until_us=until_us, owner=owner, limit=limit
            )
        )

    def save_hook_message(
        self,
        message: HookMessage,
        *,
        owner: str,
        status: DeliveryStatus,
        dead_reason: str | None,
        attempts: Sequence[Attempt],
        next_at_us: int,
        now_us: int,
    ) -> None:
        self._transact(
            lambda: save_flow(
                self._dialect,
                message,
                owner=owner,
                status=status,
                dead_reason=dead_reason,
                attempts=attempts,
                next_at_us=next_at_us,
                now_us=now_us,
            )
        )

    def close_hook_buckets(
        self, builders: dict[str, BucketBuilder], *, cutoff_us: int, now_us: int
    ) -> int:
        """Enqueue one message per bucket of ``builders``' hooks closed by ``cutoff_us``."""
        return self._transact(
            lambda: close_buckets_flow(self._dialect, builders, cutoff_us=cutoff_us, now_us=now_us)
        )

    def next_hook_due_us(self, hooks: Sequence[str], *, grace_us: int = 0) -> int | None:
        return self._transact(lambda: next_due_flow(self._dialect, hooks, grace_us))

    def retry_hook_messages(
        self,
        now_us: int,
        *,
        hook: str | None = None,
        ids: Sequence[str] = (),
        all_dead: bool = False,
    ) -> list[HookMessage]:
        """See `tollway.metering.ledger.outbox.retry_flow`; returns the messages made due."""
        return self._transact(
            lambda: retry_flow(self._dialect, now_us, hook=hook, ids=ids, all_dead=all_dead)
        )

    def replay_hook_messages(
        self,
        now_us: int,
        *,
        hook: str | None = None,
        ids: Sequence[str] = (),
        dead: bool = False,
    ) -> list[HookMessage]:
        """See `tollway.metering.ledger.outbox.replay_flow`; returns the messages replayed."""
        return self._transact(
            lambda: replay_flow(self._dialect, now_us, hook=hook, ids=ids, dead=dead)
        )

    def prune_hook_messages(
        self, before_us: int, *, hook: str | None = None, dead: bool = False
    ) -> int:
        """See `tollway.metering.ledger.outbox.prune_flow`; how many messages were deleted."""
        return self._transact(lambda: prune_flow(self._dialect, before_us, hook=hook, dead=dead))


class AsyncHookStore:
    """`HookStore`, awaited (the same flows)."""

    _dialect: ClassVar[Dialect]

    @abstractmethod
    async def _transact(self, make: Callable[[], Flow[T]]) -> T: ...

    async def hook_messages(
        self,
        *,
        hook: str | None = None,
        status: DeliveryStatus | None = None,
        ids: Sequence[str] = (),
        limit: int = 1000,
    ) -> list[HookMessage]:
        return await self._transact(
            lambda: list_flow(self._dialect, hook=hook, status=status, ids=ids, limit=limit)
        )

    async def retry_hook_messages(
        self,
        now_us: int,
        *,
        hook: str | None = None,
        ids: Sequence[str] = (),
        all_dead: bool = False,
    ) -> list[HookMessage]:
        return await self._transact(
            lambda: retry_flow(self._dialect, now_us, hook=hook, ids=ids, all_dead=all_dead)
        )

    async def replay_hook_messages(
        self,
        now_us: int,
        *,
        hook: str | None = None,
        ids: Sequence[str] = (),
        dead: bool = False,
    ) -> list[HookMessage]:
        return await self._transact(
            lambda: replay_flow(self._dialect, now_us, hook=hook, ids=ids, dead=dead)
        )

    async def prune_hook_messages(
        self, before_us: int, *, hook: str | None = None, dead: bool = False
    ) -> int:
        return await self._transact(
            lambda: prune_flow(self._dialect, before_us, hook=hook, dead=dead)
        )
