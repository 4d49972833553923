"""Prepaid grants in the memory store: the same layout and algorithm as the Redis one.

The subject's state holds the balance ``c:CUR`` and the earliest expiry ``c:CUR^`` (read by
the step, see `tollway.engine.credits`); the grants live here, per (subject, balance field),
each with its remaining as of the last allocation. Every method runs under the store's lock
(the step calls `allocate` holding it already). A subject with grants is never dropped by the
store's expiry (its ``exp`` is `NEVER`): a balance outlives any window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tollway.engine.credits import (
    ADDED,
    BALANCE,
    CONFLICT,
    GRANT,
    MAX_GRANTS,
    NEVER,
    PAST,
    REVOKE,
    THERE,
    TOO_MANY,
    CreditsOp,
    CreditsReply,
    Grant,
    allocate,
    balance_field,
    draw_order,
)

__all__ = ["MemoryCredits"]


class MemoryCredits:
    """Grants, balance and revocation (`run`) for one `tollway.stores.memory.MemoryStore`."""

    def __init__(
        self,
        states: dict[str, dict[str, int]],
        lock: threading.Lock,
        clock: Callable[[], int],
    ) -> None:
        self._states = states
        self._lock = lock
        self._clock = clock
        self._grants: dict[tuple[str, str], dict[str, Grant]] = {}
        self._seq = 0

    def allocate(self, subject: str, field: str, now: int) -> int:
        """Bring the grants of ``field`` (``c:CUR``) up to date; the live balance after.
        Called with the lock held."""
        state = self._states.setdefault(subject, {})
        grants = self._grants.get((subject, field), {})
        live, total, nxt = allocate(list(grants.values()), state.get(field, 0), now)
        if live:
            self._grants[subject, field] = {g.id: g for g in live}
        else:
            self._grants.pop((subject, field), None)
        state[field] = total
        if nxt < NEVER:
            state[field + "^"] = nxt
        else:
            state.pop(field + "^", None)
        return total

    def run(self, op: CreditsOp) -> CreditsReply:
        """One `CreditsOp` (``lua/credits.lua``, line for line)."""
        field = balance_field(op.currency)
        with self._lock:
            now = self._clock()
            if op.op != GRANT and op.subject not in self._states:
                return CreditsReply(now, 0)
            total = self.allocate(op.subject, field, now)
            grants = self._grants.setdefault((op.subject, field), {})
            state = self._states[op.subject]
            if op.op == BALANCE:
                live = tuple(
                    Grant(g.id, g.micros, g.priority, g.expires_us, g.seq, g.remaining)
                    for g in draw_order(list(grants.values()))
                )
                return CreditsReply(now, total, grants=live)
            if op.op == REVOKE:
                gone = grants.pop(op.grant_id, None)
                if gone is None:
                    return CreditsReply(now, total)
                state[field] -= gone.remaining
                return CreditsReply(
                    now, self.allocate(op.subject, field, now), revoked=gone.remaining
                )
            old = grants.get(op.grant_id)
            if old is not None:
                terms = (old.micros, old.priority, old.expires_us)
                same = terms == (op.micros, op.priority, op.expires_us)
                return CreditsReply(now, total, THERE if same else CONFLICT, terms)
            if op.expires_us <= now:
                return CreditsReply(now, total, PAST)
            if len(grants) >= MAX_GRANTS:
                return CreditsReply(now, total, TOO_MANY)
            self._seq += 1
            grants[op.grant_id] = Grant(
                op.grant_id, op.micros, op.priority, op.expires_us, self._seq, op.micros
            )
            state[field] = total + op.micros
            if op.expires_us < state.get(field + "^", NEVER):
                state[field + "^"] = op.expires_us
            state["exp"] = NEVER  # never dropped by the store's expiry
            return CreditsReply(now, total + op.micros, ADDED)
