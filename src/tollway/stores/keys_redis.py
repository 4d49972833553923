"""API key storage in Redis: which request answers each `KeyOp`, and how to read its reply,
written once for both faces; `RedisKeys` and `AsyncRedisKeys` only send it through the store
(`RedisStore.send`: scripts by EVALSHA, reloaded on NOSCRIPT; plain commands under the store's
deadline, breaker and error mapping).

Every command touches one key, so it runs unchanged on a Redis Cluster.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import TYPE_CHECKING, Any

from tollway.stores.key_ops import (
    AddToIndex,
    CreateRecord,
    Fields,
    KeyOp,
    ListIds,
    ReadRecords,
    SetFields,
    index_key,
    record_key,
)
from tollway.stores.redis_codec import Script
from tollway.stores.redis_requests import Command, Request, ScriptCall

if TYPE_CHECKING:
    from tollway.stores.redis import AsyncRedisStore, RedisStore


def _script(name: str) -> Script:
    # Standalone scripts: they need none of lib.lua, which the counter scripts share.
    text = (resources.files("tollway.stores") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, text, hashlib.sha1(text.encode("utf-8")).hexdigest())


CREATE = _script("keys_create")
SET = _script("keys_set")


def call_for(op: KeyOp, prefix: str = "") -> Request:
    """What to send for ``op`` (its keys under the store's ``prefix``)."""
    if isinstance(op, ReadRecords):
        ids = op.key_ids
        if len(ids) == 1:
            return Command(lambda client: client.hgetall(record_key(ids[0], prefix)))
        return Command(lambda client: _read_many(client, ids, prefix))
    if isinstance(op, ListIds):
        return Command(lambda client: client.smembers(index_key(op.subject, prefix)))
    if isinstance(op, AddToIndex):
        return Command(lambda client: client.sadd(index_key(op.subject, prefix), op.key_id))
    if isinstance(op, CreateRecord):
        return ScriptCall(CREATE, [record_key(op.key_id, prefix)], _pairs(op.fields))
    assert isinstance(op, SetFields)
    mode = "1" if op.only_new else "0"
    return ScriptCall(SET, [record_key(op.key_id, prefix)], [mode, *_pairs(op.fields)])


def read_answer(op: KeyOp, raw: Any) -> Any:
    """What ``op`` is answered, from the reply ``raw``."""
    if isinstance(op, ReadRecords):
        replies = [raw] if len(op.key_ids) == 1 else raw
        return [_decode(reply) if reply else None for reply in replies]
    if isinstance(op, ListIds):
        return sorted(_text(item) for item in raw)
    if isinstance(op, CreateRecord):
        return bool(raw)
    return None


def _read_many(client: Any, key_ids: tuple[str, ...], prefix: str) -> Any:
    # Commands on a pipeline are buffered on both faces; only execute() is awaited.
    pipe = client.pipeline(transaction=False)
    for key_id in key_ids:
        pipe.hgetall(record_key(key_id, prefix))
    return pipe.execute()


def _pairs(fields: Fields) -> list[str]:
    return [part for pair in fields.items() for part in pair]


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def _decode(raw: dict[Any, Any]) -> Fields:
    return {_text(name): _text(value) for name, value in raw.items()}


class RedisKeys:
    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def run(self, op: KeyOp) -> Any:
        return read_answer(op, self.store.send(call_for(op, self.store.prefix)))


class AsyncRedisKeys:
    def __init__(self, store: AsyncRedisStore) -> None:
        self.store = store

    async def run(self, op: KeyOp) -> Any:
        return read_answer(op, await self.store.send(call_for(op, self.store.prefix)))
