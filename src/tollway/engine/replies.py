"""What the store answers a step or a settle: one `Reply`, with a code from `ReplyCode`.

The codes are defined once, here; the Lua scripts get them substituted at load time
(``__OK__``, ``__DENIED__``... in ``stores/lua``, see `tollway.stores.redis_codec`), and the
memory store and the engine compare against the same members.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class ReplyCode(IntEnum):
    """The status of a store reply."""

    OK = 0
    """Taken (a settle: the hold was live)."""
    DENIED = 1
    """Not taken: a limit had no room (a settle: the hold had expired)."""
    PLAN_MISMATCH = 2
    """Built for another plan than the store holds: rebuild with the store's plan."""
    STALE_WINDOW = 3
    """Built for windows the store's clock is not in: rebuild on the store's clock."""
    EXPIRED = 4
    """Reached the store after its deadline and was not taken (the Redis store resends)."""
    DUPLICATE = 5
    """A repeat of a step taken under the caller's request id (same subject, operation, cost
    and amount): quotas and budgets were not counted again, rate limits were."""
    REPEATS = 6
    """Not taken: the request id was already repeated as often as ``[ledger] max_repeats``
    allows within ``dedupe_s``."""
    CONFLICT = 7
    """Not taken: the request id was taken by a step of another cost or amount."""

    @property
    def placeholder(self) -> str:
        """How the Lua scripts spell this code before it is substituted."""
        return f"__{self.name}__"


# The members, bound once: the hot path compares against these without an enum lookup.
OK = ReplyCode.OK
DENIED = ReplyCode.DENIED
PLAN_MISMATCH = ReplyCode.PLAN_MISMATCH
STALE_WINDOW = ReplyCode.STALE_WINDOW
EXPIRED = ReplyCode.EXPIRED
DUPLICATE = ReplyCode.DUPLICATE
REPEATS = ReplyCode.REPEATS
CONFLICT = ReplyCode.CONFLICT


def is_stale(code: int) -> bool:
    """Whether a step's reply says it was built on stale knowledge and must be rebuilt."""
    return PLAN_MISMATCH <= code <= EXPIRED


class Reply(NamedTuple):
    """The store's answer: a status code, the store's clock, and each rule's stored value
    (after the step when it was taken, as found when it was not)."""

    code: int
    now_us: int
    values: list[int]
    misfits: int = 0
    """Bit i set: rule i's cost did not fit (for a shadow rule: it would have denied)."""
    plan: str | None = None
    """With ``PLAN_MISMATCH``: the plan the store holds for the subject (None: unassigned)."""
    crossings: tuple[int, ...] = ()
    """Thresholds this step was the first to reach in their window: rule * 64 + threshold."""


_new_tuple = tuple.__new__


def reply(
    code: int,
    now_us: int,
    values: list[int],
    misfits: int = 0,
    plan: str | None = None,
    crossings: tuple[int, ...] = (),
) -> Reply:
    """A `Reply`, built without the NamedTuple constructor's Python-level overhead."""
    return _new_tuple(Reply, (code, now_us, values, misfits, plan, crossings))


__all__ = [
    "CONFLICT",
    "DENIED",
    "DUPLICATE",
    "EXPIRED",
    "OK",
    "PLAN_MISMATCH",
    "REPEATS",
    "STALE_WINDOW",
    "Reply",
    "ReplyCode",
    "is_stale",
    "reply",
]
