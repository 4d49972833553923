"""Which prepaid grant paid what: the draws of a subject, allocated to its grants.

The step draws from the balance the store keeps; billing recomputes, from the ledger's grants
and draw events, which grant each draw came from, so an invoice can show what credits paid
grant by grant. A grant is usable on ``[granted_us, expires_us)``; a draw takes from the
usable grants in the draw order: the highest ``priority`` first, then the soonest expiry (no
expiry last), then the oldest grant, then the smallest id. A negative draw (a refund of a
step) gives back to the grants last drawn, newest draw first. What a grant still holds at its
expiry has expired.

The facade passes draws as sums per interval between change points (`change_points`: grant
times, expiries and the period's bounds), each dated at its interval's start. Allocating a
sum equals allocating the interval's draws one by one: no grant starts or ends inside an
interval, so the usable grants and their order are fixed there, and a greedy fill over a
fixed order leaves the grants in a state that depends only on how much was drawn in all (a
refund undoes the newest draws first, the same state again). That holds while the running
sum of an interval stays >= 0, which refunds of that interval's own draws guarantee.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tollway.billing.records import GrantRecord

__all__ = ["Allocation", "allocate", "change_points", "draw_order"]

Draw = tuple[int, int]
"""(when: microseconds, micro-units drawn; negative: given back)."""


def draw_order(grant: GrantRecord) -> tuple[int, float | int, int, str]:
    """The sort key of the draw order (smallest first)."""
    expiry: float | int = float("inf") if grant.expires_us is None else grant.expires_us
    return (-grant.priority, expiry, grant.granted_us, grant.id)


def change_points(grants: Iterable[GrantRecord], start_us: int, end_us: int) -> list[int]:
    """The instants of ``[start_us, end_us]`` where the usable grants change, with both
    bounds: draws summed between two neighbours allocate as one."""
    points = {start_us, end_us}
    for grant in grants:
        for t in (grant.granted_us, grant.expires_us):
            if t is not None and start_us < t < end_us:
                points.add(t)
    return sorted(points)


@dataclass(frozen=True, slots=True)
class Allocation:
    """What each grant paid within the window asked, and what expired in it (micro-units)."""

    drawn: dict[str, int] = field(default_factory=dict)
    """Per grant id: the net it paid for draws in the window (in the draw order of grants)."""
    expired: dict[str, int] = field(default_factory=dict)
    """Per grant id: what it still held when it expired within the window."""
    remaining: dict[str, int] = field(default_factory=dict)
    """Per grant id: what it holds at the window's end (0 once expired)."""
    uncovered: int = 0
    """Draws in the window that no grant could cover (the store never lets that happen;
    kept so a total always reconciles). It counts as the newest draw: a refund gives it
    back first."""

    @property
    def total(self) -> int:
        return sum(self.drawn.values())


def allocate(
    grants: Sequence[GrantRecord],
    draws: Sequence[Draw],
    start_us: int | None = None,
    end_us: int | None = None,
) -> Allocation:
    """Allocate every draw (from the first) to the grants; report the window
    ``[start_us, end_us)`` (None: unbounded)."""
    order = sorted(grants, key=draw_order)
    left = {g.id: g.amount_micros for g in order}
    drawn: dict[str, int] = {}
    expired: dict[str, int] = {}
    stack: list[list[object]] = []  # [grant id, micros] of the draws, newest last
    uncovered = 0
    lo = start_us if start_us is not None else -(2**63)
    hi = end_us if end_us is not None else 2**63
    expiries = sorted(
        (g.expires_us, g.id) for g in order if g.expires_us is not None and g.expires_us < hi
    )

    def expire_until(t: int) -> None:
        while expiries and expiries[0][0] <= t:
            when, gid = expiries.pop(0)
            if left[gid] > 0 and when >= lo:
                expired[gid] = expired.get(gid, 0) + left[gid]
            left[gid] = 0

    for t, micros in sorted(draws, key=lambda d: d[0]):
        if t >= hi:
            break
        expire_until(t)
        inside = t >= lo
        if micros >= 0:
            need = micros
            for g in order:
                if need == 0:
                    break
                usable = g.granted_us <= t and (g.expires_us is None or t < g.expires_us)
                take = min(need, left[g.id]) if usable else 0
                if take > 0:
                    left[g.id] -= take
                    need -= take
                    stack.append([g.id, take])
                    if inside:
                        drawn[g.id] = drawn.get(g.id, 0) + take
            if need > 0:
                stack.append([None, need])  # uncovered: the newest part, refunded first
                if inside:
                    uncovered += need
        else:
            back = -micros
            while back > 0 and stack:
                gid, took = stack[-1]
                assert isinstance(took, int)
                give = min(back, took)
                back -= give
                if gid is None:
                    uncovered -= give if inside else 0
                else:
                    assert isinstance(gid, str)
                    left[gid] += give
                    if inside:
                        drawn[gid] = drawn.get(gid, 0) - give
                if give == took:
                    stack.pop()
                else:
                    stack[-1][1] = took - give
            if inside:
                uncovered -= back
    expire_until(hi - 1)
    ranked = {g.id: n for n, g in enumerate(order)}
    return Allocation(
        drawn={k: drawn[k] for k in sorted(drawn, key=ranked.__getitem__) if drawn[k]},
        expired=expired,
        remaining=left,
        uncovered=uncovered,
    )
