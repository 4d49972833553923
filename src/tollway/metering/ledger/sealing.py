"""Sensitive event attributes, encrypted at rest in the ledger (``[ledger] sensitive``).

Each sensitive attribute's value (its JSON: a str, int or bool keeps its type) is stored as
``tw:aes1:KEYID:DATA``, DATA the URL-safe base64 of nonce (12 bytes), AES-256-GCM ciphertext
and tag, the attribute's name bound in as associated data (a value cannot be moved to another
attribute). KEYID (8 hex digits) names the key: derived from it, never the key itself, so a
row says which key sealed it and still opens after a rotation, while that key is listed.

Keys come from the environment only (``encryption_key_env``, or ``encryption_keys_env`` with
several space-separated, newest first: new rows are sealed with the first); each is the
base64 of 32 random bytes. Two subkeys are derived from each (HKDF-SHA256): one encrypts, one
makes the nonce, an HMAC of the attribute's name and value. So sealing is deterministic under
one key: the same event written twice (a drain's redelivery) gives the same row, and the
ledger can still count an attribute's distinct values (``unique_attributes``); it shows which
rows share a value, never the value. A rotation changes every new ciphertext: distinct counts
across the rotation's instant may count one value twice.

Everything that goes into the ledger is sealed (the hook outbox is built from the sealed
events: a receiver gets the ciphertext); the ledger's readers open what they return
(`Sealer.open`, `Ledger.opened`). Rows written before an attribute was made sensitive hold
plain values, returned as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from tollway.errors import ConfigurationError, LedgerError
from tollway.metering.ledger.events import UsageEvent
from tollway.policy.model import LedgerConfig

__all__ = ["MARK", "Sealer", "sealer_for"]

MARK: Final = "tw:aes1:"
"""How a sealed value starts."""
KEY_BYTES: Final = 32
_HINT: Final = (
    "expected the base64 of 32 random bytes, e.g. from "
    'python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'
)


def _need_crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "[ledger] sensitive attributes are encrypted with AES-GCM from the cryptography "
            "package: pip install 'tollway[crypto]'"
        ) from None
    return hashes, AESGCM, HKDF


def _derive(key: bytes, info: bytes, length: int = 32) -> bytes:
    hashes, _, hkdf = _need_crypto()
    return bytes(hkdf(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key))


@dataclass(frozen=True, slots=True)
class _Key:
    id: str
    aead: Any
    nonce_key: bytes

    @classmethod
    def of(cls, raw: bytes) -> _Key:
        _, aesgcm, _ = _need_crypto()
        ident = _derive(raw, b"tollway ledger key id", 4).hex()
        return cls(
            ident,
            aesgcm(_derive(raw, b"tollway ledger aes-gcm")),
            _derive(raw, b"tollway ledger nonce"),
        )


class Sealer:
    """Seals and opens the ``sensitive`` attributes of usage events with ``keys`` (raw 32-byte
    keys, newest first). ``source`` names where the keys came from, for errors."""

    def __init__(self, sensitive: Sequence[str], keys: Sequence[bytes], source: str) -> None:
        if not keys:
            raise ConfigurationError(f"{source}: no key; {_HINT}")
        self.sensitive = frozenset(sensitive)
        self.source = source
        self._keys = [_Key.of(key) for key in keys]
        self._by_id = {key.id: key for key in reversed(self._keys)}
        self.key_ids = tuple(key.id for key in self._keys)
        """The ids of the keys, newest first (safe to show: derived, not the keys)."""

    def __repr__(self) -> str:
        return f"Sealer({sorted(self.sensitive)}, keys {list(self.key_ids)})"

    def seal(self, event: UsageEvent) -> UsageEvent:
        """``event`` with its sensitive attributes sealed under the newest key."""
        attrs = event.attributes
        if not attrs or self.sensitive.isdisjoint(attrs):
            return event
        key = self._keys[0]
        sealed = dict(attrs)
        for name in self.sensitive.intersection(attrs):
            value = attrs[name]
            if isinstance(value, str) and value.startswith(MARK):
                continue  # sealed already (a batch sealed once, written again)
            sealed[name] = _seal(key, name, json.dumps(value, ensure_ascii=False))
        return replace(event, attributes=sealed)

    def open(self, event: UsageEvent) -> UsageEvent:
        """``event`` with its sealed attributes opened; `LedgerError` if one was sealed with
        a key no longer given, or was altered."""
        attrs = event.attributes
        if not attrs or not any(isinstance(v, str) and v.startswith(MARK) for v in attrs.values()):
            return event
        opened: dict[str, Any] = dict(attrs)
        for name, value in attrs.items():
            if isinstance(value, str) and value.startswith(MARK):
                opened[name] = self._open(event.id, name, value)
        return replace(event, attributes=opened)

    def opened(self, events: Sequence[UsageEvent]) -> list[UsageEvent]:
        return [self.open(event) for event in events]

    def _open(self, event_id: str, name: str, value: str) -> object:
        ident, _, data = value[len(MARK) :].partition(":")
        key = self._by_id.get(ident)
        where = f"event {event_id!r}, attribute {name!r}"
        if key is None:
            raise LedgerError(
                f"{where}: sealed with key {ident!r}, which is not among the keys of "
                f"{self.source} ({', '.join(self.key_ids)}); give that key too (after the "
                "newest: keys are listed newest first)"
            )
        try:
            raw = base64.urlsafe_b64decode(data.encode("ascii"))
            plain = key.aead.decrypt(raw[:12], raw[12:], _aad(name))
            return json.loads(plain.decode("utf-8"))
        except Exception:  # InvalidTag, bad base64, bad JSON: one answer, nothing leaked
            raise LedgerError(
                f"{where}: the sealed value does not open with key {ident!r} (altered, or "
                "moved from another attribute)"
            ) from None


def _aad(name: str) -> bytes:
    return b"tollway attribute " + name.encode("utf-8")


def _seal(key: _Key, name: str, text: str) -> str:
    plain = text.encode("utf-8")
    nonce = hmac.new(key.nonce_key, _aad(name) + b"\0" + plain, hashlib.sha256).digest()[:12]
    data = nonce + key.aead.encrypt(nonce, plain, _aad(name))
    return f"{MARK}{key.id}:{base64.urlsafe_b64encode(data).decode('ascii')}"


def _decode_key(text: str, where: str, index: int) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ConfigurationError(f"{where}: key {index + 1} is not base64; {_HINT}") from None
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(f"{where}: key {index + 1} is {len(raw)} bytes; {_HINT}") from None
    return raw


def sealer_for(config: LedgerConfig, env: Mapping[str, str] | None = None) -> Sealer | None:
    """The sealer of ``[ledger]`` (None when no attribute is sensitive), its keys read from
    ``env`` (default `os.environ`). `ConfigurationError` names the variable when it is unset
    or holds no valid key; the error never shows a key."""
    if not config.sensitive:
        return None
    env = os.environ if env is None else env
    setting = "encryption_keys_env" if config.encryption_keys_env else "encryption_key_env"
    name = config.encryption_keys_env or config.encryption_key_env
    if name is None:
        raise ConfigurationError(
            "[ledger] sensitive: no key; expected encryption_key_env (or encryption_keys_env)"
        )
    where = f"[ledger] {setting}: the environment variable {name}"
    value = env.get(name)
    if value is None or not value.strip():
        raise ConfigurationError(f"{where} is not set; {_HINT}")
    parts = value.split()
    if setting == "encryption_key_env" and len(parts) != 1:
        raise ConfigurationError(
            f"{where} holds {len(parts)} values; expected one key (several, newest first: "
            "encryption_keys_env)"
        )
    keys = [_decode_key(part, where, i) for i, part in enumerate(parts)]
    return Sealer(config.sensitive, keys, f"{setting} {name}")
