"""RFC 9457 problem details (``application/problem+json``) for denials and other errors.

Each function returns ``(status, headers, body)``: the middleware adds the RateLimit fields
(`tollway.http.headers.ratelimit_fields`) in the mode it was configured with.

- A denied decision: **429** with the draft's problem type ``quota-exceeded``, the violated
  policies by the same names as in the RateLimit fields, and ``Retry-After``.
- A degraded denial (the store could not be asked and a limit fails closed): **503** with the
  type ``temporary-reduced-capacity`` and ``Retry-After`` (the circuit breaker's cooldown).
  The decision's ``reason`` is not sent: it may name internal hosts; log it instead.
- Every problem carries ``Cache-Control: no-store`` (RFC 6585: a 429 must not be stored; the
  others describe one client's request). Money in extension members is written as strings.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from tollway.engine.decision import Decision
from tollway.http.headers import policy_items, retry_after_field

__all__ = [
    "PROBLEM_JSON",
    "QUOTA_EXCEEDED",
    "TEMPORARY_REDUCED_CAPACITY",
    "Problem",
    "problem",
    "problem_for",
]

PROBLEM_JSON = "application/problem+json"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
TEMPORARY_REDUCED_CAPACITY = (
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
)
_MEMBERS = frozenset(("type", "title", "status", "detail", "instance"))

Problem = tuple[int, list[tuple[str, str]], bytes]
"""``(status, headers, body)``."""


def _default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def problem(
    status: int,
    title: str,
    /,
    detail: str | None = None,
    *,
    type: str = "about:blank",  # the RFC 9457 member's name
    instance: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    **extensions: Any,
) -> Problem:
    """A problem response: ``problem(401, "Unknown API key", "...")``. Extension members with
    names that are not identifiers go through ``**{"violated-policies": [...]}``; they may not
    replace a standard member. ``headers`` are added after the content type and cache control.
    """
    if not 400 <= status <= 599:
        raise ValueError(f"status: {status}; expected an error status, 400 to 599")
    clash = _MEMBERS.intersection(extensions)
    if clash:
        raise ValueError(f"extension members {sorted(clash)} would replace standard members")
    body: dict[str, Any] = {"type": type, "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    body.update(extensions)
    encoded = json.dumps(body, separators=(",", ":"), default=_default).encode()
    fields = [("Content-Type", PROBLEM_JSON), ("Cache-Control", "no-store")]
    return status, fields + list(headers or ()), encoded


def _seconds(n: int) -> str:
    return f"{n} second" if n == 1 else f"{n} seconds"


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def problem_for(decision: Decision, *, instance: str | None = None) -> Problem:
    """The 429 (or, degraded, 503) problem response for a denied ``decision``."""
    if decision.allowed:
        raise ValueError("problem_for: the decision is allowed; there is no problem to report")
    retry = retry_after_field(decision)
    extra = [retry] if retry is not None else []
    if decision.degraded:
        wait = f"retry in {_seconds(int(retry[1]))}" if retry else "retry later"
        return problem(
            503,
            "Service temporarily unavailable",
            f"Usage limits cannot be checked right now, and this request is not served "
            f"without them; {wait}.",
            type=TEMPORARY_REDUCED_CAPACITY,
            instance=instance,
            headers=extra,
        )
    violated = [item.name for item in policy_items(decision) if item.violated]
    plural = len(violated) != 1
    what = f"Limit{'s' if plural else ''} {_quoted(violated)} {'are' if plural else 'is'}"
    if retry is not None:
        detail = f"{what} exhausted; retry in {_seconds(int(retry[1]))}."
    else:
        detail = (
            f"{what} exceeded, and this request costs more than a limit allows in all; "
            "it can never be served."
        )
    return problem(
        429,
        "Quota exceeded",
        detail,
        type=QUOTA_EXCEEDED,
        instance=instance,
        headers=extra,
        **{"violated-policies": violated},
    )
