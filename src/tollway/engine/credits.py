"""Prepaid credits: the grants of one subject and currency, and how draws are allocated to them.

The atomic step only checks and decrements the subject's balance field ``c:CUR`` (the sum of
the live grants' remaining, less what was drawn since the last allocation), so it stays as
cheap as a budget. The grants themselves (``KEY:cg:CUR`` on Redis) keep each one's remaining
as of its last allocation; `allocate` brings them up to date:

1. the net drawn since the last allocation is ``sum(remaining) - balance``; a positive net is
   taken from the grants in draw order (priority high first, then soonest expiry, never-expiring
   last, then oldest); a negative net (money given back: a released hold, an undone step) goes
   back to the grants last drawn, in reverse draw order, never above a grant's amount;
2. grants expired at ``now`` (``expires_us <= now``) are dropped, and their remaining leaves the
   balance;
3. the next expiry (``c:CUR^``) is the earliest left, so the step runs this again only then.

The memory store calls this; ``lua/lib.lua`` (``credits_allocate``) mirrors it line for line,
and the tests hold both to the same answers. A grant's order key ends with its sequence number
(``seq``), given by the store when it was granted: "oldest" without trusting clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tollway.errors import BillingError, GrantConflictError, InvalidArgumentError

__all__ = [
    "BALANCE",
    "BALANCE_PREFIX",
    "GRANT",
    "REVOKE",
    "CreditsOp",
    "CreditsReply",
    "GRANT_ID_MAX",
    "MAX_GRANTS",
    "NEVER",
    "Grant",
    "allocate",
    "balance_field",
    "check_grant",
    "conflict",
    "grant_op",
    "granted",
    "draw_order",
    "expiry_field",
]

NEVER = 1 << 62
"""The expiry of a grant that never expires (and of a balance without expiring grants)."""
GRANT_ID_MAX = 128
MAX_GRANTS = 1000
"""Live grants per subject and currency: the allocation walks them all."""
BALANCE_PREFIX = "c:"


GRANT, BALANCE, REVOKE = "grant", "balance", "revoke"
"""The store operations on credits (`CreditsOp.op`)."""
ADDED, THERE, CONFLICT, TOO_MANY, PAST = 1, 0, 2, 3, 4
"""`CreditsReply.code` of a grant: added, already there (the same terms), there with other
terms (``old`` holds them), too many live grants, expiry not after the store's now."""


@dataclass(frozen=True, slots=True)
class CreditsOp:
    """One store operation on a subject's credits in ``currency`` (checked by the caller:
    build it with `grant_op`, or `CreditsOp(BALANCE|REVOKE, ...)`)."""

    op: str
    subject: str
    currency: str
    grant_id: str = ""
    micros: int = 0
    priority: int = 0
    expires_us: int = NEVER


@dataclass(frozen=True, slots=True)
class CreditsReply:
    """What the store answered: its now, the live balance after, and for a grant its code
    (and the terms found, on a conflict), for a revoke the micro-units removed."""

    now_us: int
    balance: int
    code: int = THERE
    old: tuple[int, int, int] = (0, 0, 0)
    revoked: int = 0
    grants: tuple[Grant, ...] = field(default=())
    """`BALANCE`: the live grants in draw order."""


def balance_field(currency: str) -> str:
    """The subject's hash field holding its live balance in ``currency`` (micro-units)."""
    return BALANCE_PREFIX + currency


def expiry_field(currency: str) -> str:
    """The field holding the earliest expiry of its grants (us): past it, allocate first."""
    return BALANCE_PREFIX + currency + "^"


@dataclass(slots=True)
class Grant:
    """One grant: ``micros`` granted, ``remaining`` as of the last allocation."""

    id: str
    micros: int
    priority: int
    expires_us: int
    """`NEVER` when it does not expire."""
    seq: int
    remaining: int

    def pack(self) -> str:
        """As the Redis grants hash keeps it: ``micros priority expires seq remaining``."""
        return f"{self.micros} {self.priority} {self.expires_us} {self.seq} {self.remaining}"

    @classmethod
    def unpack(cls, grant_id: str, packed: str) -> Grant:
        micros, priority, expires, seq, remaining = (int(p) for p in packed.split())
        return cls(grant_id, micros, priority, expires, seq, remaining)


def draw_order(grants: list[Grant]) -> list[Grant]:
    """Priority high first, then soonest expiry (never-expiring last), then oldest."""
    return sorted(grants, key=lambda g: (-g.priority, g.expires_us, g.seq))


def allocate(grants: list[Grant], balance: int, now_us: int) -> tuple[list[Grant], int, int]:
    """``(live grants in draw order, balance, next expiry)`` after allocating the net drawn
    since the last allocation and dropping what expired by ``now_us``. The grants' remaining
    are updated in place."""
    ordered = draw_order(grants)
    net = sum(g.remaining for g in ordered) - balance
    if net > 0:
        for g in ordered:
            take = min(net, g.remaining)
            g.remaining -= take
            net -= take
            if net == 0:
                break
        # A net above every remaining (never, unless the hash was edited): the balance wins.
    elif net < 0:
        back = -net
        for g in reversed(ordered):
            give = min(back, g.micros - g.remaining)
            g.remaining += give
            back -= give
            if back == 0:
                break
    live = [g for g in ordered if g.expires_us > now_us]
    total = sum(g.remaining for g in live)
    nxt = min((g.expires_us for g in live), default=NEVER)
    return live, total, nxt


def check_grant(
    grant_id: object, micros: object, priority: object, expires_us: object
) -> tuple[str, int, int, int]:
    """The arguments of a grant, checked (an error names the argument and what was
    expected); ``expires_us`` None becomes `NEVER`."""
    if not isinstance(grant_id, str) or not 1 <= len(grant_id) <= GRANT_ID_MAX:
        raise InvalidArgumentError(
            f"id: {str(grant_id)[:80]!r} is not a grant id; expected a str of 1 to "
            f"{GRANT_ID_MAX} characters"
        )
    if not grant_id.isprintable():
        # A field of the grants hash, never a key: printable is all it needs to be.
        raise InvalidArgumentError(
            f"id: {grant_id[:80]!r} holds control characters; expected printable text"
        )
    if isinstance(micros, bool) or not isinstance(micros, int) or not 0 < micros < NEVER:
        raise InvalidArgumentError(
            f"micros: {micros!r} is not an amount to grant; expected an int of micro-units > 0"
        )
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 10**9:
        raise InvalidArgumentError(
            f"priority: {priority!r} is not a priority; expected an int from -1e9 to 1e9"
        )
    if expires_us is None:
        expires_us = NEVER
    if isinstance(expires_us, bool) or not isinstance(expires_us, int) or not expires_us > 0:
        raise InvalidArgumentError(
            f"expires_us: {expires_us!r} is not a time; expected microseconds since the epoch"
        )
    return grant_id, micros, priority, min(expires_us, NEVER)


def conflict(grant_id: str, old: tuple[int, int, int], new: tuple[int, int, int]) -> None:
    """Raise `GrantConflictError` when a grant id comes again with other terms."""
    if old != new:

        def show(t: tuple[int, int, int]) -> str:
            expires = "never" if t[2] >= NEVER else str(t[2])
            return f"micros={t[0]}, priority={t[1]}, expires_us={expires}"

        raise GrantConflictError(
            f"grant {grant_id!r} exists with {show(old)}; this grant gives {show(new)}; "
            "expected the same terms (a grant id is idempotent) or a new id"
        )


def grant_op(
    subject: str,
    currency: str,
    grant_id: object,
    micros: object,
    priority: object = 0,
    expires_us: object = None,
) -> CreditsOp:
    """A checked `GRANT` (an error names the argument)."""
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isupper():
        raise InvalidArgumentError(
            f'currency: {currency!r} is not a currency; expected a 3-letter code such as "USD"'
        )
    gid, amount, prio, expires = check_grant(grant_id, micros, priority, expires_us)
    return CreditsOp(GRANT, subject, currency, gid, amount, prio, expires)


def granted(op: CreditsOp, reply: CreditsReply) -> bool:
    """A grant's answer: True added, False already there; raises on a conflict or a bound."""
    if reply.code == CONFLICT:
        conflict(op.grant_id, reply.old, (op.micros, op.priority, op.expires_us))
    if reply.code == TOO_MANY:
        raise BillingError(
            f"grant {op.grant_id!r}: {op.subject!r} has {MAX_GRANTS} live {op.currency} grants "
            f"already; expected at most {MAX_GRANTS} (revoke some or let them expire first)"
        )
    if reply.code == PAST:
        raise BillingError(
            f"grant {op.grant_id!r}: expires_us={op.expires_us} is not after the store's time "
            f"{reply.now_us}; expected an expiry in the future"
        )
    return reply.code == ADDED
