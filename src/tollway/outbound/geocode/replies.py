"""What a provider's reply says beyond its result: rate headers, OpenCage's ``rate`` block,
the provider's own error message, and Google's ``status`` page read as a `Signal`. No geopy
here: plain pages and headers in, numbers and signals out."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from tollway.outbound.geocode.answers import BadAnswer, parse_json
from tollway.outbound.signals import Signal, parse_retry_after

__all__ = [
    "DETAIL_MAX",
    "RateInfo",
    "clip",
    "google_signal",
    "json_or_none",
    "message_of",
    "rate_block",
    "read_rate_headers",
    "retry_after_of",
]

DETAIL_MAX = 200
"""Characters of a provider's message kept in a signal's detail."""


class RateInfo(NamedTuple):
    remaining: int | None
    reset_at: float | None
    """Seconds since the epoch."""


def read_rate_headers(headers: Mapping[str, str], now: float | None = None) -> RateInfo:
    """``X-RateLimit-Remaining`` / ``X-RateLimit-Reset`` (also the ``X-Rate-Limit-*`` and
    ``RateLimit-*`` spellings). A reset below 10**9 is a delay in seconds (the IETF RateLimit
    draft's form), above it a Unix time (OpenCage's, Mapbox's)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    remaining = first_number(lowered, "remaining")
    reset = first_number(lowered, "reset")
    if reset is not None and reset < 1e9:
        reset += time.time() if now is None else now
    return RateInfo(None if remaining is None else max(0, int(remaining)), reset)


def first_number(headers: Mapping[str, str], what: str) -> float | None:
    for prefix in ("x-ratelimit-", "x-rate-limit-", "ratelimit-"):
        value = headers.get(prefix + what)
        if value is None:
            continue
        try:
            number = float(value.strip())
        except ValueError:
            continue
        if math.isfinite(number) and number >= 0:
            return number
    return None


def google_signal(page: Mapping[str, Any], headers: Mapping[str, str]) -> Signal:
    """Google answers its errors with HTTP 200 and a ``status``; geopy turns REQUEST_DENIED
    into a query error, so read the status itself."""
    status = str(page.get("status"))
    message = page.get("error_message")
    detail = clip(f"{status}: {message}" if message else status)
    if status == "OVER_DAILY_LIMIT":
        return Signal.exhausted(detail)
    if status == "OVER_QUERY_LIMIT":
        # Google uses it for "too fast" (its per-minute quota) as well as "over your quota".
        # With a Retry-After it is a pace to keep; without one, the contract's reading:
        # out of quota until the window resets.
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is not None:
            return Signal.throttled(retry_after, detail)
        return Signal.exhausted(detail)
    if status == "REQUEST_DENIED":
        return Signal.blocked(detail)
    return Signal.error(detail)  # INVALID_REQUEST, UNKNOWN_ERROR, anything undocumented


def retry_after_of(from_geopy: float | None, headers: Mapping[str, str]) -> float | None:
    """geopy's reading of Retry-After; else ours (geopy's HereV7 drops it); else the end of
    the rate window (Mapbox sends X-Rate-Limit-Reset, no Retry-After)."""
    if from_geopy is not None:
        return max(0.0, float(from_geopy))
    parsed = parse_retry_after(headers.get("retry-after"))
    if parsed is not None:
        return parsed
    reset_at = read_rate_headers(headers).reset_at
    return None if reset_at is None else max(0.0, reset_at - time.time())


def rate_block(page: Any) -> RateInfo:
    """OpenCage's ``rate {limit, remaining, reset}`` (free-trial accounts only)."""
    rate = page.get("rate") if isinstance(page, dict) else None
    if not isinstance(rate, dict):
        return RateInfo(None, None)
    remaining, reset = rate.get("remaining"), rate.get("reset")
    remaining = (
        remaining if isinstance(remaining, int) and not isinstance(remaining, bool) else None
    )
    if not isinstance(reset, (int, float)) or isinstance(reset, bool) or not _finite(reset):
        reset = None
    return RateInfo(
        None if remaining is None else max(0, remaining),
        None if reset is None else float(reset),
    )


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer past any float
        return False


def message_of(body: Any) -> str:
    """The provider's own words in an error body."""
    if not isinstance(body, dict):
        return ""
    status = body.get("status")
    if isinstance(status, dict) and status.get("message"):  # OpenCage
        return str(status["message"])
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):  # Nominatim
        return str(error["message"])
    for key in ("title", "error_description", "message", "error_message", "error"):
        if body.get(key):  # HERE API / HERE gateway / Mapbox / Google / Nominatim (old)
            return str(body[key])
    return ""


def json_or_none(text: str | None) -> Any:
    """The JSON of an error body, or None (also when it is hostile: see `parse_json`)."""
    if not text:
        return None
    try:
        return parse_json(text)
    except BadAnswer:
        return None


def clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"
