"""API key storage in the memory store: JSON text in `MemoryStore.records`, under its lock.

The async face answers from the same code: nothing here blocks, so no thread is needed.
"""

from __future__ import annotations

import json
from typing import Any

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
from tollway.stores.memory import MemoryStore


class MemoryKeys:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def run(self, op: KeyOp) -> Any:
        records = self.store.records
        with self.store.lock:
            if isinstance(op, ReadRecords):
                return [_fields(records.get(record_key(key_id))) for key_id in op.key_ids]
            if isinstance(op, ListIds):
                return _ids(records.get(index_key(op.subject)))
            if isinstance(op, CreateRecord):
                key = record_key(op.key_id)
                if key in records:
                    return False
                records[key] = json.dumps(op.fields)
                return True
            if isinstance(op, AddToIndex):
                index = index_key(op.subject)
                ids = _ids(records.get(index))
                if op.key_id not in ids:
                    ids.append(op.key_id)
                records[index] = json.dumps(ids)
                return None
            current = _fields(records.get(record_key(op.key_id)))
            if current is not None:
                _set(current, op)
                records[record_key(op.key_id)] = json.dumps(current)
            return None


class AsyncMemoryKeys:
    def __init__(self, store: MemoryStore) -> None:
        self.sync = MemoryKeys(store)

    async def run(self, op: KeyOp) -> Any:
        return self.sync.run(op)


def _fields(raw: str | None) -> Fields | None:
    if raw is None:
        return None
    fields: Fields = json.loads(raw)
    return fields


def _ids(raw: str | None) -> list[str]:
    ids: list[str] = json.loads(raw or "[]")
    return ids


def _set(current: Fields, op: SetFields) -> None:
    for name, value in op.fields.items():
        if not op.only_new or name not in current:
            current[name] = value
