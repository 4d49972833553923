"""API key storage: the layout, the operations a key flow asks of a store, and its two drivers.

`tollway.keys` writes each operation (create, verify, list, revoke, rotate) once, as a
generator that yields `KeyOp` requests and is sent their answers (httpx's ``auth_flow``
pattern); `tollway.drive.drive` answers them from a sync storage's ``run``, ``adrive``
from an async one's. The storages
(`tollway.stores.keys_memory`, `tollway.stores.keys_redis`) answer each request with one
single-key command, so everything runs unchanged on a Redis Cluster.

Layout, the same names in both stores:

- ``tw:key:{ID}``: the key's record (Redis: a hash; memory: a JSON object in
  `MemoryStore.records`), one slot per key (its own hash tag); fields ``digest``,
  ``subject``, ``created_at``, and when set ``label``, ``expires_at``, ``revoked_at``,
  ``rotated_to`` (times in microseconds since the epoch; `tollway.keys` reads them).
- ``tw:{SUBJECT}:keys``: the ids of the subject's keys (Redis: a set; memory: a JSON list),
  in the subject's hash tag beside its counters (``SUBJECT`` escaped by
  `tollway.keyspace.key_text`, like every key of a subject: no brace, one slot, no collision).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tollway.errors import ConfigurationError
from tollway.keyspace import key_text, prefixed

Fields = dict[str, str]


def record_key(key_id: str, prefix: str = "") -> str:
    """The store key of one API key's record (the id escaped like a subject: `tollway.keys`
    only reads ids of ``[a-z2-7]``, which are their own text)."""
    return prefixed(prefix, f"tw:key:{{{key_text(key_id)}}}")


def index_key(subject: str, prefix: str = "") -> str:
    """The store key of a subject's set of key ids (in the subject's hash tag)."""
    return prefixed(prefix, f"tw:{{{key_text(subject)}}}:keys")


@dataclass(frozen=True, slots=True)
class CreateRecord:
    """Write the record unless the id is taken; answered True if it was written."""

    key_id: str
    fields: Fields


@dataclass(frozen=True, slots=True)
class AddToIndex:
    """Add the id to the subject's index; answered None."""

    subject: str
    key_id: str


@dataclass(frozen=True, slots=True)
class ReadRecords:
    """The records' fields, in order (None where there is none); answered a list. At least
    one id."""

    key_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListIds:
    """The ids in the subject's index; answered a list."""

    subject: str


@dataclass(frozen=True, slots=True)
class SetFields:
    """Set fields of an existing record (``only_new``: only those not set yet); answered
    None. A record that does not exist is not created."""

    key_id: str
    fields: Fields
    only_new: bool


KeyOp = CreateRecord | AddToIndex | ReadRecords | ListIds | SetFields
_T = TypeVar("_T")
KeyFlow = Generator[KeyOp, Any, _T]
"""One key operation's logic: yields requests, is sent each answer, returns the result."""


class KeyStorage(Protocol):
    def run(self, op: KeyOp) -> Any: ...


class AsyncKeyStorage(Protocol):
    async def run(self, op: KeyOp) -> Any: ...


def key_storage(store: object) -> KeyStorage:
    """The key storage of a sync store (memory or Redis)."""
    from tollway.stores.memory import MemoryStore

    if isinstance(store, MemoryStore):
        from tollway.stores.keys_memory import MemoryKeys

        return MemoryKeys(store)
    from tollway.stores.redis import RedisStore

    if isinstance(store, RedisStore):
        from tollway.stores.keys_redis import RedisKeys

        return RedisKeys(store)
    raise ConfigurationError(_refusal(store, "ApiKeys", "Tollway"))


def async_key_storage(store: object) -> AsyncKeyStorage:
    """The key storage of an async store (memory or Redis)."""
    from tollway.stores import AsyncMemoryStore

    if isinstance(store, AsyncMemoryStore):
        from tollway.stores.keys_memory import AsyncMemoryKeys

        return AsyncMemoryKeys(store.sync)
    from tollway.stores.redis import AsyncRedisStore

    if isinstance(store, AsyncRedisStore):
        from tollway.stores.keys_redis import AsyncRedisKeys

        return AsyncRedisKeys(store)
    raise ConfigurationError(_refusal(store, "AsyncApiKeys", "AsyncTollway"))


def _refusal(store: object, face: str, client: str) -> str:
    return (
        f"{face} keeps API keys in the memory or the Redis store; this {client} uses a "
        f"{type(store).__name__} ({getattr(store, 'url', '?')}): open the {client} on "
        "memory:// or a redis:// URL to issue and verify keys"
    )


__all__ = [
    "AddToIndex",
    "AsyncKeyStorage",
    "CreateRecord",
    "Fields",
    "KeyFlow",
    "KeyOp",
    "KeyStorage",
    "ListIds",
    "ReadRecords",
    "SetFields",
    "async_key_storage",
    "index_key",
    "key_storage",
    "record_key",
]
