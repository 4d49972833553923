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
    MAX_GRANTS,
    NEVER,
    Grant,
    allocate,
    balance_field,
    check_grant,
    conflict,
    draw_order,
)
from tollway.errors import BillingError

__all__ = ["MemoryCredits"]


class MemoryCredits:
    """Grants, balance and revocation for one `tollway.stores.memory.MemoryStore`."""

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

    def grant(
        self,
        subject: str,
        currency: str,
        grant_id: str,
        micros: int,
        priority: int = 0,
        expires_us: int | None = None,
    ) -> bool:
        """Add a grant; False when this very grant is there already (idempotent on its id);
        `GrantConflictError` when the id is there with other terms."""
        grant_id, micros, priority, expires = check_grant(grant_id, micros, priority, expires_us)
        field = balance_field(currency)
        with self._lock:
            now = self._clock()
            self.allocate(subject, field, now)
            grants = self._grants.setdefault((subject, field), {})
            old = grants.get(grant_id)
            if old is not None:
                conflict(
                    grant_id,
                    (old.micros, old.priority, old.expires_us),
                    (micros, priority, expires),
                )
                return False
            if expires <= now:
                raise BillingError(
                    f"grant {grant_id!r}: expires_us={expires} is not after the store's time "
                    f"{now}; expected an expiry in the future"
                )
            if len(grants) >= MAX_GRANTS:
                raise BillingError(
                    f"grant {grant_id!r}: {subject!r} has {len(grants)} live {currency} grants; "
                    f"expected at most {MAX_GRANTS} (revoke or let some expire first)"
                )
            self._seq += 1
            grants[grant_id] = Grant(grant_id, micros, priority, expires, self._seq, micros)
            state = self._states[subject]
            state[field] = state.get(field, 0) + micros
            if expires < state.get(field + "^", NEVER):
                state[field + "^"] = expires
            state["exp"] = NEVER  # never dropped by the store's expiry
            return True

    def balance(self, subject: str, currency: str) -> tuple[int, list[Grant]]:
        """The live balance (micro-units) at the store's now, and the live grants in draw
        order, each with what is left of it."""
        field = balance_field(currency)
        with self._lock:
            if subject not in self._states:
                return 0, []
            total = self.allocate(subject, field, self._clock())
            grants = self._grants.get((subject, field), {})
            return total, [
                Grant(g.id, g.micros, g.priority, g.expires_us, g.seq, g.remaining)
                for g in draw_order(list(grants.values()))
            ]

    def revoke(self, subject: str, currency: str, grant_id: str) -> int:
        """Remove what is left of a grant; the micro-units removed (0: no such live grant)."""
        field = balance_field(currency)
        with self._lock:
            if subject not in self._states:
                return 0
            self.allocate(subject, field, self._clock())
            grants = self._grants.get((subject, field), {})
            gone = grants.pop(grant_id, None)
            if gone is None:
                return 0
            state = self._states[subject]
            state[field] -= gone.remaining
            self.allocate(subject, field, self._clock())
            return gone.remaining
