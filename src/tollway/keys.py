"""API keys: issued by tollway, shown once, kept only as a keyed hash, mapped to a subject.

A key reads ``tw_<id>_<secret>``: ``<id>`` is 8 characters of lowercase base32, public (it names
the key in `ApiKeys.list`, ``revoke`` and ``rotate``, and in logs); ``<secret>`` is 32 random
bytes, URL-safe base64 (43 characters). The store keeps ``HMAC-SHA256(pepper, key)`` (hex) and
never the key: a copy of the store does not yield usable keys without the pepper, which lives
only in the process (``secret=`` or ``$TOLLWAY_KEY_SECRET``) and is never written anywhere.

Verifying a key finds its record by the embedded id, then compares the digests with
`hmac.compare_digest`; an unknown id is compared against a dummy digest, so every well-formed key
costs one HMAC and one constant-time comparison.

Storage lives in the stores (`tollway.stores.key_ops` names the layout: ``tw:key:{ID}`` and
``tw:{SUBJECT}:keys``); here each operation is written once, as a generator flow of storage
requests, driven by `ApiKeys` (on a `Tollway`) and by `AsyncApiKeys` (on an `AsyncTollway`,
awaited: no worker thread). Creating a record is one single-key script (create only if absent);
revoking sets ``revoked_at`` only if it is unset (HSETNX), so a revocation is never lost to a
concurrent write.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from tollway.client import AsyncTollway, Tollway
from tollway.drive import adrive, drive
from tollway.errors import (
    ConfigurationError,
    InvalidArgumentError,
    StoreError,
    UnknownNameError,
)
from tollway.stores.key_ops import (
    AddToIndex,
    CreateRecord,
    KeyFlow,
    ListIds,
    ReadRecords,
    SetFields,
    async_key_storage,
    index_key,
    key_storage,
    record_key,
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

KeyState = Literal["active", "expired", "revoked"]


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


def _key_id(key_id: object) -> str:
    """A key id as given (any case, or the whole key), normalized; `InvalidArgumentError`."""
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
    return normal


def _read_one(key_id: str) -> KeyFlow[_Record | None]:
    (fields,) = yield ReadRecords((key_id,))
    return None if fields is None else _Record.parse(fields)


# -- the logic, once: each operation a generator flow of storage requests ------------------


class _Keys:
    """What `ApiKeys` and `AsyncApiKeys` share: the pepper, the clock and every flow."""

    def __init__(self, tollway: Tollway | AsyncTollway, secret: bytes | str | None) -> None:
        self._secret = secret_from_env() if secret is None else _secret(secret, "secret")
        self._tollway = tollway

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={self._tollway.store.url!r})"

    def _now(self) -> int:
        return self._tollway.engine.clock()

    def _digest(self, key: str) -> str:
        return hmac.new(self._secret, key.encode("ascii"), hashlib.sha256).hexdigest()

    def _record(self, key_id: object) -> KeyFlow[tuple[str, _Record]]:
        normal = _key_id(key_id)
        record = yield from _read_one(normal)
        if record is None:
            raise UnknownNameError(f"key id: no API key {normal!r} in the store")
        return normal, record

    def _issue(
        self, subject: str, label: str | None, expires_in: float | None, now: int
    ) -> KeyFlow[IssuedKey]:
        expires_at = (
            None if expires_in is None else now + _seconds("expires_in", expires_in, zero=False)
        )
        for _ in range(_CREATE_TRIES):
            key_id = base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()
            key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            record = _Record(self._digest(key), subject, now, label, expires_at)
            if (yield CreateRecord(key_id, record.fields())):
                yield AddToIndex(subject, key_id)
                return IssuedKey(key, key_id, subject, _at(now), _when(expires_at), label)
        raise StoreError(f"could not find a free key id in {_CREATE_TRIES} tries")

    def _create(
        self, subject: str, label: str | None, expires_in: float | None
    ) -> KeyFlow[IssuedKey]:
        self._tollway.engine.check_subject(subject)
        if label is not None and (not isinstance(label, str) or len(label) > 200):
            raise InvalidArgumentError(f"label: {label!r}; expected text of at most 200 characters")
        return (yield from self._issue(subject, label, expires_in, self._now()))

    def _verify(self, presented: object) -> KeyFlow[str | None]:
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
        record = yield from _read_one(match.group(1))
        expected = _DUMMY if record is None else record.digest.encode("ascii", "replace")
        if not hmac.compare_digest(digest, expected) or record is None:
            return None
        if record.state(self._now()) != "active":
            return None
        return record.subject

    def _get(self, key_id: object) -> KeyFlow[KeyInfo]:
        normal, record = yield from self._record(key_id)
        return record.info(normal, self._now())

    def _list(self, subject: str) -> KeyFlow[builtins.list[KeyInfo]]:
        self._tollway.engine.check_subject(subject)
        ids = yield ListIds(subject)
        if not ids:
            return []
        records = yield ReadRecords(tuple(ids))
        now = self._now()
        infos = []
        for key_id, fields in zip(ids, records, strict=True):
            record = None if fields is None else _Record.parse(fields)
            if record is not None and record.subject == subject:
                infos.append(record.info(key_id, now))
        return sorted(infos, key=lambda info: (info.created_at, info.key_id))

    def _revoke(self, key_id: object) -> KeyFlow[KeyInfo]:
        normal, _ = yield from self._record(key_id)
        yield SetFields(normal, {"revoked_at": str(self._now())}, only_new=True)
        return (yield from self._get(normal))

    def _rotate(
        self, key_id: object, overlap: float, expires_in: float | None
    ) -> KeyFlow[IssuedKey]:
        normal, record = yield from self._record(key_id)
        now = self._now()
        state = record.state(now)
        if state != "active":
            raise InvalidArgumentError(
                f"key id: {normal!r} is {state}; only an active key can be rotated "
                "(create a new one with `tollway keys create`)"
            )
        end = now + _seconds("overlap", overlap, zero=True)
        issued = yield from self._issue(record.subject, record.label, expires_in, now)
        fields = {"rotated_to": issued.key_id}
        if record.expires_at is None or end < record.expires_at:
            fields["expires_at"] = str(end)
        yield SetFields(normal, fields, only_new=False)
        return issued


# -- the two faces ---------------------------------------------------------------------------


class ApiKeys(_Keys):
    """Issue, verify, list, revoke and rotate API keys in a `Tollway`'s store (memory or
    Redis); `AsyncApiKeys` is the same on an `AsyncTollway`.

    ``secret`` (bytes or text, at least 16 bytes) is the pepper of the keyed hash; default:
    ``$TOLLWAY_KEY_SECRET``. Every process that verifies keys needs the same one; it is never
    stored. Times come from the tollway's clock (``clock=``), so tests need not sleep.
    """

    def __init__(self, tollway: Tollway, *, secret: bytes | str | None = None) -> None:
        if isinstance(tollway, AsyncTollway):
            raise ConfigurationError(
                "ApiKeys(tw) takes a Tollway; for an AsyncTollway use "
                "tollway.keys.AsyncApiKeys(tw), whose methods are awaited"
            )
        super().__init__(tollway, secret)
        self._storage = key_storage(tollway.store)
        self._sync = tollway

    @property
    def tollway(self) -> Tollway:
        """The `Tollway` whose store holds the keys (and counts failed attempts at them)."""
        return self._sync

    @property
    def blocking(self) -> bool:
        """Whether verifying a key waits on the network (callers on an event loop should
        verify in a worker thread, or use `AsyncApiKeys`)."""
        return not isinstance(self._tollway.store, MemoryStore)

    def create(
        self, subject: str, *, label: str | None = None, expires_in: float | None = None
    ) -> IssuedKey:
        """Issue a key for ``subject`` (valid for ``expires_in`` seconds, else until revoked).
        The returned `IssuedKey.key` is the only copy: the store keeps a keyed hash of it."""
        return drive(self._create(subject, label, expires_in), self._storage.run)

    def verify(self, presented: str) -> str | None:
        """The subject of the key, or None when it is unknown, revoked, expired or malformed.

        Never raises on any input; a store that cannot answer raises `StoreError` (a request
        should then be answered 503, not 401)."""
        return drive(self._verify(presented), self._storage.run)

    def get(self, key_id: str) -> KeyInfo:
        """One key by its id; `UnknownNameError` if there is none."""
        return drive(self._get(key_id), self._storage.run)

    def list(self, subject: str) -> builtins.list[KeyInfo]:
        """The subject's keys (revoked and expired ones too), oldest first."""
        return drive(self._list(subject), self._storage.run)

    def revoke(self, key_id: str) -> KeyInfo:
        """Refuse the key from now on (idempotent: a second revoke keeps the first time)."""
        return drive(self._revoke(key_id), self._storage.run)

    def rotate(self, key_id: str, *, overlap: float, expires_in: float | None = None) -> IssuedKey:
        """A new key for the same subject (and label); the old one keeps working for
        ``overlap`` more seconds (0: it stops now), so clients can switch without downtime."""
        return drive(self._rotate(key_id, overlap, expires_in), self._storage.run)


class AsyncApiKeys(_Keys):
    """`ApiKeys` on an `AsyncTollway` (memory or Redis store): the same methods, awaited;
    ``await keys.verify(key)`` never blocks the event loop."""

    def __init__(self, tollway: AsyncTollway, *, secret: bytes | str | None = None) -> None:
        if isinstance(tollway, Tollway):
            raise ConfigurationError(
                "AsyncApiKeys(tw) takes an AsyncTollway; for a Tollway use tollway.keys.ApiKeys(tw)"
            )
        super().__init__(tollway, secret)
        self._storage = async_key_storage(tollway.store)
        self._async = tollway

    @property
    def tollway(self) -> AsyncTollway:
        """The `AsyncTollway` whose store holds the keys (and counts failed attempts)."""
        return self._async

    async def create(
        self, subject: str, *, label: str | None = None, expires_in: float | None = None
    ) -> IssuedKey:
        """See `ApiKeys.create`."""
        return await adrive(self._create(subject, label, expires_in), self._storage.run)

    async def verify(self, presented: str) -> str | None:
        """See `ApiKeys.verify`."""
        return await adrive(self._verify(presented), self._storage.run)

    async def get(self, key_id: str) -> KeyInfo:
        """See `ApiKeys.get`."""
        return await adrive(self._get(key_id), self._storage.run)

    async def list(self, subject: str) -> builtins.list[KeyInfo]:
        """See `ApiKeys.list`."""
        return await adrive(self._list(subject), self._storage.run)

    async def revoke(self, key_id: str) -> KeyInfo:
        """See `ApiKeys.revoke`."""
        return await adrive(self._revoke(key_id), self._storage.run)

    async def rotate(
        self, key_id: str, *, overlap: float, expires_in: float | None = None
    ) -> IssuedKey:
        """See `ApiKeys.rotate`."""
        return await adrive(self._rotate(key_id, overlap, expires_in), self._storage.run)


__all__ = [
    "ApiKeys",
    "AsyncApiKeys",
    "IssuedKey",
    "KeyInfo",
    "KeyState",
    "SECRET_ENV",
    "index_key",
    "record_key",
    "secret_from_env",
]
