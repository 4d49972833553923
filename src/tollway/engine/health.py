"""Changes to a provider's health gates, as the stores apply them atomically.

The gates themselves are rules of the provider's checks (`tollway.engine.rules.GATE`), read
by the same step that reserves its limits; these operations are how the router writes them
when a provider answers. Every time is on the store's clock, so processes agree.

- `EXTEND`: push a gate's time out to ``max(until_us, now + for_us)``; never pulls it in, so a
  cooldown is only ever extended.
- `ERROR`: count one error toward the circuit breaker (in a window of ``window_us`` that starts
  at the first error); at ``threshold`` errors the breaker opens for ``open_us``. ``force``
  opens it at once (a half-open probe failed). Errors while it is open are not counted.
- `CLOSE`: close the breaker and forget its errors (a half-open probe succeeded).
- `CLEAR`: open every gate (an operator's reset).
- `FLOOR`: raise a quota counter of the current window to at least ``hard - remaining``
  (the provider says fewer calls are left than the counter does); never lowers it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tollway.engine.rules import GATES

EXTEND = "extend"
ERROR = "error"
CLOSE = "close"
CLEAR = "clear"
FLOOR = "floor"

BREAKER = "g:breaker"
ERRORS = "he"
"""The breaker's error count; ``he@`` holds when its counting window started."""
GATE_FIELDS = tuple(f"g:{name}" for name in GATES)


@dataclass(frozen=True, slots=True)
class HealthOp:
    subject: str
    op: str
    field: str = ""
    until_us: int = 0
    for_us: int = 0
    threshold: int = 0
    window_us: int = 0
    open_us: int = 0
    force: bool = False
    start_us: int = 0
    end_us: int = 0
    hard: int = 0
    remaining: int = 0

    def args(self) -> list[object]:
        """The health script's ARGV (see ``lua/health.lua``)."""
        if self.op == EXTEND:
            return [self.op, self.field, self.until_us, self.for_us]
        if self.op == ERROR:
            return [self.op, self.threshold, self.window_us, self.open_us, int(self.force)]
        if self.op == FLOOR:
            return [self.op, self.field, self.start_us, self.end_us, self.hard, self.remaining]
        return [self.op]


@dataclass(frozen=True, slots=True)
class HealthReply:
    now_us: int
    value: int
    """The gate's time after the operation (the counter's value for `FLOOR`)."""
    errors: int = 0
    """The breaker's error count after an `ERROR`."""


__all__ = [
    "BREAKER",
    "CLEAR",
    "CLOSE",
    "ERROR",
    "ERRORS",
    "EXTEND",
    "FLOOR",
    "GATE_FIELDS",
    "HealthOp",
    "HealthReply",
]
