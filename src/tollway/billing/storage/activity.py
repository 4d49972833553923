"""Who has anything to bill, and whether a finalized period has changed since it was rated.

`first_activity` is where closing starts: every subject with a plan change, a grant or a
usage event, with the earliest of them (its first period). `changed_since` is the cheap test
a close runs before re-rating a finalized period: a late event of the period, or a plan change
effective before its end, recorded after the period was last rated.
"""

from __future__ import annotations

from tollway.billing.storage.sql import Dialect, mark, require_text
from tollway.metering.ledger.flows import Flow, Query

__all__ = ["changed_since", "first_activity"]


def first_activity(dialect: Dialect) -> Flow[dict[str, int]]:
    """Every subject billing knows of -> the microsecond of its first change, grant or event."""
    del dialect
    rows = yield Query(
        "SELECT subject, MIN(t) FROM ("
        " SELECT subject, MIN(effective_at_us) AS t FROM billing_plan_changes GROUP BY subject"
        " UNION ALL SELECT subject, MIN(granted_at_us) FROM billing_grants GROUP BY subject"
        " UNION ALL SELECT subject, MIN(occurred_at_us) FROM usage_events GROUP BY subject"
        ") AS firsts GROUP BY subject ORDER BY subject"
    )
    return {str(subject): int(first) for subject, first in rows}


def changed_since(
    dialect: Dialect, subject: str, start_us: int, end_us: int, after_us: int, until_us: int
) -> Flow[bool]:
    """Whether ``subject``'s period ``[start_us, end_us)`` got a usage event, or the subject a
    plan change effective before ``end_us``, recorded in ``[after_us, until_us]`` (from the
    last cut on, included: a record of that very microsecond may have come after the read)."""
    require_text("subject", subject)
    p = mark(dialect)
    rows = yield Query(
        "SELECT 1 FROM usage_events WHERE subject = "
        f"{p} AND occurred_at_us >= {p} AND occurred_at_us < {p}"
        f" AND recorded_at_us >= {p} AND recorded_at_us <= {p}"
        " UNION ALL SELECT 1 FROM billing_plan_changes WHERE subject = "
        f"{p} AND effective_at_us < {p} AND recorded_at_us >= {p} AND recorded_at_us <= {p}"
        " LIMIT 1",
        (subject, start_us, end_us, after_us, until_us, subject, end_us, after_us, until_us),
    )
    return bool(rows)
