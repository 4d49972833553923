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
from dataclasses import dataclass
from typing import Literal

from tollway.clock import US
from tollway.engine.decision import Decision
from tollway.engine.rules import CREDITS, GATE, RATE, Rule

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


class _Member:
    """One enforcing rule as the fields show it: everything that is the same on every
    response, worked out once per (plan, operation) check."""

    __slots__ = ("capacity", "emission", "index", "label", "name", "q", "qu", "rate", "rate_policy")

    def __init__(self, index: int, rule: Rule) -> None:
        self.index = index
        self.label = rule.name if rule.operation is None else f"{rule.name}:{rule.operation}"
        self.name = sf_string(self.label)
        self.rate = rule.kind == RATE
        self.emission = rule.emission_us
        self.capacity = rule.capacity_us
        self.qu: str | None = None
        if self.rate:
            self.q = rule.burst
            w = max(1, -(-self.q * self.emission // US))
            self.rate_policy = f"{self.name};q={self.q};w={w}"
        else:
            self.q = rule.soft
            self.rate_policy = ""
            if rule.money:
                self.qu = f"tollway-{(rule.currency or 'xxx').lower()}-micros"


class _Layout:
    """The enforcing rules of one check, and the last ``RateLimit-Policy`` value built for
    it: that value only changes when a window of another length starts."""

    __slots__ = ("last_policy", "members")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        # A prepaid balance has no window or reset: the RateLimit fields do not describe it.
        shown = [
            i
            for i, rule in enumerate(rules)
            if not rule.shadow and rule.kind not in (GATE, CREDITS)
        ]
        self.members = tuple(_Member(i, rules[i]) for i in shown)
        self.last_policy: tuple[object, str] = (None, "")


_LAYOUTS: dict[object, _Layout] = {}
_MAX_LAYOUTS = 4096

# One standing: (member, r, t, w, violated).
_Standing = tuple[_Member, int, int, int, bool]


def _layout(decision: Decision) -> _Layout:
    step = decision.step
    key = step.check if step.check is not None else decision.rules
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = _Layout(decision.rules)
    return layout


def _standings(decision: Decision, layout: _Layout) -> list[_Standing]:
    """Each enforcing limit's figures, from the decision's raw values (this runs on every
    response, so it is inlined arithmetic on integers, no objects per limit)."""
    step = decision.step
    now = decision.now_us
    values = decision.values
    misfits = decision.misfits
    windows = step.windows
    out: list[_Standing] = []
    for member in layout.members:
        i = member.index
        value = values[i]
        violated = bool(misfits >> i & 1)
        if member.rate:
            emission, capacity = member.emission, member.capacity
            reset = (value if value > now else now) - now
            r = (capacity - reset) // emission
            if r < 0:
                r = 0
            need = step.costs[i] * emission
            if violated and need <= capacity:
                wait = reset + need - capacity  # until the step's cost fits again
            elif r == 0:
                # The next unit is back when the bucket is one emission short of full capacity.
                wait = reset - (member.q - 1) * emission
            else:
                wait = reset
            out.append((member, r, -(-wait // US) if wait > 0 else 0, 0, violated))
        else:
            start, end, _ = windows[i]  # type: ignore[misc]
            r = member.q - value
            left = end - now
            w = -(-(end - start) // US)
            out.append(
                (
                    member,
                    r if r > 0 else 0,
                    -(-left // US) if left > 0 else 0,
                    w if w > 1 else 1,
                    violated,
                )
            )
    return out


def _policy_value(standings: list[_Standing]) -> str:
    return ", ".join(
        member.rate_policy
        or f"{member.name};q={member.q}"
        + ("" if member.qu is None else f";qu={sf_string(member.qu)}")
        + f";w={w}"
        for member, _, _, w, _ in standings
    )


def _limit_value(standings: list[_Standing]) -> str:
    return ", ".join([f"{member.name};r={r};t={t}" for member, r, t, _, _ in standings])


def _item(standing: _Standing) -> PolicyItem:
    member, r, t, w, violated = standing
    if member.rate:
        w = max(1, -(-member.q * member.emission // US))
    return PolicyItem(name=member.label, q=member.q, w=w, r=r, t=t, qu=member.qu, violated=violated)


def policy_items(decision: Decision) -> list[PolicyItem]:
    """Every enforcing limit of ``decision`` as a `PolicyItem`, in policy order (shadow limits
    left out; none for a degraded decision)."""
    if decision.degraded:
        return []
    return [_item(standing) for standing in _standings(decision, _layout(decision))]


def _closest(standings: list[_Standing]) -> _Standing | None:
    """The limit closest to exhaustion: smallest ``r/q`` (0 when ``q`` is 0); a tie goes to
    the largest ``t``, then to the first."""
    best: _Standing | None = None
    best_r, best_q = 0, 1
    for standing in standings:
        r, q = (standing[1], standing[0].q) if standing[0].q else (0, 1)
        # r/q < best_r/best_q, without division.
        if (
            best is None
            or r * best_q < best_r * q
            or (r * best_q == best_r * q and standing[2] > best[2])
        ):
            best, best_r, best_q = standing, r, q
    return best


def ratelimit_fields(decision: Decision, *, mode: Mode = "all") -> list[tuple[str, str]]:
    """``RateLimit-Policy`` and ``RateLimit`` for ``decision``: every enforcing limit
    (``"all"``), only the one closest to exhaustion (``"closest"``), or nothing (``"none"``).
    An empty list when there is nothing to say (no limits, a degraded decision)."""
    if mode == "none":
        return []
    if mode not in ("all", "closest"):
        raise ValueError(f"mode: {mode!r}; expected 'all', 'closest' or 'none'")
    if decision.degraded:
        return []
    layout = _layout(decision)
    standings = _standings(decision, layout)
    if mode == "closest":
        closest = _closest(standings)
        standings = [] if closest is None else [closest]
    elif standings:
        span = decision.step.span
        cached_span, policy = layout.last_policy
        if cached_span is not span:
            policy = _policy_value(standings)
            layout.last_policy = (span, policy)
        return [("RateLimit-Policy", policy), ("RateLimit", _limit_value(standings))]
    if not standings:
        return []
    return [("RateLimit-Policy", _policy_value(standings)), ("RateLimit", _limit_value(standings))]


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
        violated = [s[2] for s in _standings(decision, _layout(decision)) if s[4]]
        seconds = max([seconds, *violated])
    return ("Retry-After", str(seconds))


def legacy_fields(decision: Decision) -> list[tuple[str, str]]:
    """Opt-in ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (delay-seconds) for the
    limit closest to exhaustion, with the same numbers as its RateLimit item."""
    if decision.degraded:
        return []
    closest = _closest(_standings(decision, _layout(decision)))
    if closest is None:
        return []
    return [
        ("X-RateLimit-Limit", str(closest[0].q)),
        ("X-RateLimit-Remaining", str(closest[1])),
        ("X-RateLimit-Reset", str(closest[2])),
    ]
