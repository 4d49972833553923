"""What the ledger asks its database, and how it reads the answers: pure, no I/O.

Every backend (SQLite, PostgreSQL sync and async) builds its statements here and folds the rows
it gets back with the same functions, so the backends differ only in how they talk to their
driver. Placeholders are the driver's (``?`` for sqlite3, ``%s`` for psycopg).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tollway.engine.windows import window_at
from tollway.errors import InvalidArgumentError, InvalidUsageEventError, LedgerError
from tollway.metering.ledger.events import COLUMNS, INT64_MAX, UsageEvent
from tollway.money import micros_to_decimal
from tollway.policy.model import PERIODS, Period

__all__ = [
    "MAX_BUCKETS",
    "Conflict",
    "PeriodUsage",
    "PreparedBatch",
    "Totals",
    "WriteResult",
]

MAX_BUCKETS = 10_000
"""At most this many periods in one `usage` answer (a year of hours, 27 years of days)."""

_COLS = ", ".join(COLUMNS)


# =========================================================================== answers


@dataclass(frozen=True, slots=True)
class Totals:
    """What a meter adds up to: ``quantity`` units and ``amount_micros`` of ``currency``."""

    quantity: int = 0
    amount_micros: int = 0
    events: int = 0
    """How many events were added."""
    currency: str | None = None
    """The currency of ``amount_micros``; None when no event carried an amount."""

    @property
    def amount(self) -> Decimal:
        return micros_to_decimal(self.amount_micros)


@dataclass(frozen=True, slots=True)
class PeriodUsage:
    """One calendar period of a `usage` answer, with the totals of each meter in it."""

    start_us: int
    end_us: int
    """``[start_us, end_us)``: the period's bounds, clipped to the range that was asked for."""
    label: str
    """The period's local start: ``2024-03-10`` (day, week), ``2024-03`` (month;
    ``2024-03-15`` anchored on the 15th), ``2024-03-10T01:00-05:00`` (hour, minute)."""
    totals: dict[str, Totals] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Conflict:
    """An event id already recorded with another payload: the first one was kept."""

    event_id: str
    fields: tuple[str, ...]
    """The payload fields that differ (``recorded_at_us`` never counts)."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one `insert` did with its batch."""

    inserted: int
    """Events that were new and are now recorded."""
    duplicates: int
    """Events already recorded with the same payload (or repeated in the batch): skipped."""
    conflicts: tuple[Conflict, ...] = ()
    """Events whose id was recorded with a different payload: the first one was kept."""
    notices: int = 0
    """`Ledger.commit`: notices that were new and are now recorded."""
    enqueued: int = 0
    """`Ledger.commit`: hook messages enqueued plus additions to aggregation buckets."""


# =========================================================================== writing


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    events: list[UsageEvent]
    """Unique by id, first occurrence first."""
    rows: list[tuple[Any, ...]]
    repeated: int
    """Events repeated inside the batch with the same payload."""
    conflicts: list[Conflict]
    """Events repeated inside the batch with a different payload."""


def prepare(events: Iterable[object]) -> PreparedBatch:
    """Check that every item is a `UsageEvent` (the whole batch is refused otherwise) and drop
    repeats of an id inside the batch, keeping the first."""
    if isinstance(events, (UsageEvent, str, bytes)) or not isinstance(events, Iterable):
        raise InvalidArgumentError(
            f"insert() takes an iterable of UsageEvent, not a {type(events).__name__}"
        )
    unique: dict[str, UsageEvent] = {}
    repeated = 0
    conflicts: list[Conflict] = []
    for index, event in enumerate(events):
        if not isinstance(event, UsageEvent):
            raise InvalidUsageEventError(
                f"a {type(event).__name__} is not a UsageEvent; nothing of the batch was written",
                field=f"events[{index}]",
            )
        first = unique.setdefault(event.id, event)
        if first is not event:
            diff = first.differences(event)
            if diff:
                conflicts.append(Conflict(event.id, diff))
            else:
                repeated += 1
    kept = list(unique.values())
    return PreparedBatch(kept, [event.to_row() for event in kept], repeated, conflicts)


def finish(batch: PreparedBatch, inserted: int, stored: Iterable[Sequence[Any]]) -> WriteResult:
    """The result of a write: ``inserted`` rows were new; ``stored`` are rows of the database
    with ids of the batch (read after the insert, in its transaction), which tell duplicates
    (same payload) from conflicts."""
    conflicts = list(batch.conflicts)
    if inserted < len(batch.events):
        by_id = {event.id: event for event in batch.events}
        for row in stored:
            given = by_id.get(row[0])
            if given is None:
                continue
            diff = UsageEvent.from_row(row).differences(given)
            if diff:
                conflicts.append(Conflict(given.id, diff))
    duplicates = len(batch.events) - inserted - (len(conflicts) - len(batch.conflicts))
    return WriteResult(inserted, batch.repeated + duplicates, tuple(conflicts))


def insert_sql(param: str) -> str:
    """One row, ``ON CONFLICT (id) DO NOTHING`` (not ``INSERT OR IGNORE``, which would also
    swallow a failed CHECK)."""
    marks = ", ".join([param] * len(COLUMNS))
    return f"INSERT INTO usage_events ({_COLS}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"


def select_by_ids_sql(param: str, count: int) -> str:
    marks = ", ".join([param] * count)
    return f"SELECT {_COLS} FROM usage_events WHERE id IN ({marks})"


# =========================================================================== reading


def _check_range(start_us: int, end_us: int, as_of_us: int | None) -> None:
    for name, value in (("start_us", start_us), ("end_us", end_us), ("as_of_us", as_of_us)):
        if value is None and name == "as_of_us":
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgumentError(f"{name}: {value!r} is not an int (microseconds)")
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise InvalidArgumentError(f"{name}: {value} is outside the 64-bit range")
    if end_us < start_us:
        raise InvalidArgumentError(f"end_us {end_us} is before start_us {start_us}")


def _check_name(what: str, value: str | None, *, required: bool = False) -> None:
    if (value is not None or required) and not isinstance(value, str):
        raise InvalidArgumentError(f"{what}: {value!r} is not a str")


def _filters(
    param: str, prefix: str, as_of_us: int | None, meter: str | None, operation: str | None
) -> tuple[str, list[Any]]:
    sql: list[str] = []
    params: list[Any] = []
    if as_of_us is not None:
        sql.append(f" AND {prefix}recorded_at_us <= {param}")
        params.append(as_of_us)
    if meter is not None:
        sql.append(f" AND {prefix}meter = {param}")
        params.append(meter)
    if operation is not None:
        sql.append(f" AND {prefix}operation = {param}")
        params.append(operation)
    return "".join(sql), params


Instant = Union[datetime, int]  # noqa: UP007 (a runtime alias)
"""A point in time: a timezone-aware datetime, or integer microseconds since the epoch."""


def instant(value: object, name: str) -> int:
    """``value`` as microseconds since the epoch; `InvalidArgumentError` naming ``name``."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidArgumentError(
                f"{name}: {value.isoformat()} has no timezone; expected an aware datetime "
                "(e.g. datetime(2026, 12, 1, tzinfo=timezone.utc))"
            )
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(
            f"{name}: {value!r} is a {type(value).__name__}; expected a timezone-aware "
            "datetime or integer microseconds since the epoch"
        )
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def totals_query(
    param: str,
    subject: str,
    start_us: int,
    end_us: int,
    *,
    as_of_us: int | None,
    meter: str | None,
    operation: str | None,
) -> tuple[str, list[Any]]:
    """Rows of ``(meter, currency, events, quantity, amount)``."""
    _check_name("subject", subject, required=True)
    _check_name("meter", meter)
    _check_name("operation", operation)
    _check_range(start_us, end_us, as_of_us)
    extra, extra_params = _filters(param, "", as_of_us, meter, operation)
    sql = (
        "SELECT meter, currency, COUNT(*), SUM(quantity), SUM(amount_micros) "
        "FROM usage_events "
        f"WHERE subject = {param} AND occurred_at_us >= {param} AND occurred_at_us < {param}"
        f"{extra} GROUP BY meter, currency"
    )
    return sql, [subject, start_us, end_us, *extra_params]


def fold_totals(rows: Iterable[Sequence[Any]]) -> dict[str, Totals]:
    """Rows of ``(meter, currency, events, quantity, amount)`` -> totals per meter. A meter's
    events without an amount add to its quantity only; two currencies in one meter cannot be
    added up and raise `LedgerError`."""
    out: dict[str, Totals] = {}
    for meter, currency, events, quantity, amount in rows:
        before = out.get(meter, Totals())
        if currency is not None and before.currency not in (None, currency):
            raise LedgerError(
                f"meter {meter!r} holds amounts in both {before.currency} and {currency}: "
                "its totals cannot add them up"
            )
        out[meter] = Totals(
            quantity=before.quantity + int(quantity or 0),
            amount_micros=before.amount_micros + int(amount or 0),
            events=before.events + int(events),
            currency=currency if currency is not None else before.currency,
        )
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class Buckets:
    bounds: list[tuple[int, int]]
    labels: list[str]


def period_buckets(
    start_us: int, end_us: int, *, period: str, tz: str, anchor: int | None
) -> Buckets:
    """The calendar periods (``tollway.engine.windows.window_at``) that cover
    ``[start_us, end_us)``, the first and last clipped to it."""
    _check_range(start_us, end_us, None)
    if period not in PERIODS:
        raise InvalidArgumentError(
            f"period: {period!r} is not a period; expected one of {', '.join(PERIODS)}"
        )
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"tz: {tz!r} is not a known IANA timezone") from exc
    if anchor is not None and (
        period != "month" or not isinstance(anchor, int) or not 1 <= anchor <= 31
    ):
        raise InvalidArgumentError(f"anchor: {anchor!r}; expected a day 1..31 for a month")
    kind: Period = period
    bounds: list[tuple[int, int]] = []
    labels: list[str] = []
    at = start_us
    while at < end_us:
        lo, hi = window_at(kind, tz, anchor, at)
        if len(bounds) == MAX_BUCKETS:
            raise InvalidArgumentError(
                f"[{start_us}, {end_us}) holds more than {MAX_BUCKETS} {period} periods: "
                "ask for a shorter range or a longer period"
            )
        bounds.append((max(lo, start_us), min(hi, end_us)))
        labels.append(_label(kind, zone, lo))
        at = hi
    return Buckets(bounds, labels)


def _label(period: Period, zone: ZoneInfo, start_us: int) -> str:
    local = datetime.fromtimestamp(start_us / 1_000_000, tz=timezone.utc).astimezone(zone)
    if period == "month":  # an anchored month starts on its anchor day
        return local.strftime("%Y-%m") if local.day == 1 else local.date().isoformat()
    if period in ("day", "week"):
        return local.date().isoformat()
    return local.isoformat(timespec="minutes")


UsageStyle = Literal["values", "width_bucket"]


def usage_query(
    param: str,
    subject: str,
    buckets: Buckets,
    *,
    as_of_us: int | None,
    meter: str | None,
    operation: str | None,
    style: UsageStyle = "values",
) -> tuple[str, list[Any]]:
    """Rows of ``(bucket index, meter, currency, events, quantity, amount)``, in one query over
    one range scan of the (subject, [meter,] occurred_at) index.

    - ``width_bucket`` (PostgreSQL): each row's period is found by a binary search over the
      array of period starts (``width_bucket(x, thresholds)``).
    - ``values`` (SQLite): the periods as a VALUES list driving the loop (``CROSS JOIN`` keeps
      SQLite from reordering it), each period one index range scan. The bounds are integers
      computed here, written as literals: no injection surface.
    """
    _check_name("subject", subject, required=True)
    _check_name("meter", meter)
    _check_name("operation", operation)
    if as_of_us is not None:
        _check_range(0, 0, as_of_us)
    start, end = buckets.bounds[0][0], buckets.bounds[-1][1]
    if style == "width_bucket":
        extra, extra_params = _filters(param, "", as_of_us, meter, operation)
        sql = (
            f"SELECT width_bucket(occurred_at_us, {param}::bigint[]) - 1, meter, currency, "
            "COUNT(*), SUM(quantity), SUM(amount_micros) FROM usage_events "
            f"WHERE subject = {param} AND occurred_at_us >= {param} AND occurred_at_us < {param}"
            f"{extra} GROUP BY 1, meter, currency"
        )
        starts = [lo for lo, _ in buckets.bounds]
        return sql, [starts, subject, start, end, *extra_params]
    values = ", ".join(f"({i}, {int(lo)}, {int(hi)})" for i, (lo, hi) in enumerate(buckets.bounds))
    extra, extra_params = _filters(param, "e.", as_of_us, meter, operation)
    sql = (
        f"WITH b (i, lo, hi) AS (VALUES {values}) "
        "SELECT b.i, e.meter, e.currency, COUNT(*), SUM(e.quantity), SUM(e.amount_micros) "
        "FROM b CROSS JOIN usage_events e "
        "ON e.occurred_at_us >= b.lo AND e.occurred_at_us < b.hi "
        f"WHERE e.subject = {param}{extra} "
        "GROUP BY b.i, e.meter, e.currency"
    )
    return sql, [subject, *extra_params]


def fold_usage(buckets: Buckets, rows: Iterable[Sequence[Any]]) -> list[PeriodUsage]:
    per_bucket: dict[int, list[Sequence[Any]]] = {}
    for row in rows:
        per_bucket.setdefault(int(row[0]), []).append(row[1:])
    return [
        PeriodUsage(lo, hi, label, fold_totals(per_bucket.get(i, ())))
        for i, ((lo, hi), label) in enumerate(zip(buckets.bounds, buckets.labels, strict=True))
    ]


COUNT_SQL = "SELECT COUNT(*) FROM usage_events"
