"""``[admin]``: the control plane's settings (`tollway.admin`, ``tollway serve``).

    [admin]
    support_grant_max = "50.00 USD"   # the largest grant a support token may make at once
    token_ttl = "90d"                 # a new admin token's lifetime unless told otherwise
    rate = "20/s"                     # the admin API's rate per token
    sessions_ttl = "12h"              # a dashboard login's lifetime

Every key is optional; a bad one is reported with its key path like every other section's.
"""

from __future__ import annotations

import re

from tollway.policy import fields
from tollway.policy.fields import show, text
from tollway.policy.model import AdminConfig
from tollway.policy.walker import MONEY, Table, Walker

__all__ = ["ADMIN_KEYS", "SPAN_MAX_S", "parse_admin", "parse_span_s"]

ADMIN_KEYS = ("support_grant_max", "token_ttl", "rate", "sessions_ttl")
SPAN_MAX_S = 3650 * 86_400
"""Ten years: the longest span a token or a session may be given."""
_SPAN = re.compile(r"([0-9]{1,7})(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_span_s(value: str) -> int:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"`` as seconds, from 1 s to ten years."""
    match = _SPAN.fullmatch(value)
    if match is None:
        raise ValueError(
            f'{show(value)} is not a duration; expected a number and s|m|h|d like "90d"'
        )
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if not 1 <= seconds <= SPAN_MAX_S:
        raise ValueError(f"{show(value)}: expected from 1s to 3650d")
    return seconds


def parse_admin(w: Walker, doc: Table) -> AdminConfig:
    t, d, p = w.section(doc, "admin", ADMIN_KEYS), AdminConfig(), "admin"
    span = text(parse_span_s, "90d")
    return AdminConfig(
        support_grant_max=w.get(t, p, "support_grant_max", MONEY, d.support_grant_max),
        token_ttl_s=w.get(t, p, "token_ttl", span, d.token_ttl_s),
        rate=w.get(t, p, "rate", text(fields.parse_rate, "20/s"), d.rate),
        sessions_ttl_s=w.get(t, p, "sessions_ttl", span, d.sessions_ttl_s),
    )
