"""API keys: issued by tollway, shown once, kept only as a keyed hash, mapped to a subject.

A key reads ``tw_<id>_<secret>``: ``<id>`` is 8 characters of lowercase base32, public (it names
the key in `ApiKeys.list`, ``revoke`` and ``rotate``, and in logs); ``<secret>`` is 32 random
bytes, URL-safe base64 (43 characters). The store keeps ``HMAC-SHA256(pepper, key)`` (hex) and
never the key: a copy of the store does not yield usable keys without the pepper, which lives
only in the process (``secret=`` or ``$TOLLWAY_KEY_SECRET``) and is never written anywhere.

Verifying a key finds its record by the embedded id, then compares the digests with
`hmac.compare_digest`; an unknown id is compared against a dummy digest, so every well-formed key
costs one HMAC and one constant-time comparison.

Storage, the same names in both stores:

- ``tw:key:{ID}``: the key's record (Redis: a hash; memory: a JSON object in
  `MemoryStore.records`); fields ``digest``, ``subject``, ``created_at``, and when set
  ``label``, ``expires_at``, ``revoked_at``, ``rotated_to`` (times in microseconds since the
  epoch). Its own hash tag: one slot per key.
- ``tw:{SUBJECT}:keys``: the ids of the subject's keys (Redis: a set; memory: a JSON list),
  in the subject's hash tag beside its counters.

Every Redis operation touches one key, so it runs unchanged on a Redis Cluster. Creating a
record is one single-key script (create only if absent); revoking sets ``revoked_at`` only if it
is unset (HSETNX), so a revocation is never lost to a concurrent write.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import math
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from tollway.client import Tollway
from tollway.errors import (
    ConfigurationError,
    InvalidArgumentError,
    StoreError,
    UnknownNameError,
)
from tollway.stores.memory import MemoryStore

SECRET_ENV = "TOLLWAY_KEY_SECRET"
"""The environment variable holding the pepper, when ``secret=`` is not given."""
MIN_SECRET_BYTES = 16
PREFIX = "tw_"
ID_LENGTH = 8
SECRET_LENGTH = 43  # secrets.token_urlsafe(32)
KEY_LENGTH = len(PREFIX) + ID_LENGTH + 1 + SECRET_LENGTH

_KEY = re.compile(r"tw_([a-z2-7]{8})_([A-Za-z0-9_-]{43})")
_ID = re.compile(r"[a-z2-7]{8}")
_DUMMY = hashlib.sha256(b"tollway: no such key").hexdigest().encode("ascii")
_CREATE_TRIES = 8

# One key, created whole or not at all (KEYS[1]: the record; ARGV: field, value, ...).
_CREATE_SCRIPT = """\
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV))
return 1
"""

KeyState = Literal["active", "expired", "revoked"]


def record_key(key_id: str) -> str:
    """The store key of one API key's record."""
    return f"tw:key:{{{key_id}}}"


def index_key(subject: str) -> str:
    """The store key of a subject's set of key ids (in the subject's hash tag)."""
    return f"tw:{{{subject}}}:keys"


def secret_from_env() -> bytes:
    """The pepper from ``$TOLLWAY_KEY_SECRET``; `ConfigurationError` if it is unset or short."""
    return _secret(os.environ.get(SECRET_ENV), f"${SECRET_ENV}")


def _secret(value: bytes | str | None, where: str) -> bytes:
    if value is None or not value:
        raise ConfigurationError(
            f"API keys need a secret (the pepper of their keyed hash): set {SECRET_ENV} or pass "
            "secret=; e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"{where}: the API key secret is {len(raw)} bytes; expected at least "
            f"{MIN_SECRET_BYTES} (set {SECRET_ENV} to e.g. 32 random URL-safe characters)"
        )
    return raw


def _at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


def _when(us: int | None) -> datetime | None:
    return None if us is None else _at(us)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def _seconds(name: str, value: object, *, zero: bool) -> int:
    """A duration in seconds as microseconds; `InvalidArgumentError` unless finite and > 0
    (>= 0 with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name}: {value!r} is not a number of seconds")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        expected = ">= 0" if zero else "> 0"
        raise InvalidArgumentError(
            f"{name}: {value!r}; expected a finite number of seconds {expected}"
        )
    return round(value * 1_000_000)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just issued: the only time ``key`` is known. Store it now; it cannot be shown again."""

    key: str = field(repr=False)
    key_id: str
    subject: str
    created_at: datetime
    expires_at: datetime | None = None
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "key_id": self.key_id,
            "subject": self.subject,
            "label": self.label,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
        }


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What is known of a key after it was issued: never the key, never its digest."""

    key_id: str
    subject: str
    state: KeyState
    """As of when it was read: ``revoked`` wins over ``expired``."""
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    label: str | None = None
    rotated_to: str | None = None
    """The id of the key that replaced this one, if it was rotated."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "subject": self.subject,
            "state": self.state,
            "label": self.label,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "rotated_to": self.rotated_to,
        }


@dataclass(slots=True)
class _Record:
    digest: str
    subject: str
    created_at: int
    label: str | None = None
    expires_at: int | None = None
    revoked_at: int | None = None
    rotated_to: str | None = None

    def fields(self) -> dict[str, str]:
        """The set fields, as strings (the Redis hash, the memory JSON)."""
        out = {"digest": self.digest, "subject": self.subject, "created_at": str(self.created_at)}
        for name in ("label", "expires_at", "revoked_at", "rotated_to"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        return out

    @classmethod
    def parse(cls, fields: dict[str, str]) -> _Record | None:
        """A record from its fields, or None if it is incomplete or damaged."""
        try:
            expires = fields.get("expires_at")
            revoked = fields.get("revoked_at")
            return cls(
                digest=fields["digest"],
                subject=fields["subject"],
                created_at=int(fields["created_at"]),
                label=fields.get("label"),
                expires_at=None if expires is None else int(expires),
                revoked_at=None if revoked is None else int(revoked),
                rotated_to=fields.get("rotated_to"),
            )
        except (KeyError, ValueError, TypeError):
            return None

    def state(self, now: int) -> KeyState:
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def info(self, key_id: str, now: int) -> KeyInfo:
        return KeyInfo(
            key_id=key_id,
            subject=self.subject,
            state=self.state(now),
            created_at=_at(self.created_at),
            expires_at=_when(self.expires_at),
            revoked_at=_when(self.revoked_at),
            label=self.label,
            rotated_to=self.rotated_to,
        )


# -- storage: one small interface, one implementation per store ----------------------------


class _Backend(Protocol):
    def insert(self, key_id: str, record: _Record) -> bool:
        """Write the record unless the id is taken; add it to the subject's index."""

    def get(self, key_id: str) -> _Record | None: ...

    def ids(self, subject: str) -> builtins.list[str]: ...

    def get_many(self, key_ids: builtins.list[str]) -> builtins.list[_Record | None]: ...

    def set_fields(self, key_id: str, fields: dict[str, str], *, only_new: bool) -> None:
        """Set fields of an existing record (``only_new``: only those not set yet)."""


class _MemoryBackend:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def _read(self, key_id: str) -> dict[str, str] | None:
        raw = self.store.records.get(record_key(key_id))
        if raw is None:
            return None
        fields: dict[str, str] = json.loads(raw)
        return fields

    def insert(self, key_id: str, record: _Record) -> bool:
        records = self.store.records
        with self.store.lock:
            if record_key(key_id) in records:
                return False
            records[record_key(key_id)] = json.dumps(record.fields())
            index = index_key(record.subject)
            ids: builtins.list[str] = json.loads(records.get(index, "[]"))
            ids.append(key_id)
            records[index] = json.dumps(ids)
            return True

    def get(self, key_id: str) -> _Record | None:
        with self.store.lock:
            fields = self._read(key_id)
        return None if fields is None else _Record.parse(fields)

    def ids(self, subject: str) -> builtins.list[str]:
        with self.store.lock:
            ids: builtins.list[str] = json.loads(self.store.records.get(index_key(subject), "[]"))
        return ids

    def get_many(self, key_ids: builtins.list[str]) -> builtins.list[_Record | None]:
        return [self.get(key_id) for key_id in key_ids]

    def set_fields(self, key_id: str, fields: dict[str, str], *, only_new: bool) -> None:
        with self.store.lock:
            current = self._read(key_id)
            if current is None:
                return
            for name, value in fields.items():
                if not only_new or name not in current:
                    current[name] = value
            self.store.records[record_key(key_id)] = json.dumps(current)


_T = TypeVar("_T")


class _RedisBackend:
    """Single-key commands only, through the store's breaker and error mapping."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.client = store.client

    def _do(self, fn: Callable[[], _T]) -> _T:
        result: _T = self.store._plain(fn)
        return result

    @staticmethod
    def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
        return {k.decode("utf-8"): v.decode("utf-8") for k, v in raw.items()}

    def insert(self, key_id: str, record: _Record) -> bool:
        args = [part for pair in record.fields().items() for part in pair]
        created = self._do(lambda: self.client.eval(_CREATE_SCRIPT, 1, record_key(key_id), *args))
        if not created:
            return False
        self._do(lambda: self.client.sadd(index_key(record.subject), key_id))
        return True

    def get(self, key_id: str) -> _Record | None:
        raw = self._do(lambda: self.client.hgetall(record_key(key_id)))
        return _Record.parse(self._decode(raw)) if raw else None

    def ids(self, subject: str) -> builtins.list[str]:
        raw = self._do(lambda: self.client.smembers(index_key(subject)))
        return sorted(item.decode("utf-8") for item in raw)

    def get_many(self, key_ids: builtins.list[str]) -> builtins.list[_Record | None]:
        if not key_ids:
            return []

        def fetch() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for key_id in key_ids:
                pipe.hgetall(record_key(key_id))
            return pipe.execute()

        return [_Record.parse(self._decode(raw)) if raw else None for raw in self._do(fetch)]

    def set_fields(self, key_id: str, fields: dict[str, str], *, only_new: bool) -> None:
        key = record_key(key_id)
        for name, value in fields.items():
            if only_new:
                self._do(partial(self.client.hsetnx, key, name, value))
            else:
                # Only an existing record: HSET would create a stray one.
                self._do(partial(self.client.eval, _SET_IF_EXISTS, 1, key, name, value))


_SET_IF_EXISTS = """\
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _backend(store: object) -> _Backend:
    if isinstance(store, MemoryStore):
        return _MemoryBackend(store)
    from tollway.stores.redis import RedisStore

    if isinstance(store, RedisStore):
        return _RedisBackend(store)
    raise ConfigurationError(
        f"API keys need the memory or the Redis store; got {type(store).__name__}"
    )


# -- the public face ------------------------------------------------------------------------


class ApiKeys:
    """Issue, verify, list, revoke and rotate API keys in a `Tollway`'s store.

    ``secret`` (bytes or text, at least 16 bytes) is the pepper of the keyed hash; default:
    ``$TOLLWAY_KEY_SECRET``. Every process that verifies keys needs the same one; it is never
    stored. Times come from the tollway's clock (``clock=``), so tests need not sleep.
    """

    def __init__(self, tollway: Tollway, *, secret: bytes | str | None = None) -> None:
        self._secret = secret_from_env() if secret is None else _secret(secret, "secret")
        self._tollway = tollway
        self._backend = _backend(tollway.store)

    @property
    def blocking(self) -> bool:
        """Whether verifying a key waits on the network (callers on an event loop should
        verify in a worker thread)."""
        return not isinstance(self._tollway.store, MemoryStore)

    def __repr__(self) -> str:
        return f"ApiKeys(store={self._tollway.store.url!r})"

    def _now(self) -> int:
        return self._tollway.engine.clock()

    def _digest(self, key: str) -> str:
        return hmac.new(self._secret, key.encode("ascii"), hashlib.sha256).hexdigest()

    def _record(self, key_id: object) -> tuple[str, _Record]:
        if not isinstance(key_id, str):
            raise InvalidArgumentError(f"key id: {key_id!r} is not a string")
        normal = key_id.strip().lower()
        match = _KEY.fullmatch(key_id.strip())
        if match is not None:  # the whole key given where its id was asked for
            normal = match.group(1)
        if not _ID.fullmatch(normal):
            raise InvalidArgumentError(
                f"key id: {key_id[:80]!r} is not a key id; expected 8 characters a-z, 2-7 "
                "(as `tollway keys list` shows)"
            )
        record = self._backend.get(normal)
        if record is None:
            raise UnknownNameError(f"key id: no API key {normal!r} in the store")
        return normal, record

    def _issue(
        self, subject: str, label: str | None, expires_in: float | None, now: int
    ) -> IssuedKey:
        expires_at = (
            None if expires_in is None else now + _seconds("expires_in", expires_in, zero=False)
        )
        for _ in range(_CREATE_TRIES):
            key_id = base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()
            key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            record = _Record(self._digest(key), subject, now, label, expires_at)
            if self._backend.insert(key_id, record):
                return IssuedKey(key, key_id, subject, _at(now), _when(expires_at), label)
        raise StoreError(f"could not find a free key id in {_CREATE_TRIES} tries")

    def create(
        self, subject: str, *, label: str | None = None, expires_in: float | None = None
    ) -> IssuedKey:
        """Issue a key for ``subject`` (valid for ``expires_in`` seconds, else until revoked).
        The returned `IssuedKey.key` is the only copy: the store keeps a keyed hash of it."""
        self._tollway.engine.check_subject(subject)
        if label is not None and (not isinstance(label, str) or len(label) > 200):
            raise InvalidArgumentError(f"label: {label!r}; expected text of at most 200 characters")
        return self._issue(subject, label, expires_in, self._now())

    def verify(self, presented: str) -> str | None:
        """The subject of the key, or None when it is unknown, revoked, expired or malformed.

        Never raises on any input; a store that cannot answer raises `StoreError` (a request
        should then be answered 503, not 401)."""
        if (
            not isinstance(presented, str)
            or len(presented) != KEY_LENGTH
            or not presented.isascii()
        ):
            return None
        match = _KEY.fullmatch(presented)
        if match is None:
            return None
        digest = self._digest(presented).encode("ascii")
        record = self._backend.get(match.group(1))
        expected = _DUMMY if record is None else record.digest.encode("ascii", "replace")
        if not hmac.compare_digest(digest, expected) or record is None:
            return None
        if record.state(self._now()) != "active":
            return None
        return record.subject

    def get(self, key_id: str) -> KeyInfo:
        """One key by its id; `UnknownNameError` if there is none."""
        key_id, record = self._record(key_id)
        return record.info(key_id, self._now())

    def list(self, subject: str) -> builtins.list[KeyInfo]:
        """The subject's keys (revoked and expired ones too), oldest first."""
        self._tollway.engine.check_subject(subject)
        ids = self._backend.ids(subject)
        now = self._now()
        infos = [
            record.info(key_id, now)
            for key_id, record in zip(ids, self._backend.get_many(ids), strict=True)
            if record is not None and record.subject == subject
        ]
        return sorted(infos, key=lambda info: (info.created_at, info.key_id))

    def revoke(self, key_id: str) -> KeyInfo:
        """Refuse the key from now on (idempotent: a second revoke keeps the first time)."""
        key_id, _ = self._record(key_id)
        self._backend.set_fields(key_id, {"revoked_at": str(self._now())}, only_new=True)
        return self.get(key_id)

    def rotate(self, key_id: str, *, overlap: float, expires_in: float | None = None) -> IssuedKey:
        """A new key for the same subject (and label); the old one keeps working for
        ``overlap`` more seconds (0: it stops now), so clients can switch without downtime."""
        key_id, record = self._record(key_id)
        now = self._now()
        state = record.state(now)
        if state != "active":
            raise InvalidArgumentError(
                f"key id: {key_id!r} is {state}; only an active key can be rotated "
                "(create a new one with `tollway keys create`)"
            )
        end = now + _seconds("overlap", overlap, zero=True)
        issued = self._issue(record.subject, record.label, expires_in, now)
        fields = {"rotated_to": issued.key_id}
        if record.expires_at is None or end < record.expires_at:
            fields["expires_at"] = str(end)
        self._backend.set_fields(key_id, fields, only_new=False)
        return issued


__all__ = [
    "ApiKeys",
    "IssuedKey",
    "KeyInfo",
    "KeyState",
    "SECRET_ENV",
    "index_key",
    "record_key",
    "secret_from_env",
]
