"""Usage aggregates for rating, in SQL: one GROUP BY per period, not a Python loop per event.

An event counts for a period when ``start_us <= occurred_at_us < end_us`` and
``after_us < recorded_at_us <= as_of_us`` (``after_us`` None: no lower cut): the cut makes an
invoice a function of what the ledger held at ``as_of_us``, and ``after_us`` lets a re-rating
pick up only the late events. An event's amount counts when its currency is the billing
currency; it was drawn from prepaid credits when its ``limits`` name its plan's credits limit
(``json_each`` on SQLite, jsonb ``?`` on PostgreSQL).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from tollway.billing.records import UsageTotal
from tollway.billing.storage.sql import Dialect, mark
from tollway.errors import BillingError
from tollway.metering.ledger.events import COLUMNS, UsageEvent
from tollway.metering.ledger.flows import Flow, Query

__all__ = ["draw_sums", "trace", "usage_totals", "usage_totals_all"]

BOUNDARIES_MAX = 1000
TRACE_MAX = 10_000
UNIQUES_MAX = 32
SEGMENTS_MAX = 1000
WORK_MEM = "32MB"
"""PostgreSQL's memory for the hash of a period's groups (``SET LOCAL``: this transaction)."""


class _Builder:
    """One aggregate statement's text and parameters, built in order."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.p = mark(dialect)
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return self.p

    def drawn(self, credit_limits: Mapping[str | None, str]) -> str:
        """A condition: the event was paid by its plan's credits limit."""
        terms = []
        for plan, limit in sorted(credit_limits.items(), key=lambda kv: (kv[0] or "", kv[1])):
            on_plan = "plan IS NULL" if plan is None else f"plan = {self.bind(plan)}"
            if self.dialect == "postgres":
                has = f"limits ? {self.bind(limit)}"
            else:
                has = f"EXISTS (SELECT 1 FROM json_each(limits) WHERE value = {self.bind(limit)})"
            terms.append(f"({on_plan} AND {has})")
        return " OR ".join(terms) if terms else "FALSE"

    def plan(self, segments: Sequence[tuple[int, str | None]] | None) -> str:
        """The event's plan; an event recorded without one (``tw.record``) takes the plan in
        force at its time, from ``segments``: (start_us, plan) in time order."""
        if not segments:
            return "plan"
        if len(segments) > SEGMENTS_MAX:
            raise BillingError(f"plan_segments: {len(segments)}; at most {SEGMENTS_MAX}")
        cases = [
            f"WHEN occurred_at_us < {self.bind(int(start))} THEN {self._name(before)}"
            for (_, before), (start, _) in itertools.pairwise(segments)
        ]
        last = self._name(segments[-1][1])
        if not cases:
            return f"COALESCE(plan, {last})"
        return f"COALESCE(plan, CASE {' '.join(cases)} ELSE {last} END)"

    def _name(self, plan: str | None) -> str:
        return "NULL" if plan is None else self.bind(plan)

    def attribute(self, name: str) -> str:
        if self.dialect == "postgres":
            return f"(attributes ->> {self.bind(name)})"
        return f"json_extract(attributes, {self.bind(_json_path(name))})"

    def where(self, start_us: int, end_us: int, as_of_us: int, after_us: int | None) -> str:
        _check_window(start_us, end_us, as_of_us, after_us)
        sql = (
            f"occurred_at_us >= {self.bind(start_us)} AND occurred_at_us < {self.bind(end_us)}"
            f" AND recorded_at_us <= {self.bind(as_of_us)}"
        )
        if after_us is not None:
            sql += f" AND recorded_at_us > {self.bind(after_us)}"
        return sql


def _json_path(name: str) -> str:
    # A quoted label: a name with dots or brackets is one key, not a path.
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'$."{escaped}"'


def _check_window(start_us: int, end_us: int, as_of_us: int, after_us: int | None) -> None:
    for name, value in (("start_us", start_us), ("end_us", end_us), ("as_of_us", as_of_us)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise BillingError(f"{name}: {value!r} is not an int of microseconds")
    if end_us <= start_us:
        raise BillingError(f"end_us {end_us} is not after start_us {start_us}")
    if after_us is not None and (not isinstance(after_us, int) or after_us > as_of_us):
        raise BillingError(f"after_us: {after_us!r}; expected an int <= as_of_us {as_of_us}")


def _aggregate_sql(
    b: _Builder,
    *,
    by_subject: bool,
    currency: str,
    unique_attributes: Mapping[str, str],
    credit_limits: Mapping[str | None, str],
    plan_sql: str = "plan",
) -> tuple[str, list[tuple[str, str]]]:
    if len(unique_attributes) > UNIQUES_MAX:
        raise BillingError(f"unique_attributes: {len(unique_attributes)}; at most {UNIQUES_MAX}")
    uniques = sorted(unique_attributes.items())
    cols = [
        plan_sql,
        "meter",
        "SUM(quantity)",
        "COUNT(*)",
        f"COALESCE(SUM(CASE WHEN currency = {b.bind(currency)} THEN amount_micros END), 0)",
    ]
    drawn_currency = b.bind(currency)
    cols.append(
        f"COALESCE(SUM(CASE WHEN currency = {drawn_currency} AND ({b.drawn(credit_limits)})"
        " THEN amount_micros END), 0)"
    )
    cols += ["MIN(id)", "MAX(id)"]
    for meter, attribute in uniques:
        on_meter = b.bind(meter)
        cols.append(
            f"COUNT(DISTINCT CASE WHEN meter = {on_meter} THEN {b.attribute(attribute)} END)"
        )
    if by_subject:
        cols.insert(0, "subject")
    return ", ".join(cols), uniques


def _total(row: Sequence[Any], uniques: list[tuple[str, str]]) -> UsageTotal:
    meter = row[1]
    counted = {attr: int(row[8 + i]) for i, (m, attr) in enumerate(uniques) if m == meter}
    return UsageTotal(
        plan=row[0],
        meter=meter,
        quantity=int(row[2]),
        events=int(row[3]),
        amount_micros=int(row[4]),
        drawn_micros=int(row[5]),
        first_event=row[6],
        last_event=row[7],
        uniques=counted,
    )


def usage_totals(
    dialect: Dialect,
    subject: str,
    start_us: int,
    end_us: int,
    as_of_us: int,
    *,
    currency: str,
    after_us: int | None = None,
    unique_attributes: Mapping[str, str] | None = None,
    credit_limits: Mapping[str | None, str] | None = None,
    plan_segments: Sequence[tuple[int, str | None]] | None = None,
) -> Flow[list[UsageTotal]]:
    """``subject``'s usage of a period per (plan, meter), sorted by plan then meter.
    ``unique_attributes`` maps a meter to the attribute whose distinct values it counts;
    ``credit_limits`` a plan to the name of its credits limit; ``plan_segments`` (start_us,
    plan) the plans in force over the period, for events recorded without a plan."""
    b = _Builder(dialect)
    plan_sql = b.plan(plan_segments)  # bound first: it is the first column
    cols, uniques = _aggregate_sql(
        b,
        by_subject=False,
        currency=currency,
        unique_attributes=unique_attributes or {},
        credit_limits=credit_limits or {},
        plan_sql=plan_sql,
    )
    where = f"subject = {b.bind(subject)} AND " + b.where(start_us, end_us, as_of_us, after_us)
    rows = yield Query(f"SELECT {cols} FROM usage_events WHERE {where} GROUP BY 1, 2", b.params)
    return sorted((_total(row, uniques) for row in rows), key=_order)


def usage_totals_all(
    dialect: Dialect,
    start_us: int,
    end_us: int,
    as_of_us: int,
    *,
    currency: str,
    after_us: int | None = None,
    unique_attributes: Mapping[str, str] | None = None,
    credit_limits: Mapping[str | None, str] | None = None,
) -> Flow[dict[str, list[UsageTotal]]]:
    """`usage_totals` of every subject with usage in the period, in one query (closing a
    period): subject -> its totals."""
    uniques_of, limits = unique_attributes or {}, credit_limits or {}
    if dialect == "postgres" and uniques_of:
        _check_window(start_us, end_us, as_of_us, after_us)
        if len(uniques_of) > UNIQUES_MAX:
            raise BillingError(f"unique_attributes: {len(uniques_of)}; at most {UNIQUES_MAX}")
        sql, params = _hashable_sql(
            dialect, (start_us, end_us, as_of_us, after_us), currency, uniques_of, limits
        )
        uniques = sorted(uniques_of.items())
        yield Query(f"SET LOCAL work_mem = '{WORK_MEM}'")
    else:
        b = _Builder(dialect)
        cols, uniques = _aggregate_sql(
            b, by_subject=True, currency=currency, unique_attributes=uniques_of,
            credit_limits=limits,
        )  # fmt: skip
        where = b.where(start_us, end_us, as_of_us, after_us)
        sql = f"SELECT {cols} FROM usage_events WHERE {where} GROUP BY subject, plan, meter"
        params = b.params
    rows = yield Query(sql, params)
    out: dict[str, list[UsageTotal]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(_total(row[1:], uniques))
    return {subject: sorted(out[subject], key=_order) for subject in sorted(out)}


def _hashable_sql(
    dialect: Dialect,
    window: tuple[int, int, int, int | None],
    currency: str,
    unique_attributes: Mapping[str, str],
    credit_limits: Mapping[str | None, str],
) -> tuple[str, list[Any]]:
    """`usage_totals_all`'s statement for PostgreSQL with unique counts, the same columns in
    two steps: group by (subject, plan, meter, the value counted), then by (subject, plan,
    meter) counting the values. ``COUNT(DISTINCT ...)`` can only aggregate sorted rows, and
    sorting a month of events took most of the rating (bench/RATING_RESULTS.md); both steps
    here can hash. An event has one meter, so one column holds the value of its meter's
    attribute."""
    b = _Builder(dialect)
    uniques = sorted(unique_attributes.items())
    value = " ".join(f"WHEN meter = {b.bind(m)} THEN {b.attribute(a)}" for m, a in uniques)
    usd = b.bind(currency)
    paid = f"currency = {b.bind(currency)} AND ({b.drawn(credit_limits)})"
    inner = (
        f"SELECT subject, plan, meter, CASE {value} END AS v, SUM(quantity) AS q,"
        f" COUNT(*) AS n, SUM(CASE WHEN currency = {usd} THEN amount_micros END) AS a,"
        f" SUM(CASE WHEN {paid} THEN amount_micros END) AS d, MIN(id) AS lo, MAX(id) AS hi"
        f" FROM usage_events WHERE {b.where(*window)}"
        " GROUP BY subject, plan, meter, v"
    )
    counts = ", COUNT(v)" * len(uniques)  # each unique column: its meter's groups only count
    sql = (
        "SELECT subject, plan, meter, SUM(q), SUM(n), COALESCE(SUM(a), 0), COALESCE(SUM(d), 0),"
        f" MIN(lo), MAX(hi){counts} FROM ({inner}) AS g GROUP BY subject, plan, meter"
    )
    return sql, b.params


def _order(total: UsageTotal) -> tuple[str, str, bool]:
    return (total.plan or "", total.meter, total.plan is not None)


def draw_sums(
    dialect: Dialect,
    subject: str,
    currency: str,
    boundaries_us: Sequence[int],
    *,
    as_of_us: int,
    credit_limits: Mapping[str | None, str],
) -> Flow[list[int]]:
    """The amounts drawn from ``subject``'s credits in each interval
    ``[boundaries_us[i], boundaries_us[i+1])`` (one query): what the grant allocation replays."""
    bounds = [int(x) for x in boundaries_us]
    if not 2 <= len(bounds) <= BOUNDARIES_MAX or bounds != sorted(set(bounds)):
        raise BillingError(
            f"boundaries_us: {len(bounds)} values; expected 2..{BOUNDARIES_MAX} increasing"
        )
    b = _Builder(dialect)
    cases = " ".join(
        f"WHEN occurred_at_us < {b.bind(bound)} THEN {i}" for i, bound in enumerate(bounds[1:])
    )
    who = f"subject = {b.bind(subject)} AND currency = {b.bind(currency)}"
    drawn = b.drawn(credit_limits)  # bound after ``who``: the parameters follow the text
    sql = (
        f"SELECT CASE {cases} END AS k, SUM(amount_micros) FROM usage_events "
        f"WHERE {who} AND ({drawn})"
        f" AND occurred_at_us >= {b.bind(bounds[0])} AND occurred_at_us < {b.bind(bounds[-1])}"
        f" AND recorded_at_us <= {b.bind(as_of_us)} GROUP BY k"
    )
    rows = yield Query(sql, b.params)
    sums = [0] * (len(bounds) - 1)
    for k, total in rows:
        sums[int(k)] = int(total)
    return sums


def trace(
    dialect: Dialect,
    subject: str,
    meter: str,
    plan: str | None,
    start_us: int,
    end_us: int,
    as_of_us: int,
    *,
    after_us: int | None = None,
    cursor: str | None = None,
    limit: int = 100,
    plan_segments: Sequence[tuple[int, str | None]] | None = None,
) -> Flow[list[UsageEvent]]:
    """The events behind one line, in id order: at most ``limit``, from the id after
    ``cursor`` on (the last id of the page before)."""
    if not isinstance(limit, int) or not 1 <= limit <= TRACE_MAX:
        raise BillingError(f"limit: {limit!r}; expected 1..{TRACE_MAX}")
    b = _Builder(dialect)
    plan_sql = b.plan(plan_segments)
    where = (
        f"{plan_sql} "
        + ("IS NULL" if plan is None else f"= {b.bind(plan)}")
        + f" AND subject = {b.bind(subject)} AND meter = {b.bind(meter)} AND "
        + b.where(start_us, end_us, as_of_us, after_us)
    )
    if cursor is not None:
        where += f" AND id > {b.bind(cursor)}"
    sql = f"SELECT {', '.join(COLUMNS)} FROM usage_events WHERE {where} ORDER BY id LIMIT {limit}"
    rows = yield Query(sql, b.params)
    return [UsageEvent.from_row(row) for row in rows]
