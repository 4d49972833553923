"""Prepaid grants (``billing_grants``) and coupon redemptions (``billing_redemptions``).

A grant is keyed (subject, currency, id): adding the same row again is a no-op (a retried
``tw.grant``), the same key with other values a `GrantConflictError`. A redemption is counted
against the coupon's ``max_redemptions`` in the transaction that stores it; on PostgreSQL an
advisory lock on the coupon code serializes two redemptions at once, so the cap holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tollway.billing.records import GrantRecord, Redemption
from tollway.billing.storage.sql import Dialect, mark, marks, require_text
from tollway.errors import CouponError, GrantConflictError
from tollway.metering.ledger.flows import Flow, Query

__all__ = ["add_grant", "grants", "redeem", "redemptions"]

_GCOLS = (
    "id, subject, currency, amount_micros, granted_at_us, expires_at_us, priority, source, note"
)
_LOCK_COUPON = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7330480721592010343))"


def add_grant(dialect: Dialect, grant: GrantRecord) -> Flow[bool]:
    """Store ``grant``; True when new, False when the same grant was there already."""
    require_text("grant id", grant.id)
    require_text("subject", grant.subject)
    if grant.amount_micros <= 0:
        raise GrantConflictError(
            f"grant {grant.id!r}: amount {grant.amount_micros} micros; expected > 0"
        )
    p = mark(dialect)
    row = _row(grant)
    inserted = yield Query(
        f"INSERT INTO billing_grants ({_GCOLS}) VALUES ({marks(dialect, 9)}) "
        "ON CONFLICT (subject, currency, id) DO NOTHING RETURNING id",
        row,
    )
    if inserted:
        return True
    stored = yield Query(
        f"SELECT {_GCOLS} FROM billing_grants WHERE subject = {p} AND currency = {p} AND id = {p}",
        (grant.subject, grant.currency, grant.id),
    )
    if stored and _grant(stored[0]) == grant:
        return False
    raise GrantConflictError(
        f"grant {grant.id!r} of {grant.subject!r} ({grant.currency}) exists with other values; "
        "a grant id names one grant: use a new id"
    )


def grants(dialect: Dialect, subject: str, currency: str) -> Flow[list[GrantRecord]]:
    """``subject``'s grants in ``currency``, oldest first (then by id)."""
    p = mark(dialect)
    rows = yield Query(
        f"SELECT {_GCOLS} FROM billing_grants WHERE subject = {p} AND currency = {p} "
        "ORDER BY granted_at_us, id",
        (subject, currency),
    )
    return [_grant(row) for row in rows]


def redeem(
    dialect: Dialect, subject: str, coupon: str, now_us: int, max_redemptions: int | None = None
) -> Flow[Redemption]:
    """Record ``subject``'s redemption of ``coupon``; `CouponError` when the subject redeemed
    it already or ``max_redemptions`` subjects did."""
    require_text("subject", subject)
    require_text("coupon", coupon, 64)
    p = mark(dialect)
    if dialect == "postgres":
        yield Query(_LOCK_COUPON, (coupon,))
    if max_redemptions is not None:
        rows = yield Query(
            f"SELECT COUNT(*) FROM billing_redemptions WHERE coupon = {p}", (coupon,)
        )
        if int(rows[0][0]) >= max_redemptions:
            raise CouponError(
                f"coupon {coupon!r}: redeemed {int(rows[0][0])} times; max_redemptions is "
                f"{max_redemptions}"
            )
    inserted = yield Query(
        "INSERT INTO billing_redemptions (subject, coupon, redeemed_at_us) "
        f"VALUES ({p}, {p}, {p}) ON CONFLICT (subject, coupon) DO NOTHING RETURNING coupon",
        (subject, coupon, int(now_us)),
    )
    if not inserted:
        raise CouponError(f"coupon {coupon!r}: {subject!r} redeemed it already; once per subject")
    return Redemption(subject=subject, coupon=coupon, redeemed_us=int(now_us))


def redemptions(dialect: Dialect, subject: str) -> Flow[list[Redemption]]:
    """``subject``'s redemptions, oldest first."""
    p = mark(dialect)
    rows = yield Query(
        "SELECT subject, coupon, redeemed_at_us FROM billing_redemptions "
        f"WHERE subject = {p} ORDER BY redeemed_at_us, coupon",
        (subject,),
    )
    return [Redemption(subject=r[0], coupon=r[1], redeemed_us=int(r[2])) for r in rows]


def _row(grant: GrantRecord) -> tuple[Any, ...]:
    return (
        grant.id,
        grant.subject,
        grant.currency,
        int(grant.amount_micros),
        int(grant.granted_us),
        grant.expires_us,
        int(grant.priority),
        grant.source,
        grant.note,
    )


def _grant(row: Sequence[Any]) -> GrantRecord:
    return GrantRecord(
        id=row[0],
        subject=row[1],
        currency=row[2],
        amount_micros=int(row[3]),
        granted_us=int(row[4]),
        expires_us=None if row[5] is None else int(row[5]),
        priority=int(row[6]),
        source=row[7],
        note=row[8],
    )
