"""Stores: where counters live. ``memory://`` (embedded) and ``redis://``, ``rediss://``,
``redis+cluster://`` (shared by every process). The one place that does I/O for counters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tollway.clock import US
from tollway.engine.credits import CreditsOp, CreditsReply
from tollway.engine.health import HealthOp, HealthReply
from tollway.engine.replies import Reply
from tollway.engine.settle import SettleStep
from tollway.engine.step import Step
from tollway.errors import ConfigurationError
from tollway.policy.model import Policy
from tollway.stores.memory import MemoryStore


@runtime_checkable
class SyncStore(Protocol):
    url: str

    def execute(self, step: Step) -> Reply: ...
    def health(self, op: HealthOp) -> HealthReply: ...
    def credits(self, op: CreditsOp) -> CreditsReply: ...
    def settle(self, settle: SettleStep) -> Reply: ...
    def assign(self, subject: str, plan: str | None) -> None: ...
    def assigned(self, subject: str) -> str | None: ...
    def delete(self, subject: str, keys: list[str]) -> int: ...
    def append(self, subject: str, entry: dict[str, str]) -> None: ...
    def new_hold_id(self) -> str: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class AsyncStore(Protocol):
    url: str

    async def execute(self, step: Step) -> Reply: ...
    async def health(self, op: HealthOp) -> HealthReply: ...
    async def credits(self, op: CreditsOp) -> CreditsReply: ...
    async def settle(self, settle: SettleStep) -> Reply: ...
    async def assign(self, subject: str, plan: str | None) -> None: ...
    async def assigned(self, subject: str) -> str | None: ...
    async def delete(self, subject: str, keys: list[str]) -> int: ...
    async def append(self, subject: str, entry: dict[str, str]) -> None: ...
    def new_hold_id(self) -> str: ...
    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...


class AsyncMemoryStore:
    """The memory store behind an async face: a step never blocks, so no thread is needed."""

    url = "memory://"

    def __init__(self, store: MemoryStore) -> None:
        self.sync = store

    async def execute(self, step: Step) -> Reply:
        return self.sync.execute(step)

    async def health(self, op: HealthOp) -> HealthReply:
        return self.sync.health(op)

    async def credits(self, op: CreditsOp) -> CreditsReply:
        return self.sync.credits(op)

    async def settle(self, settle: SettleStep) -> Reply:
        return self.sync.settle(settle)

    async def assign(self, subject: str, plan: str | None) -> None:
        self.sync.assign(subject, plan)

    async def assigned(self, subject: str) -> str | None:
        return self.sync.assigned(subject)

    async def delete(self, subject: str, keys: list[str]) -> int:
        return self.sync.delete(subject, keys)

    async def append(self, subject: str, entry: dict[str, str]) -> None:
        self.sync.append(subject, entry)

    def new_hold_id(self) -> str:
        return self.sync.new_hold_id()

    async def ping(self) -> None:
        self.sync.ping()

    async def aclose(self) -> None:
        self.sync.close()


def _url(spec: str | None, policy: Policy) -> str:
    url = policy.store.url if spec is None else spec
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"store url: {url!r} is not a URL; expected memory:// or redis://HOST:PORT/DB"
        )
    return url.strip()


def _is_memory(url: str) -> bool:
    if url.split("://", 1)[0] != "memory":
        return False
    if url not in ("memory://", "memory:///"):
        raise ConfigurationError(
            f"store url: {url!r}; the memory store takes no host or options: expected memory://"
        )
    return True


def open_store(spec: str | SyncStore | None, policy: Policy, clock: Callable[[], int]) -> SyncStore:
    """The store named by ``spec`` (a URL, or a store object), else by the policy."""
    if spec is not None and not isinstance(spec, str):
        return spec
    url = _url(spec, policy)
    if _is_memory(url):
        return MemoryStore(clock, policy.ledger.dedupe_s * US)
    from tollway.stores.redis import RedisStore

    return RedisStore(url, policy.store, clock, policy.ledger)


def open_async_store(
    spec: str | AsyncStore | None, policy: Policy, clock: Callable[[], int]
) -> AsyncStore:
    if spec is not None and not isinstance(spec, str):
        return spec
    url = _url(spec, policy)
    if _is_memory(url):
        return AsyncMemoryStore(MemoryStore(clock, policy.ledger.dedupe_s * US))
    from tollway.stores.redis import AsyncRedisStore

    return AsyncRedisStore(url, policy.store, clock, policy.ledger)


__all__ = [
    "AsyncMemoryStore",
    "AsyncStore",
    "MemoryStore",
    "SyncStore",
    "open_async_store",
    "open_store",
]
