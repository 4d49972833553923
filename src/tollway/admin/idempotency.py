"""``Idempotency-Key`` on the admin API's mutations: a repeat gets the first answer.

A mutation sent with ``Idempotency-Key: K`` claims (token, K) in the ledger before it runs,
with the hash of what it asks (method, path, body). Once answered, the answer (status and
body) is kept on the claim. A repeat of the same request gets that answer again and changes
nothing; the same key on another request is a 422; a repeat while the first is still running
is a 409. Only a success is kept: a failed request releases its key. Keys are 1 to 255
printable ASCII characters; claims older than `KEEP_S` are pruned when a new one is made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tollway.admin.web import BadRequest
from tollway.metering.ledger.flows import Flow, Query

__all__ = ["KEEP_S", "Claim", "answer_flow", "check_key", "claim_flow", "request_hash"]

KEY_MAX = 255
KEEP_S = 24 * 3600
BODY_MAX = 256 * 1024
"""An answer larger than this is not kept (its key is released)."""


def check_key(value: str) -> str:
    if not 0 < len(value) <= KEY_MAX or not value.isascii() or not value.isprintable():
        raise BadRequest(400, f"Idempotency-Key: expected 1..{KEY_MAX} printable ASCII characters")
    return value


def request_hash(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "surrogateescape"), body):
        digest.update(len(part).to_bytes(8, "big") + part)  # length-prefixed: injective
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim found: ``fresh`` (this request runs), else the first answer, if any."""

    fresh: bool
    status: int | None = None
    body: str | None = None


def _mark(dialect: str) -> str:
    return "?" if dialect == "sqlite" else "%s"


def claim_flow(dialect: str, token_id: str, key: str, digest: str, now_us: int) -> Flow[Claim]:
    p = _mark(dialect)
    yield Query(
        f"DELETE FROM admin_idempotency WHERE created_at_us < {p}", (now_us - KEEP_S * 1_000_000,)
    )
    inserted = yield Query(
        "INSERT INTO admin_idempotency (token_id, key, request_hash, created_at_us)"
        f" VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (token_id, key) DO NOTHING RETURNING key",
        (token_id, key, digest, now_us),
    )
    if inserted:
        return Claim(fresh=True)
    rows = yield Query(
        "SELECT request_hash, status, body FROM admin_idempotency"
        f" WHERE token_id = {p} AND key = {p}",
        (token_id, key),
    )
    first_hash, status, body = rows[0]
    if first_hash != digest:
        raise BadRequest(
            422, f"Idempotency-Key: {key!r:.60} was used for another request; use a new key"
        )
    if status is None:
        raise BadRequest(409, f"Idempotency-Key: {key!r:.60}: the first request is still running")
    return Claim(fresh=False, status=int(status), body=body)


def answer_flow(dialect: str, token_id: str, key: str, status: int, body: str) -> Flow[None]:
    """Keep a success on the claim; a failure (or an answer too large to keep) releases the
    key, so a corrected request may use it again."""
    p = _mark(dialect)
    if status >= 400 or len(body) > BODY_MAX:
        yield Query(
            f"DELETE FROM admin_idempotency WHERE token_id = {p} AND key = {p}", (token_id, key)
        )
        return
    yield Query(
        f"UPDATE admin_idempotency SET status = {p}, body = {p} WHERE token_id = {p} AND key = {p}",
        (status, body, token_id, key),
    )
