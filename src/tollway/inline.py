"""Inline limits: a policy built from a few arguments, for the throttling that needs no file.

``inline_policy("5/s; 1000/hour")`` is the policy a file with one plan of those limits would
be, read by the same loader: a mistake is the same `PolicyError`, naming the key path
(``plans.inline.limits[0].rate: "5/x" is not a rate; ...``). It backs
``TollwayMiddleware(app, limits=...)`` and ``tollway.fastapi.limit(rate=..., burst=...)``;
the policy file is the way to grow from there (plans, API keys, budgets, events).

A limits string lists limits separated by ``;`` (or ``,``). Each is ``N/PERIOD``: with a
calendar word (``minute``, ``hour``, ``day``, ``week``, ``month``) it is a quota (``N`` units
per calendar window, reset at its start); with a short unit (``s``, ``m``, ``h``, ``d``, or a
multiple such as ``10s``) it is a rate (GCRA: evenly spaced, with ``burst`` allowed at once).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tollway.errors import ConfigurationError
from tollway.policy import load
from tollway.policy.fields import QUOTA_PATTERN
from tollway.policy.model import Policy

if TYPE_CHECKING:
    from tollway.client import AsyncTollway, Tollway

PLAN = "inline"
"""The name of the one plan an inline policy has (every subject is on it)."""
_QUOTA = re.compile(QUOTA_PATTERN)
_SEPARATORS = re.compile(r"[;,]")


def split_limits(limits: str) -> list[str]:
    """The items of a limits string, stripped; `ConfigurationError` if there are none."""
    if not isinstance(limits, str):
        raise ConfigurationError(f'limits: {limits!r} is not text; expected e.g. "5/s; 1000/hour"')
    items = [item.strip() for item in _SEPARATORS.split(limits)]
    if not any(items):
        raise ConfigurationError(f'limits: {limits!r} names no limit; expected e.g. "5/s"')
    return items


def _name(text: str) -> str:
    """A limit's name from its text ("5/s" -> "5-per-s"), as headers and problems show it."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text.replace("/", "-per-")).strip("-")
    return name[:64] or "limit"


def inline_limits(
    limits: str | None = None,
    *,
    rate: str | None = None,
    burst: int | None = None,
    quota: str | None = None,
) -> list[dict[str, Any]]:
    """The policy-file limits (``[plans.X] limits = [...]``) the arguments describe."""
    items: list[tuple[str, str]] = []
    if rate is not None:
        items.append(("rate", rate))
    if quota is not None:
        items.append(("quota", quota))
    for item in split_limits(limits) if limits is not None else []:
        items.append(("quota" if _QUOTA.fullmatch(item) else "rate", item))
    if not items:
        raise ConfigurationError(
            'inline limits: none given; pass limits="5/s; 1000/hour", rate="5/s" or '
            'quota="1000/hour"'
        )
    if burst is not None and not any(kind == "rate" for kind, _ in items):
        raise ConfigurationError(f"burst: {burst!r} needs a rate (e.g. rate='5/s', burst=10)")
    out: list[dict[str, Any]] = []
    taken: set[str] = set()
    for kind, text in items:
        name = base = _name(text) if isinstance(text, str) else kind
        n = 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        limit: dict[str, Any] = {"name": name, kind: text}
        if kind == "rate" and burst is not None:
            limit["burst"] = burst
        out.append(limit)
    return out


def inline_policy(
    limits: str | None = None,
    *,
    rate: str | None = None,
    burst: int | None = None,
    quota: str | None = None,
    store: str = "memory://",
    operation: str = "request",
    endpoints: Sequence[str] = ("* /", "* /*"),
    per_operation: bool = False,
) -> Policy:
    """The policy of the given limits on one operation (``endpoints``: by default every
    request), in one plan every subject is on, with the store at ``store`` (a URL: the
    memory store by default, ``redis://HOST:PORT/DB`` to share the counts between processes).

    ``per_operation``: each limit counts the operation alone (so that several inline
    policies on one Redis store keep their counters apart)."""
    chosen = inline_limits(limits, rate=rate, burst=burst, quota=quota)
    if per_operation:
        chosen = [{**limit, "per": "operation"} for limit in chosen]
    return load(
        {
            "store": {"url": store},
            "defaults": {"plan": PLAN},
            "operations": {operation: {"cost": 1, "endpoints": list(endpoints)}},
            "plans": {PLAN: {"limits": chosen}},
        }
    )


_Client = TypeVar("_Client", "Tollway", "AsyncTollway")


def inline_tollway(tollway: Any, limits: str | None, store: str | None, face: type[_Client]) -> Any:
    """The middleware's tollway: the one given, or one of ``face`` on the inline policy of
    ``limits`` (at ``store``); `ConfigurationError` for neither or both."""
    if tollway is not None:
        if limits is not None or store is not None:
            raise ConfigurationError(
                "limits= and store= build a tollway of their own; with tollway= given, put "
                "the limits in its policy (or drop tollway= for inline limits)"
            )
        return tollway
    if limits is None:
        raise ConfigurationError(
            'pass tollway=Tollway(policy) or AsyncTollway(policy), or inline limits="5/s; '
            '1000/hour" (with store="redis://..." to share them between processes)'
        )
    return face(inline_policy(limits, store=store or "memory://"))


__all__ = ["PLAN", "inline_limits", "inline_policy", "inline_tollway", "split_limits"]
