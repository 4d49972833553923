"""Standard Webhooks (https://www.standardwebhooks.com/): secrets, signing and verification.

A delivery carries three headers:

- ``webhook-id``: the message's id, the same on every retry (receivers dedupe on it); here it
  is the CloudEvent's id.
- ``webhook-timestamp``: when this attempt was signed, integer Unix seconds.
- ``webhook-signature``: space-separated ``v1,<base64>`` entries, each the HMAC-SHA256 of
  ``"{id}.{timestamp}.{body}"`` under one secret. While a secret is rotated the message is
  signed with every active secret, so a receiver holding either one verifies it.

A secret is ``whsec_`` followed by the base64 of 24 to 64 random bytes (`generate_secret`
makes one of 32); the HMAC key is the decoded bytes, never the text.

`verify` is the receiver's side (and the tests'): it checks the headers, refuses a timestamp
more than `DEFAULT_TOLERANCE` seconds (5 minutes) away from now in either direction, then
compares every ``v1`` signature with every secret in constant time, with no early exit.
Entries of other versions (``v1a``, asymmetric) or unreadable ones are passed over, as the spec
asks for forward compatibility.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from tollway.errors import ConfigurationError, InvalidArgumentError, WebhookVerificationError

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "SIGNATURE_VERSION",
    "WEBHOOK_ID",
    "WEBHOOK_SIGNATURE",
    "WEBHOOK_TIMESTAMP",
    "SecretsLike",
    "VerifiedWebhook",
    "WebhookSecret",
    "check_message_id",
    "generate_secret",
    "headers_for",
    "parse_secret",
    "parse_secrets",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
"""The spec's floor for a symmetric secret (192 bits)."""
MAX_SECRET_BYTES = 64
"""The spec's ceiling (512 bits)."""
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300.0
"""Seconds a ``webhook-timestamp`` may be away from the receiver's clock (5 minutes)."""

WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"

_MESSAGE_ID = re.compile(r"^[!-\-/-~]{1,256}$")  # printable ASCII, no space, no "."
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """One HMAC key. ``repr`` and ``str`` never show it; `text` is its ``whsec_`` form."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise ConfigurationError(
                f"webhook secret: a {type(self.key).__name__}; expected bytes "
                "(or parse_secret('whsec_…'))"
            )
        if not MIN_SECRET_BYTES <= len(self.key) <= MAX_SECRET_BYTES:
            raise ConfigurationError(
                f"webhook secret: {len(self.key)} bytes; expected {MIN_SECRET_BYTES} to "
                f"{MAX_SECRET_BYTES} random bytes (generate_secret() makes one)"
            )

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        return parse_secret(text)

    @property
    def text(self) -> str:
        """The secret as ``whsec_<base64>``, to hand to the receiver."""
        return SECRET_PREFIX + base64.b64encode(self.key).decode("ascii")

    @property
    def fingerprint(self) -> str:
        """12 hex digits identifying the secret in logs without revealing it."""
        return hashlib.sha256(b"tollway-webhook-secret:" + self.key).hexdigest()[:12]

    def __str__(self) -> str:
        return f"whsec_… ({self.fingerprint})"

    def signature(self, msg_id: str, timestamp: int, body: bytes | str) -> str:
        """One ``v1,<base64>`` entry for this secret."""
        digest = _digest(self.key, _signed_content(msg_id, timestamp, body))
        return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


SecretsLike: TypeAlias = WebhookSecret | str | Sequence[WebhookSecret | str]
"""One secret, or every active one during a rotation (the current one first)."""


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    """What `verify` found: the message's id (to dedupe on), its timestamp, and which of the
    receiver's secrets matched (its index in the ``secrets`` given)."""

    id: str
    timestamp: int
    secret_index: int


def parse_secret(text: str | WebhookSecret) -> WebhookSecret:
    """``whsec_`` + base64 (padding optional; surrounding whitespace ignored) as a
    `WebhookSecret`. Raises `ConfigurationError` saying what is wrong, never echoing the
    secret."""
    if isinstance(text, WebhookSecret):
        return text
    if not isinstance(text, str):
        raise ConfigurationError(
            f"webhook secret: a {type(text).__name__}; expected a string 'whsec_<base64>'"
        )
    text = text.strip()
    if not text:
        raise ConfigurationError("webhook secret: empty; expected 'whsec_<base64>'")
    if not text.startswith(SECRET_PREFIX):
        raise ConfigurationError(
            "webhook secret: does not start with 'whsec_'; expected 'whsec_' followed by the "
            "base64 of the key (generate_secret() makes one)"
        )
    encoded = text[len(SECRET_PREFIX) :]
    if not encoded or not _BASE64.match(encoded) or len(encoded.rstrip("=")) % 4 == 1:
        raise ConfigurationError(
            "webhook secret: the part after 'whsec_' is not base64 (A-Z, a-z, 0-9, '+', '/', "
            "optional '=' padding)"
        )
    try:
        key = base64.b64decode(encoded.rstrip("=") + "=" * (-len(encoded.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ConfigurationError("webhook secret: the part after 'whsec_' is not base64") from None
    return WebhookSecret(key)


def parse_secrets(secrets: SecretsLike) -> tuple[WebhookSecret, ...]:
    """One secret or several (a rotation) as a tuple of `WebhookSecret`, duplicates dropped."""
    items: Sequence[WebhookSecret | str]
    if isinstance(secrets, (str, WebhookSecret)):
        items = (secrets,)
    elif isinstance(secrets, Sequence):
        items = secrets
    else:
        raise ConfigurationError(
            f"webhook secrets: a {type(secrets).__name__}; expected a secret or a list of them"
        )
    parsed: list[WebhookSecret] = []
    for index, item in enumerate(items):
        try:
            secret = parse_secret(item)
        except ConfigurationError as exc:
            if len(items) == 1:
                raise
            raise ConfigurationError(f"webhook secrets[{index}]: {exc}") from None
        if secret not in parsed:
            parsed.append(secret)
    if not parsed:
        raise ConfigurationError("webhook secrets: none given; expected at least one secret")
    return tuple(parsed)


def generate_secret(nbytes: int = 32) -> str:
    """A new random secret, ``whsec_`` + base64 of ``nbytes`` (24 to 64) bytes."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise InvalidArgumentError(f"nbytes: {nbytes!r}; expected an int")
    return WebhookSecret(_random.token_bytes(nbytes)).text


def check_message_id(msg_id: Any) -> str:
    """Return ``msg_id`` if it can be a webhook-id (1 to 256 printable ASCII characters, no
    space, no ``.``, which would make ``"{id}.{timestamp}.{body}"`` ambiguous); else raise
    `InvalidArgumentError`."""
    if not isinstance(msg_id, str) or not _MESSAGE_ID.match(msg_id):
        raise InvalidArgumentError(
            f"webhook-id: {msg_id!r}; expected 1 to 256 printable ASCII characters without "
            "spaces or '.'"
        )
    return msg_id


def sign(msg_id: str, timestamp: int, body: bytes | str, secrets: SecretsLike) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` entry per secret, space-separated,
    in the order given."""
    check_message_id(msg_id)
    _check_timestamp(timestamp)
    return " ".join(secret.signature(msg_id, timestamp, body) for secret in parse_secrets(secrets))


def headers_for(
    msg_id: str,
    body: bytes | str,
    secrets: SecretsLike,
    *,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (``timestamp``: default now)."""
    if timestamp is None:
        timestamp = int(time.time())
    return {
        WEBHOOK_ID: msg_id,
        WEBHOOK_TIMESTAMP: str(timestamp),
        WEBHOOK_SIGNATURE: sign(msg_id, timestamp, body, secrets),
    }


def verify(
    body: bytes | str,
    headers: Mapping[str, str] | Any,
    secrets: SecretsLike,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> VerifiedWebhook:
    """Check a received webhook: ``body`` exactly as received (bytes, or text to encode as
    UTF-8), ``headers`` any mapping with ``items()`` (names in any case), ``secrets`` the
    receiver's (one, or several during a rotation). ``now``: Unix seconds, default the clock.

    Raises `WebhookVerificationError` (its ``reason`` says why); a bad secret raises
    `ConfigurationError`."""
    keys = parse_secrets(secrets)
    if not tolerance >= 0:
        raise InvalidArgumentError(f"tolerance: {tolerance!r}; expected seconds >= 0")
    found = _lower_headers(headers)
    for name in (WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE):
        if not found.get(name, "").strip():
            raise WebhookVerificationError(
                f"{name}: missing; a Standard Webhook carries {WEBHOOK_ID}, {WEBHOOK_TIMESTAMP} "
                f"and {WEBHOOK_SIGNATURE}",
                reason="missing_header",
                header=name,
            )
    msg_id = found[WEBHOOK_ID].strip()
    stamp = found[WEBHOOK_TIMESTAMP].strip()
    if not _TIMESTAMP.match(stamp):
        raise WebhookVerificationError(
            f"{WEBHOOK_TIMESTAMP}: {stamp!r}; expected integer Unix seconds",
            reason="invalid_header",
            header=WEBHOOK_TIMESTAMP,
        )
    timestamp = int(stamp)
    now = time.time() if now is None else now
    if timestamp < now - tolerance:
        raise WebhookVerificationError(
            f"{WEBHOOK_TIMESTAMP}: {timestamp} is {now - timestamp:.0f} s old; the tolerance "
            f"is {tolerance:g} s (a replay, or a clock that is off)",
            reason="timestamp_too_old",
            header=WEBHOOK_TIMESTAMP,
        )
    if timestamp > now + tolerance:
        raise WebhookVerificationError(
            f"{WEBHOOK_TIMESTAMP}: {timestamp} is {timestamp - now:.0f} s in the future; the "
            f"tolerance is {tolerance:g} s (a clock that is off)",
            reason="timestamp_too_new",
            header=WEBHOOK_TIMESTAMP,
        )
    content = _signed_content(msg_id, timestamp, body)
    expected = [_digest(secret.key, content) for secret in keys]
    candidates = _v1_signatures(found[WEBHOOK_SIGNATURE])
    matched: int | None = None
    for candidate in candidates:  # every signature against every secret: no early exit
        for index, digest in enumerate(expected):
            if hmac.compare_digest(candidate, digest) and matched is None:
                matched = index
    if matched is None:
        what = (
            f"none of its {len(candidates)} v1 signature{'s' if len(candidates) != 1 else ''}"
            if candidates
            else "it holds no readable v1 signature"
        )
        raise WebhookVerificationError(
            f"{WEBHOOK_SIGNATURE}: {what} matches the body under any of the "
            f"{len(keys)} secret{'s' if len(keys) != 1 else ''}",
            reason="no_matching_signature",
            header=WEBHOOK_SIGNATURE,
        )
    return VerifiedWebhook(id=msg_id, timestamp=timestamp, secret_index=matched)


# --------------------------------------------------------------------------- helpers


def _signed_content(msg_id: str, timestamp: int, body: bytes | str) -> bytes:
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    return f"{msg_id}.{timestamp}.".encode() + raw


def _digest(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def _check_timestamp(timestamp: Any) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise InvalidArgumentError(
            f"webhook-timestamp: {timestamp!r}; expected integer Unix seconds >= 0"
        )


def _lower_headers(headers: Any) -> dict[str, str]:
    try:
        items = list(headers.items())
    except AttributeError:
        raise InvalidArgumentError(
            f"headers: a {type(headers).__name__}; expected a mapping of header names to values"
        ) from None
    found: dict[str, str] = {}
    for raw_name, raw_value in items:
        name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        if isinstance(name, str) and isinstance(value, str):
            found.setdefault(name.lower(), value)
    return found


def _v1_signatures(header: str) -> list[bytes]:
    out: list[bytes] = []
    for entry in header.split():
        version, comma, encoded = entry.partition(",")
        if not comma or version != SIGNATURE_VERSION or not _BASE64.match(encoded):
            continue
        try:
            out.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return out
