"""What a provider's answer says about the provider: the contract between adapters and the router.

An adapter (a geocoder, or any client of a paid API) turns each answer into a `Signal`; the
router turns signals into health state shared by every process:

- ``ok``: the call worked. Closes a half-open circuit breaker, resets the error count.
- ``throttled``: too fast (HTTP 429). A cooldown of ``retry_after`` seconds that can only be
  extended, never shortened.
- ``exhausted``: out of quota or credit (HTTP 402, Google's ``OVER_DAILY_LIMIT`` /
  ``OVER_QUERY_LIMIT``, HERE's quota errors). Skipped until its own reset: the end of its
  quota or budget window (or ``reset_at`` when the provider says when).
- ``blocked``: refused outright (HTTP 401/403, a bad or disabled key). Skipped until someone
  clears it; retrying would not help.
- ``error``: a failure that may pass (5xx, a timeout, garbage). Counted by the circuit breaker.

``remaining`` and ``reset_at``, when the provider reports them (``X-RateLimit-Remaining``,
OpenCage's ``rate`` block), correct the local view of what is left: the provider's own count
wins when it says less is left than the local counters do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Literal

from tollway.errors import ProviderCallError

__all__ = ["SIGNAL_KINDS", "ProviderCallError", "Signal", "SignalKind", "parse_retry_after"]

SignalKind = Literal["ok", "throttled", "exhausted", "blocked", "error"]
SIGNAL_KINDS: tuple[SignalKind, ...] = ("ok", "throttled", "exhausted", "blocked", "error")


@dataclass(frozen=True, slots=True)
class Signal:
    """One answer's verdict on the provider (see the module's docstring)."""

    kind: SignalKind
    retry_after: float | None = None
    """Seconds to wait (``throttled``), from ``Retry-After`` or the provider's body."""
    remaining: int | None = None
    """Calls the provider says are left in its current window."""
    reset_at: float | None = None
    """When the provider says its window resets (seconds since the epoch)."""
    detail: str = ""
    """What the provider said, for logs and skip reasons (``"HTTP 429"``, ``"OVER_DAILY_LIMIT"``).
    """
    billed: bool = False
    """The call failed but may have been billed (a timeout after the request was sent): it is
    committed, not released, so the provider's budget never counts less than it was paid."""

    def __post_init__(self) -> None:
        if self.kind not in SIGNAL_KINDS:
            raise ValueError(f"kind: {self.kind!r}; expected one of {', '.join(SIGNAL_KINDS)}")
        if self.retry_after is not None and not self.retry_after >= 0:
            raise ValueError(f"retry_after: {self.retry_after!r}; expected seconds >= 0")
        if self.remaining is not None and self.remaining < 0:
            raise ValueError(f"remaining: {self.remaining!r}; expected a count >= 0")

    @classmethod
    def ok(cls, *, remaining: int | None = None, reset_at: float | None = None) -> Signal:
        return cls("ok", remaining=remaining, reset_at=reset_at)

    @classmethod
    def throttled(cls, retry_after: float | None = None, detail: str = "") -> Signal:
        return cls("throttled", retry_after=retry_after, detail=detail)

    @classmethod
    def exhausted(cls, detail: str = "", *, reset_at: float | None = None) -> Signal:
        return cls("exhausted", detail=detail, reset_at=reset_at, remaining=0)

    @classmethod
    def blocked(cls, detail: str = "") -> Signal:
        return cls("blocked", detail=detail)

    @classmethod
    def error(cls, detail: str = "", *, billed: bool = False) -> Signal:
        return cls("error", detail=detail, billed=billed)


def parse_retry_after(value: str | bytes | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3) as seconds from ``now``: delay-seconds (``"120"``) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``). None when absent or unreadable; a date in
    the past gives 0."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())
