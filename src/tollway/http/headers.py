"""Response fields built from a `Decision`: the IETF RateLimit fields, Retry-After, legacy fields.

The fields follow ``draft-ietf-httpapi-ratelimit-headers-10`` (RFC 9651 structured fields)::

    RateLimit-Policy: "burst";q=10;w=2, "hourly";q=1000;w=3600
    RateLimit: "burst";r=7;t=2, "hourly";r=912;t=2210

Pure functions, no web framework: the middleware decides when to send what.

How a limit becomes one policy item (every number a non-negative Integer, rounded up):

- **name**: the limit's name; a limit counted per operation (``per = "operation"``) is named
  ``name:operation`` on every response, because each operation has its own counter and a
  policy's name should stay the same across responses.
- **q**: a rate's burst, a quota's count (without grace), a budget's amount in micro-units of
  its currency (``"50.00 USD/day"`` gives ``q=50000000``), marked with the vendor quota unit
  ``qu="tollway-usd-micros"`` (the currency lowercased). Rates and quotas count units of cost
  and carry no ``qu``: a unit is a request when the operation costs 1.
- **w**: a rate's full refill time, burst x emission interval, at least 1 second (so that
  ``q/w`` is the sustained rate: ``"5/s"`` with burst 10 gives ``q=10;w=2``); a quota's or
  budget's window length (window end - window start).
- **r**: units (or micro-units) left before the limit says no.
- **t**: seconds until more quota is available to this client:

  - a window: until the window ends (its reset);
  - a rate that denied this step: until the step's cost fits again (the limit's own wait);
  - a rate with ``r == 0``: until the next unit drips back;
  - otherwise a rate: until it is whole again (its full refill, the rate's "reset").

  So a violated policy's ``t`` is exactly when that limit would admit the step, and
  ``Retry-After`` (the largest such wait) is never earlier than any violated ``t``.

Shadow limits never appear. Degraded decisions (taken without the store) have no figures and
give no fields.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from tollway.engine.decision import Decision
from tollway.engine.rules import RATE

__all__ = [
    "Mode",
    "PolicyItem",
    "legacy_fields",
    "policy_items",
    "ratelimit_fields",
    "retry_after_field",
    "sf_string",
]

Mode = Literal["all", "closest", "none"]
US = 1_000_000


@dataclass(frozen=True, slots=True)
class PolicyItem:
    """One limit as the RateLimit fields show it (see the module's docstring)."""

    name: str
    q: int
    w: int
    r: int
    t: int
    qu: str | None = None
    violated: bool = False
    """Whether this limit denied the step."""

    def policy_member(self) -> str:
        """This item as a member of ``RateLimit-Policy``."""
        unit = "" if self.qu is None else f";qu={sf_string(self.qu)}"
        return f"{sf_string(self.name)};q={self.q}{unit};w={self.w}"

    def limit_member(self) -> str:
        """This item as a member of ``RateLimit``."""
        return f"{sf_string(self.name)};r={self.r};t={self.t}"


@functools.lru_cache(maxsize=1024)
def sf_string(text: str) -> str:
    """``text`` as an RFC 9651 sf-string: quoted, ``\\`` and ``"`` escaped; printable ASCII
    only (policy names always are), anything else is a `ValueError`."""
    for char in text:
        if not " " <= char <= "~":
            raise ValueError(f"{text!r} cannot be an sf-string: {char!r} is not printable ASCII")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ceil(seconds: float) -> int:
    """Whole seconds, rounded up, never negative. Figures come from whole microseconds, so
    they are rounded back to them first (no float noise such as 2.0000000001)."""
    return max(0, -(-round(seconds * US) // US))


def _up(us: int) -> int:
    """Whole seconds from microseconds, rounded up, never negative."""
    return max(0, -(-us // US))


def policy_items(decision: Decision) -> list[PolicyItem]:
    """Every enforcing limit of ``decision`` as a `PolicyItem`, in policy order (shadow limits
    left out; none for a degraded decision). Built from the decision's raw figures: this runs
    on every response."""
    if decision.degraded:
        return []
    items = []
    for rule, admitted, (q, r, reset_us, retry_us), window in decision.standings():
        if rule.shadow:
            continue
        name = rule.name if rule.operation is None else f"{rule.name}:{rule.operation}"
        qu = None
        if rule.kind == RATE:
            emission = rule.emission_us
            w = max(1, -(-q * emission // US))
            if not admitted and retry_us is not None:
                t = _up(retry_us)
            elif r == 0:
                # The next unit is back when the bucket is one emission short of full capacity.
                t = _up(reset_us - (q - 1) * emission)
            else:
                t = _up(reset_us)
        else:
            assert window is not None
            w = max(1, _up(window[1] - window[0]))
            t = _up(reset_us)
            if rule.money:
                qu = f"tollway-{(rule.limit.currency or 'xxx').lower()}-micros"
        items.append(
            PolicyItem(name=name, q=q, w=w, r=max(0, r), t=t, qu=qu, violated=not admitted)
        )
    return items


def _closest(items: Iterable[PolicyItem]) -> PolicyItem | None:
    """The item closest to exhaustion: smallest ``r/q``; a tie goes to the largest ``t``."""
    return min(
        items,
        key=lambda i: (Fraction(i.r, i.q) if i.q else Fraction(0), -i.t),
        default=None,
    )


def ratelimit_fields(decision: Decision, *, mode: Mode = "all") -> list[tuple[str, str]]:
    """``RateLimit-Policy`` and ``RateLimit`` for ``decision``: every enforcing limit
    (``"all"``), only the one closest to exhaustion (``"closest"``), or nothing (``"none"``).
    An empty list when there is nothing to say (no limits, a degraded decision)."""
    if mode == "none":
        return []
    if mode not in ("all", "closest"):
        raise ValueError(f"mode: {mode!r}; expected 'all', 'closest' or 'none'")
    items = policy_items(decision)
    if mode == "closest":
        closest = _closest(items)
        items = [] if closest is None else [closest]
    if not items:
        return []
    return [
        ("RateLimit-Policy", _policy_field(tuple((i.name, i.q, i.w, i.qu) for i in items))),
        ("RateLimit", ", ".join(item.limit_member() for item in items)),
    ]


@functools.lru_cache(maxsize=1024)
def _policy_field(members: tuple[tuple[str, int, int, str | None], ...]) -> str:
    """The ``RateLimit-Policy`` value: the same for every response until a limit or a window
    length changes, so it is built once per distinct set."""
    return ", ".join(
        PolicyItem(name=name, q=q, w=w, r=0, t=0, qu=qu, violated=False).policy_member()
        for name, q, w, qu in members
    )


def retry_after_field(decision: Decision) -> tuple[str, str] | None:
    """``Retry-After`` in delay-seconds for a denied decision (429, or 503 when degraded),
    rounded up, at least 1, and never earlier than the ``t`` of a violated policy.

    None when the decision is allowed, and when it can never pass (its cost exceeds a limit
    outright, ``decision.retry_after is None``): waiting would not help, so no wait is named.
    """
    if decision.allowed:
        return None
    wait = decision.retry_after
    if wait is None:
        return None
    seconds = max(1, _ceil(wait))
    if not decision.degraded:
        seconds = max([seconds, *(item.t for item in policy_items(decision) if item.violated)])
    return ("Retry-After", str(seconds))


def legacy_fields(decision: Decision) -> list[tuple[str, str]]:
    """Opt-in ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (delay-seconds) for the
    limit closest to exhaustion, with the same numbers as its RateLimit item."""
    closest = _closest(policy_items(decision))
    if closest is None:
        return []
    return [
        ("X-RateLimit-Limit", str(closest.q)),
        ("X-RateLimit-Remaining", str(closest.r)),
        ("X-RateLimit-Reset", str(closest.t)),
    ]
