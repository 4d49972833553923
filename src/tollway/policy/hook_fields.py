"""Checkers for the values of a ``[[hooks]]`` entry (see `fields.py` for the conventions: one
raw value in, the typed value out or a `ValueError` naming the value and what was expected).
The patterns are shared with `schema.py`."""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

from tollway.netrules import address_refusal, literal_ip, scheme_refusal
from tollway.policy.fields import show

__all__ = [
    "CALLABLE_PATTERN",
    "HOOK_URL_PATTERN",
    "MAX_DELAY_S",
    "REDIS_URL_PATTERN",
    "SECRET_ENV_PATTERN",
    "delay_seconds",
    "hook_url_refusal",
    "is_redis_url",
    "parse_callable",
    "parse_hook_url",
    "parse_redis_url",
    "parse_secret_env",
]

HOOK_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
CALLABLE_PATTERN = rf"^{_DOTTED}:{_DOTTED}$"
SECRET_ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
REDIS_URL_PATTERN = r"^rediss?://"
MAX_DELAY_S = 7 * 86_400.0
"""The longest delay between two attempts a schedule may ask for (a week)."""

_CALLABLE = re.compile(CALLABLE_PATTERN)
_SECRET_ENV = re.compile(SECRET_ENV_PATTERN)


def parse_hook_url(value: str) -> str:
    """An http:// or https:// URL with a host and no credentials (a webhook's target)."""
    expected = 'expected an http:// or https:// URL such as "https://billing.example.com/hooks"'
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"{show(value)} holds spaces or control characters; {expected}")
    try:
        split = urlsplit(value)
        port = split.port
    except ValueError as exc:
        raise ValueError(f"{show(value)} is not a URL ({exc}); {expected}") from None
    if split.scheme.lower() not in ("http", "https"):
        scheme = f"its scheme is {show(split.scheme)}" if split.scheme else "it has no scheme"
        raise ValueError(f"{show(value)}: {scheme}; {expected}")
    if not split.hostname:
        raise ValueError(f"{show(value)} has no host; {expected}")
    if split.username is not None or split.password is not None:
        raise ValueError(
            "the URL holds credentials (user:password@), which are never sent; expected a URL "
            "without them (a webhook is authenticated by its signature)"
        )
    if port == 0:
        raise ValueError(f"{show(value)}: port 0; expected a port from 1 to 65535")
    return value


def hook_url_refusal(value: str, *, allow_http: bool, allow_private: bool) -> str | None:
    """Why a valid hook URL may not be delivered to (`tollway.netrules`), else None: plain
    http to a host that is not loopback, or a literal address inside the network (a name is
    checked on what it resolves to, at each delivery)."""
    split = urlsplit(value)
    host = split.hostname or ""
    refused = scheme_refusal(split.scheme, host, allow_http=allow_http)
    if refused is not None:
        return f"{show(value)}: {refused}"
    ip = literal_ip(host)
    refused = None if ip is None else address_refusal(ip, allow_private=allow_private)
    if refused is not None:
        return (
            f"{show(value)}: {refused}, refused so a hook cannot reach inside the network; "
            "expected a public address, or allow_private = true"
        )
    return None


def parse_callable(value: str) -> str:
    if not _CALLABLE.fullmatch(value):
        raise ValueError(
            f'{show(value)} is not a callable; expected "package.module:function" (imported '
            "when a dispatcher starts)"
        )
    return value


def is_redis_url(value: str) -> bool:
    return re.match(REDIS_URL_PATTERN, value) is not None


def parse_redis_url(value: str) -> str:
    if not is_redis_url(value) or value in ("redis://", "rediss://"):
        raise ValueError(
            f"{show(value)} is not a Redis URL; expected redis://HOST:PORT/DB or rediss://..."
        )
    return value


def parse_secret_env(value: str) -> str:
    """The name of the environment variable holding a webhook secret; never the secret."""
    if value.strip().startswith("whsec_"):
        raise ValueError(
            "this looks like a secret itself (whsec_...); expected the NAME of an environment "
            'variable holding it, such as "BILLING_HOOK_SECRET" (secrets never go in the file)'
        )
    if not _SECRET_ENV.fullmatch(value):
        raise ValueError(
            f"{show(value)} is not an environment variable name; expected letters, digits and "
            "underscores, not starting with a digit"
        )
    return value


def delay_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a delay in seconds (a number >= 0), got {show(value)}")
    if not math.isfinite(value) or not 0 <= value <= MAX_DELAY_S:
        raise ValueError(f"expected a delay from 0 to {MAX_DELAY_S:g} seconds, got {show(value)}")
    return float(value)
