"""``tollway geocode INPUT.csv -o OUTPUT.csv``: a CSV of addresses through a route of providers."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tollway.cli.commands import OK, open_tollway
from tollway.cli.output import note, plural, table
from tollway.errors import ConfigurationError

if TYPE_CHECKING:
    from tollway.outbound.geocode.batch import BatchReport

__all__ = ["geocode", "register", "spend_report"]

BAR = 30


def register(sub: Any, add: Any) -> None:
    command = add(
        "geocode",
        geocode,
        "geocode a CSV of addresses through a route, within every provider's limits",
        description="Geocode the addresses in one column of INPUT through a route of the policy "
        "(each provider held on its rate, quotas and budgets at once, failing over before one "
        "breaks), write INPUT's rows with the results to OUTPUT, and print a spend report per "
        "provider. Answers are kept in a SQLite cache, so running again resumes without paying "
        "for rows already done; bad rows are reported, never fatal.",
    )
    command.add_argument("input", metavar="INPUT.csv")
    command.add_argument("-o", "--output", required=True, metavar="OUTPUT.csv")
    command.add_argument(
        "--column", default="address", help="the column holding addresses (default: address)"
    )
    command.add_argument(
        "--route", default="geocoding", help="the route of the policy (default: geocoding)"
    )
    command.add_argument(
        "--cache",
        metavar="FILE",
        help="the answers' SQLite file (default: OUTPUT.csv.tollway.sqlite)",
    )
    command.add_argument(
        "--workers", type=int, default=4, metavar="N", help="addresses at a time (default: 4)"
    )
    command.add_argument(
        "--retry-interrupted",
        action="store_true",
        help="call again the addresses whose call was in flight when a run was killed "
        "(they may have been billed once already)",
    )
    command.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress bar on stderr (auto: when stderr is a terminal)",
    )


def geocode(args: argparse.Namespace) -> int:
    try:  # geopy is the optional "geocode" extra
        from tollway.outbound.geocode.batch import geocode_csv
        from tollway.outbound.geocode.geocoder import Geocoder
    except ImportError as exc:
        raise ConfigurationError(
            f"tollway geocode needs geopy ({exc}); pip install 'tollway[geocode]'"
        ) from None
    cache = Path(args.cache) if args.cache else Path(f"{args.output}.tollway.sqlite")
    with (
        open_tollway(args) as tw,
        Geocoder(tw, args.route, cache=cache, retry_interrupted=args.retry_interrupted) as geocoder,
    ):
        show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
        report = geocode_csv(
            geocoder,
            args.input,
            args.output,
            column=args.column,
            workers=max(1, args.workers),
            progress=_bar(sys.stderr) if show else None,
        )
    if show:
        print(file=sys.stderr)
    for line in spend_report(report, args.output):
        print(line)
    for line_no, why in report.bad_rows[:20]:
        note(f"{args.input}:{line_no}: {why}")
    if len(report.bad_rows) > 20:
        note(f"... and {len(report.bad_rows) - 20} more rows not geocoded (see {args.output})")
    return OK


def _bar(out: TextIO) -> Any:
    def show(done: int, total: int, statuses: Counter[str]) -> None:
        filled = BAR * done // max(1, total)
        bad = total and sum(v for k, v in statuses.items() if k not in ("ok", "no_match"))
        out.write(f"\r[{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} rows, {bad} not done")
        out.flush()

    return show


def spend_report(report: BatchReport, output: str) -> list[str]:
    done = report.statuses["ok"] + report.statuses["no_match"]
    lines = [
        f"{plural(report.rows, 'row')} -> {output}: {done} geocoded "
        f"({report.statuses['no_match']} with no match, {report.cached} from the cache), "
        f"{len(report.bad_rows)} not geocoded"
        + "".join(
            f", {report.statuses[k]} {k}"
            for k in ("failed", "interrupted", "invalid")
            if report.statuses[k]
        ),
        "",
    ]
    rows = []
    for spend in report.providers.values():
        why = ", ".join(f"{reason} {count}" for reason, count in spend.skipped.most_common())
        rows.append(
            [
                spend.provider,
                str(spend.calls),
                f"{spend.cost} {spend.currency or ''}".strip(),
                "; ".join(f"{name}: {left}" for name, left in spend.left.items()) or "-",
                why or "-",
            ]
        )
    lines += table(["provider", "calls", "cost", "left", "passed over (why)"], rows, right={1})
    return lines
