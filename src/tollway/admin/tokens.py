"""Admin tokens: ``tw_admin_<random>``, shown once, kept only as their sha256.

A token has a short public id (``adm_`` and 16 hex digits: what lists, audit records and
revocations name), a name, a role (`tollway.admin.roles.ROLES`), an optional subject scope,
and a lifetime (``[admin] token_ttl``, 90 days unless the creator says otherwise; ``None``:
never expires). The raw token is 32 random bytes (`secrets.token_urlsafe`), so its hash can be
looked up directly without leaking anything through timing; the stored hash is still compared
with `hmac.compare_digest`. A raw token longer than `RAW_MAX` or not of the token's shape is
refused before it is hashed: a 10 KB header costs nothing.

Creating and revoking are audited in their own transaction (`tollway.admin.audit`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from tollway.admin.audit import audit_flow
from tollway.admin.roles import Principal, check_role, check_scope
from tollway.clock import US
from tollway.errors import InvalidArgumentError, UnauthorizedError, UnknownTokenError
from tollway.metering.ledger.flows import Flow, Query
from tollway.metering.ledger.outbox import Dialect
from tollway.policy.admin import SPAN_MAX_S

__all__ = [
    "PREFIX",
    "RAW_MAX",
    "Created",
    "TokenInfo",
    "authenticate_flow",
    "create_flow",
    "list_flow",
    "malformed",
    "revoke_flow",
    "shaped",
    "token_hash",
]

PREFIX = "tw_admin_"
RAW_MAX = 128
NAME_MAX = 64
TOUCH_US = 60 * US
"""``last_used_at`` is written at most once a minute per token: a read stays a read."""
_RAW = re.compile(r"tw_admin_[A-Za-z0-9_-]{43}")
_ID = re.compile(r"adm_[0-9a-f]{16}")
_COLS = (
    "id, name, role, scope, created_at_us, expires_at_us, revoked_at_us, last_used_at_us, "
    "created_by"
)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What is kept of a token, its hash aside."""

    id: str
    name: str
    role: str
    scope: str | None
    created_at_us: int
    expires_at_us: int | None
    revoked_at_us: int | None
    last_used_at_us: int | None
    created_by: str

    def status(self, now_us: int) -> str:
        if self.revoked_at_us is not None:
            return "revoked"
        if self.expires_at_us is not None and now_us >= self.expires_at_us:
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "scope": self.scope,
            "created_at_us": self.created_at_us,
            "expires_at_us": self.expires_at_us,
            "revoked_at_us": self.revoked_at_us,
            "last_used_at_us": self.last_used_at_us,
            "created_by": self.created_by,
        }


@dataclass(frozen=True, slots=True)
class Created:
    token: TokenInfo
    raw: str
    """The raw token: shown once, never stored."""


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def check_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= NAME_MAX
        or not name.isprintable()
        or name != name.strip()
    ):
        raise InvalidArgumentError(
            f"name: {name!r:.80} is not a token name; expected 1..{NAME_MAX} printable "
            "characters, no leading or trailing space"
        )
    return name


def check_ttl(ttl_s: object) -> int | None:
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= SPAN_MAX_S:
        raise InvalidArgumentError(
            f"expires in: {ttl_s!r:.80} is not a lifetime; expected 1 to {SPAN_MAX_S} seconds "
            "(3650 days), or None for never"
        )
    return ttl_s


def create_flow(
    dialect: Dialect,
    *,
    name: str,
    role: str,
    scope: str | None,
    ttl_s: int | None,
    now_us: int,
    actor: Principal,
    request_id: str = "",
    client: str = "",
) -> Flow[Created]:
    """Store a new token (its hash) and its audit record; the raw token is in the result."""
    check_name(name)
    check_role(role)
    check_scope(scope)
    ttl = check_ttl(ttl_s)
    p = "?" if dialect == "sqlite" else "%s"
    raw = PREFIX + secrets.token_urlsafe(32)
    info = TokenInfo(
        id="adm_" + secrets.token_hex(8),
        name=name,
        role=role,
        scope=scope,
        created_at_us=int(now_us),
        expires_at_us=None if ttl is None else int(now_us) + ttl * US,
        revoked_at_us=None,
        last_used_at_us=None,
        created_by=f"{actor.token_id} ({actor.name})"[:256],
    )
    # 64 random bits: a clash is a primary-key error (nothing stored), never two tokens, one id.
    yield Query(
        f"INSERT INTO admin_tokens (token_hash, {_COLS}) VALUES ({', '.join([p] * 10)})",
        (token_hash(raw), *_row(info)),
    )
    yield from audit_flow(
        dialect,
        actor,
        "tokens.create",
        info.id,
        at_us=now_us,
        before=None,
        after=info.to_dict(),
        request_id=request_id,
        client=client,
    )
    return Created(info, raw)


def shaped(raw: object) -> TypeGuard[str]:
    """Whether ``raw`` has a token's shape (checked by length first: cheap for any input)."""
    return isinstance(raw, str) and len(raw) <= RAW_MAX and _RAW.fullmatch(raw) is not None


def malformed() -> UnauthorizedError:
    return UnauthorizedError(
        f"not an admin token: expected {PREFIX} and 43 characters", "malformed"
    )


def authenticate_flow(dialect: Dialect, raw: object, now_us: int) -> Flow[Principal]:
    """The principal of a raw token; `UnauthorizedError` when malformed, unknown, revoked or
    expired."""
    if not shaped(raw):
        raise malformed()
    p = "?" if dialect == "sqlite" else "%s"
    wanted = token_hash(raw)
    rows = yield Query(
        f"SELECT token_hash, {_COLS} FROM admin_tokens WHERE token_hash = {p}", (wanted,)
    )
    if not rows or not hmac.compare_digest(str(rows[0][0]), wanted):
        raise UnauthorizedError("unknown admin token", "unknown")
    info = _info(rows[0][1:])
    status = info.status(now_us)
    if status != "active":
        raise UnauthorizedError(f"admin token {info.id} is {status}", status)
    if info.last_used_at_us is None or now_us - info.last_used_at_us >= TOUCH_US:
        yield Query(
            f"UPDATE admin_tokens SET last_used_at_us = {p} WHERE id = {p}", (int(now_us), info.id)
        )
    return Principal(token_id=info.id, name=info.name, role=info.role, scope=info.scope)


def list_flow(dialect: Dialect) -> Flow[list[TokenInfo]]:
    """Every token, oldest first (revoked and expired ones too: they say who could act)."""
    rows = yield Query(f"SELECT {_COLS} FROM admin_tokens ORDER BY created_at_us, id")
    return [_info(row) for row in rows]


def revoke_flow(
    dialect: Dialect,
    token_id: str,
    *,
    now_us: int,
    actor: Principal,
    request_id: str = "",
    client: str = "",
) -> Flow[TokenInfo]:
    """Revoke a token (and audit it); revoking a revoked one changes nothing."""
    if not isinstance(token_id, str) or not _ID.fullmatch(token_id):
        raise InvalidArgumentError(
            f"token id: {token_id!r:.80} is not a token id; expected adm_ and 16 hex digits"
        )
    p = "?" if dialect == "sqlite" else "%s"
    rows = yield Query(f"SELECT {_COLS} FROM admin_tokens WHERE id = {p}", (token_id,))
    if not rows:
        raise UnknownTokenError(f"no admin token has id {token_id}")
    before = _info(rows[0])
    if before.revoked_at_us is not None:
        return before
    yield Query(
        f"UPDATE admin_tokens SET revoked_at_us = {p} WHERE id = {p}", (int(now_us), token_id)
    )
    after = replace(before, revoked_at_us=int(now_us))
    yield from audit_flow(
        dialect,
        actor,
        "tokens.revoke",
        token_id,
        at_us=now_us,
        before=before.to_dict(),
        after=after.to_dict(),
        request_id=request_id,
        client=client,
    )
    return after


def _row(info: TokenInfo) -> tuple[Any, ...]:
    return (
        info.id,
        info.name,
        info.role,
        info.scope,
        info.created_at_us,
        info.expires_at_us,
        info.revoked_at_us,
        info.last_used_at_us,
        info.created_by,
    )


def _opt(value: Any) -> int | None:
    return None if value is None else int(value)


def _info(row: Sequence[Any]) -> TokenInfo:
    return TokenInfo(
        id=str(row[0]),
        name=str(row[1]),
        role=str(row[2]),
        scope=None if row[3] is None else str(row[3]),
        created_at_us=int(row[4]),
        expires_at_us=_opt(row[5]),
        revoked_at_us=_opt(row[6]),
        last_used_at_us=_opt(row[7]),
        created_by=str(row[8]),
    )
