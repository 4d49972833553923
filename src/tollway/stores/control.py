"""Control records of the store: the active policy, published policy texts, shadow counts.

Every process sharing a store reads these to pick up an activation (`tollway.watch`). Each
is one small key of its own, never a field of a subject's hash: on a Redis Cluster each key
hashes to its own slot and every command here touches one key, so it runs unchanged there.
The memory store keeps them in `MemoryStore.records` (one process: nothing to share, no TTL).

Layout:

- ``tw:policy:active``: JSON of the activation in force (see `tollway.watch.Activation`);
- ``tw:policy:body:VERSION``: JSON ``{"format", "body"}``, the text of a published version
  (content-addressed: the version is the document's hash, so it never changes);
- ``tw:policy:overrides:DIGEST``: JSON list of the per-subject overrides in force
  (``{"subject", "limit", "spec", "expires_us"}``), content-addressed like a body (DIGEST: 12
  hex digits of its sha256); the active key names the one in force;
- ``tw:policy:shadow:VERSION``: a hash, per limit name the steps the pilot version would have
  denied that were evaluated in its shadow, expiring ``ttl_ms`` after the last count.

On Redis each key is in the store's ``[store] prefix`` namespace (``acme:tw:policy:active``).

Versions are 12 lowercase hex digits (`Policy.version`), checked before they become a key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tollway.errors import InvalidArgumentError
from tollway.keyspace import prefixed
from tollway.stores import AsyncMemoryStore
from tollway.stores.memory import MemoryStore
from tollway.stores.redis_requests import Command

ACTIVE_KEY = "tw:policy:active"
_VERSION = re.compile(r"[0-9a-f]{12}")


def checked_version(version: object) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidArgumentError(
            f"policy version: {version!r:.80} is not a version; expected 12 hex digits "
            "(Policy.version)"
        )
    return version


def body_key(version: str) -> str:
    return f"tw:policy:body:{checked_version(version)}"


def overrides_key(digest: str) -> str:
    return f"tw:policy:overrides:{checked_version(digest)}"


def shadow_key(version: str) -> str:
    return f"tw:policy:shadow:{checked_version(version)}"


@dataclass(frozen=True, slots=True)
class GetValue:
    """Answered the key's text, or None."""

    key: str


@dataclass(frozen=True, slots=True)
class SetValues:
    """Set each (key, text), in order (one command per key); answered None."""

    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class CountUp:
    """Add 1 to each of ``fields`` of the hash ``key`` and keep it ``ttl_ms``; answered None."""

    key: str
    fields: tuple[str, ...]
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class ReadCounts:
    """Answered the hash ``key`` as {field: count} ({} when absent)."""

    key: str


ControlOp = GetValue | SetValues | CountUp | ReadCounts


def answer(store: Any, op: ControlOp) -> Any:
    """``op`` answered by a sync store (memory or Redis)."""
    if isinstance(store, MemoryStore):
        return _memory(store, op)
    raw = store.send(_command(op, store.prefix))
    return _read(op, raw)


async def answer_async(store: Any, op: ControlOp) -> Any:
    """``op`` answered by an async store (memory or Redis)."""
    if isinstance(store, AsyncMemoryStore):
        return _memory(store.sync, op)
    raw = await store.send(_command(op, store.prefix))
    return _read(op, raw)


def _command(op: ControlOp, prefix: str) -> Command:
    # A store's ``[store] prefix`` namespaces these keys like every other (a tenant's policy
    # is its own).
    if isinstance(op, GetValue):
        key = prefixed(prefix, op.key)
        return Command(lambda client: client.get(key))
    if isinstance(op, SetValues):
        pairs = tuple((prefixed(prefix, k), v) for k, v in op.pairs)
        return Command(lambda client: _set_all(client, pairs))
    if isinstance(op, CountUp):
        counted = CountUp(prefixed(prefix, op.key), op.fields, op.ttl_ms)
        return Command(lambda client: _count(client, counted))
    key = prefixed(prefix, op.key)
    return Command(lambda client: client.hgetall(key))


def _set_all(client: Any, pairs: tuple[tuple[str, str], ...]) -> Any:
    # Not MSET: on a cluster the keys are in different slots. A pipeline without a
    # transaction sends them in order (buffered on both faces; only execute() is awaited).
    pipe = client.pipeline(transaction=False)
    for key, value in pairs:
        pipe.set(key, value)
    return pipe.execute()


def _count(client: Any, op: CountUp) -> Any:
    pipe = client.pipeline(transaction=False)
    for field in op.fields:
        pipe.hincrby(op.key, field, 1)
    pipe.pexpire(op.key, op.ttl_ms)
    return pipe.execute()


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _read(op: ControlOp, raw: Any) -> Any:
    if isinstance(op, GetValue):
        return None if raw is None else _text(raw)
    if isinstance(op, ReadCounts):
        return {_text(field): int(value) for field, value in (raw or {}).items()}
    return None


def _memory(store: MemoryStore, op: ControlOp) -> Any:
    records = store.records
    with store.lock:
        if isinstance(op, GetValue):
            return records.get(op.key)
        if isinstance(op, SetValues):
            for key, value in op.pairs:
                records[key] = value
            return None
        if isinstance(op, CountUp):
            counts = json.loads(records.get(op.key, "{}"))
            for field in op.fields:
                counts[field] = counts.get(field, 0) + 1
            records[op.key] = json.dumps(counts)
            return None
        return dict(json.loads(records.get(op.key, "{}")))


__all__ = [
    "ACTIVE_KEY",
    "ControlOp",
    "CountUp",
    "GetValue",
    "ReadCounts",
    "SetValues",
    "answer",
    "answer_async",
    "body_key",
    "checked_version",
    "overrides_key",
    "shadow_key",
]
