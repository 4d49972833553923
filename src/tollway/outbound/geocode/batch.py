"""A CSV of addresses through a `Geocoder`: resumable, never fatal for a bad row, with a spend
report per provider. The engine of ``tollway geocode``.

Resuming needs no state of its own: every answer bought is in the result cache (the
geocoder's SQLite file), so a second run over the same input calls nobody for the rows
already done, and an address in flight when a run was killed is reported, not paid again.
The output file is written whole at the end (to a temporary file, then renamed), so it is
never half-written. Cells are escaped against CSV injection and NUL bytes stripped
(`tollway.outbound.geocode.cells`); a row with a hostile address is reported, never fatal.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from tollway.errors import ConfigurationError
from tollway.money import micros_to_decimal
from tollway.outbound.geocode.cells import MAX_FIELD, escape_cell
from tollway.outbound.geocode.geocoder import GeocodeOutcome, Geocoder

__all__ = [
    "MAX_FIELD",
    "OUTPUT_COLUMNS",
    "BatchReport",
    "ProviderSpend",
    "check_paths",
    "geocode_csv",
    "read_addresses",
]

OUTPUT_COLUMNS = (
    "lat",
    "lon",
    "formatted_address",
    "confidence",
    "accuracy",
    "provider",
    "cached",
    "status",
    "error",
)


@dataclass
class ProviderSpend:
    """One provider over one run."""

    provider: str
    calls: int = 0
    """Calls paid in this run."""
    cost: Decimal = Decimal(0)
    currency: str | None = None
    left: dict[str, str] = field(default_factory=dict)
    """Per quota or budget limit, what is left now by tollway's count (``"2,431 calls"``,
    ``"12.50 USD"``)."""
    shut: dict[str, float] = field(default_factory=dict)
    """Health gates shut now (``exhausted``, ``cooldown``, ``blocked``, ``breaker``) and the
    seconds until each opens again: what the provider itself said, whatever the counts say."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Times a call went past this provider, by reason."""


@dataclass
class BatchReport:
    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    """Rows per status (``ok``, ``no_match``, ``failed``, ``interrupted``, ``invalid``): each
    row counts under exactly one, so they add up to `rows`."""
    cached: int = 0
    """Rows answered from the cache: a subset of the geocoded ones (``ok`` and ``no_match``)."""
    providers: dict[str, ProviderSpend] = field(default_factory=dict)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    """(line number in the input, why) for every row not geocoded."""
    outcomes: list[GeocodeOutcome] = field(default_factory=list)
    """Every row's outcome, in input order."""

    @property
    def geocoded(self) -> int:
        """Rows with an answer: a place (``ok``) or "nothing found" (``no_match``)."""
        return self.statuses["ok"] + self.statuses["no_match"]

    @property
    def not_geocoded(self) -> int:
        """Rows without an answer (failed, interrupted, invalid): ``rows - geocoded``."""
        return self.rows - self.geocoded

    @property
    def failovers(self) -> int:
        return sum(sum(p.skipped.values()) for p in self.providers.values())


def check_paths(source: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """Refuse an output that is the input itself (the same file under another path or through
    a symlink): writing it would replace the addresses with the results."""
    if os.path.lexists(output) and os.path.exists(source) and os.path.samefile(source, output):
        raise ConfigurationError(
            f"{output}: is the input file {source}; writing the results there would replace "
            "it; expected another file for -o"
        )


def read_addresses(
    path: str | os.PathLike[str], column: str
) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """The header, the rows and the line each row starts on, of a CSV file;
    `ConfigurationError` naming the file and what is wrong when it cannot be read as one
    (empty, no such column, not UTF-8, a runaway field)."""
    where = str(path)
    start = 1  # the line the row being read starts on
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            sample = handle.read(MAX_FIELD)
            handle.seek(0)
            if not sample.strip():
                raise ConfigurationError(
                    f"{where}: the file is empty; expected a CSV with a header"
                )
            csv.field_size_limit(MAX_FIELD)
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            if column not in header:
                raise ConfigurationError(
                    f"{where}: no column {column!r}; expected one of "
                    f"{', '.join(repr(h) for h in header) or 'none'} (choose it with --column)"
                )
            rows, lines = [], []
            start = reader.line_num + 1  # a quoted field may span lines: count the reader's
            for row in reader:
                rows.append({k: (v if isinstance(v, str) else "") for k, v in row.items() if k})
                lines.append(start)
                start = reader.line_num + 1
    except FileNotFoundError:
        raise ConfigurationError(f"{where}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{where}: not UTF-8 text (byte {exc.start}); expected a UTF-8 CSV"
        ) from None
    except csv.Error as exc:
        expected = ""
        if "field limit" in str(exc):
            expected = f"; expected fields of at most {MAX_FIELD:,} characters (an unclosed quote?)"
        raise ConfigurationError(
            f"{where}: not a readable CSV: {exc}, in the row starting on line {start}{expected}"
        ) from None
    return header, rows, lines


Progress = Callable[[int, int, Counter[str]], None]


def geocode_csv(
    geocoder: Geocoder,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    column: str = "address",
    workers: int = 4,
    progress: Progress | None = None,
    raw_cells: bool = False,
) -> BatchReport:
    """Geocode every row's ``column`` into ``output`` (the input's columns, then
    `OUTPUT_COLUMNS`), ``workers`` addresses at a time. `ConfigurationError` before anything
    is called when ``output`` is ``source`` itself. Cells that a spreadsheet would run as a
    formula are written with a leading ``'`` unless ``raw_cells``."""
    check_paths(source, output)
    header, rows, lines = read_addresses(source, column)
    report = BatchReport(rows=len(rows))
    for provider in geocoder.route.providers:
        report.providers[provider] = ProviderSpend(provider)
    outcomes = report.outcomes
    prices = {
        name: None if p.price is None else p.price.micros
        for name, p in geocoder.route.core.providers.items()
    }
    queries = (row.get(column, "") for row in rows)
    with ThreadPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        # One worker: in this thread, so ``progress`` runs between one row and the next.
        answers = pool.map(geocoder.geocode, queries) if pool else map(geocoder.geocode, queries)
        for done, outcome in enumerate(answers, start=1):
            outcomes.append(outcome)
            _count(report, outcome, prices)
            if progress is not None:
                progress(done, len(rows), report.statuses)
    for line, outcome in zip(lines, outcomes, strict=True):
        if outcome.status not in ("ok", "no_match"):
            report.bad_rows.append((line, f"{outcome.status}: {outcome.error}"))
    _write(output, header, rows, outcomes, raw_cells)
    _left(geocoder, report)
    return report


def _count(
    report: BatchReport, outcome: GeocodeOutcome, price_micros: dict[str, int | None]
) -> None:
    report.statuses[outcome.status] += 1
    report.cached += outcome.from_cache
    for skip in outcome.skipped:
        spend = report.providers.get(skip.provider)
        if spend is not None:
            spend.skipped[skip.reason] += 1
    if outcome.decision is not None and outcome.provider in report.providers:
        spend = report.providers[outcome.provider]
        spend.calls += 1
        micros = outcome.decision.amount
        price = price_micros.get(outcome.provider)
        if micros is None and price is not None:
            micros = outcome.decision.cost * price  # no budget took money, but it has a price
        if micros is not None:
            spend.cost += micros_to_decimal(micros)


def _cells(outcome: GeocodeOutcome) -> dict[str, str]:
    result = outcome.result
    return {
        "lat": "" if result is None else repr(result.lat),
        "lon": "" if result is None else repr(result.lon),
        "formatted_address": "" if result is None else result.formatted_address,
        "confidence": "" if result is None or result.confidence is None else str(result.confidence),
        "accuracy": "" if result is None or result.accuracy is None else result.accuracy,
        "provider": outcome.provider or "",
        "cached": "yes" if outcome.from_cache else "no",
        "status": outcome.status,
        "error": outcome.error,
    }


def _write(
    output: str | os.PathLike[str],
    header: list[str],
    rows: list[dict[str, str]],
    outcomes: list[GeocodeOutcome],
    raw: bool,
) -> None:
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    names = header + [c for c in OUTPUT_COLUMNS if c not in header]
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([escape_cell(name, raw=raw) for name in names])
            for row, outcome in zip(rows, outcomes, strict=True):
                cells = {**row, **_cells(outcome)}
                writer.writerow([escape_cell(cells.get(name, ""), raw=raw) for name in names])
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _left(geocoder: Geocoder, report: BatchReport) -> None:
    for provider, decision in geocoder.route.status().items():
        spend = report.providers[provider]
        quotas: list[str] = []
        for state in decision.limits:
            if state.shadow:  # a tier counter, say: not a limit
                continue
            if state.kind == "gate":
                if not state.allowed:
                    spend.shut[state.name] = state.reset_after
            elif state.kind == "quota":
                spend.left[state.name] = f"{int(state.remaining):,} calls"
                quotas.append(state.name)
            elif state.kind == "budget":
                spend.left[state.name] = f"{state.remaining} {state.currency}"
                spend.currency = state.currency
        if "exhausted" in spend.shut:
            # The provider said it is out of quota: its word wins over tollway's count.
            for name in quotas:
                spend.left[name] = f"0 calls, says the provider ({spend.left[name]} by our count)"
        price = geocoder.route.core.providers[provider].price
        if price is not None:
            spend.currency = spend.currency or price.currency
