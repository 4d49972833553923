"""``tollway geocode INPUT.csv -o OUTPUT.csv``: a CSV of addresses through a route of providers."""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tollway.cli.commands import OK, open_tollway
from tollway.cli.output import note, plural, table
from tollway.errors import ConfigurationError

if TYPE_CHECKING:
    from tollway.outbound.geocode.batch import BatchReport, ProviderSpend

__all__ = ["geocode", "printable", "register", "spend_report", "summary"]

EXITS = """\
exit status:
  0  the batch ran: OUTPUT is written, one row per row of INPUT; rows not geocoded (failed,
     interrupted, invalid) are listed on stderr and in OUTPUT's status and error columns, and
     do not change the status (a provider's bad answer, too big, in an unknown charset,
     nested too deep or of the wrong shape, is a failed call: the next provider is tried)
  2  usage error; invalid policy or setting; provider keys not set (every one named at once);
     INPUT unreadable or without the column; OUTPUT (or --cache) is INPUT itself
  3  the store could not be reached, or refused a command
INPUT's hostile cells: an address holding a NUL byte or longer than 1,024 characters is an
invalid row (never sent); a field longer than 65,536 characters (an unclosed quote, usually)
makes INPUT unreadable (status 2). OUTPUT's cells that
a spreadsheet would run as a formula (starting with = + - @, a tab or a carriage return, from
INPUT or from a provider) are written with a leading ' (unless --raw-cells); NUL bytes are
always stripped from OUTPUT.
A run that fails writes no OUTPUT and removes the cache file it created, unless that file
holds answers it paid for (running again resumes from them).

provider keys: each provider's api_key_env names the environment variable holding its key.
To try tollway geocode without real keys, python -m tollway.outbound.geocode.stubs --config
FILE serves local stand-ins of the providers and prints the variables to set (any value) and
the domain/scheme lines that point the policy at them.
"""

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
        "for rows already done; bad rows are reported, never fatal. The summary's counts add "
        "up to the rows: geocoded (found, or no match; some of them from the cache) plus not "
        "geocoded (failed, interrupted, invalid).",
        exits=EXITS,
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
        "--raw-cells",
        action="store_true",
        help="write cells as they are, without the leading ' that keeps a spreadsheet from "
        "running a cell that starts with = + - @, a tab or a carriage return as a formula",
    )
    command.add_argument(
        "--max-answer-bytes",
        type=int,
        default=None,
        metavar="N",
        help="the largest provider answer read, in bytes (default: 4 MiB); a larger one is a "
        "failed call",
    )
    command.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress bar on stderr (auto: when stderr is a terminal)",
    )


def geocode(args: argparse.Namespace) -> int:
    try:  # geopy is the optional "geocode" extra
        from tollway.outbound.geocode.answers import MAX_ANSWER_BYTES, check_answer_cap
        from tollway.outbound.geocode.batch import check_paths, geocode_csv
        from tollway.outbound.geocode.geocoder import Geocoder
    except ImportError as exc:
        raise ConfigurationError(
            f"tollway geocode needs geopy ({exc}); pip install 'tollway[geocode]'"
        ) from None
    check_paths(args.input, args.output)
    if args.max_answer_bytes is not None:
        check_answer_cap(args.max_answer_bytes, "--max-answer-bytes")
    cache = Path(args.cache) if args.cache else Path(f"{args.output}.tollway.sqlite")
    if args.cache:
        check_paths(args.input, cache)
        check_paths(args.output, cache)
    existed = any(path.exists() for path in _files_of(cache))
    try:
        with (
            open_tollway(args) as tw,
            Geocoder(
                tw,
                args.route,
                cache=cache,
                retry_interrupted=args.retry_interrupted,
                max_answer_bytes=args.max_answer_bytes or MAX_ANSWER_BYTES,
            ) as geocoder,
        ):
            show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
            report = geocode_csv(
                geocoder,
                args.input,
                args.output,
                column=args.column,
                workers=max(1, args.workers),
                progress=_bar(sys.stderr) if show else None,
                raw_cells=args.raw_cells,
            )
    except BaseException:
        if not existed:
            _discard_unused(cache)
        raise
    if show:
        print(file=sys.stderr)
    for line in spend_report(report, args.output):
        print(line)
    for line_no, why in report.bad_rows[:20]:
        note(f"{args.input}:{line_no}: {printable(why)}")
    if len(report.bad_rows) > 20:
        note(f"... and {len(report.bad_rows) - 20} more rows not geocoded (see {args.output})")
    return OK


def printable(text: str) -> str:
    """``text`` with its control characters escaped: a row's error may quote a provider's
    words, and a terminal must not run an escape sequence it holds."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _files_of(cache: Path) -> list[Path]:
    """The SQLite file and its companions (WAL mode's -wal and -shm, a rollback journal)."""
    return [cache, *(cache.with_name(cache.name + end) for end in ("-wal", "-shm", "-journal"))]


def _discard_unused(cache: Path) -> None:
    """After a failed run, remove the cache file that this run created, unless it holds an
    answer (paid for: the next run resumes from it) or an in-flight mark (maybe billed)."""
    from tollway.outbound.geocode.cache import CacheError, ResultCache
    from tollway.outbound.geocode.pending import PendingCalls

    if not cache.exists():
        return
    try:
        with ResultCache(cache) as results:
            answers = len(results)
        pending = PendingCalls(cache)
        try:
            marks = pending.count()
        finally:
            pending.close()
    except CacheError:  # not ours to judge: leave it
        return
    if answers or marks:
        note(
            f"kept {cache}: it holds {plural(answers, 'answer')} and "
            f"{plural(marks, 'call')} in flight from this run; running again resumes from it"
        )
        return
    for path in _files_of(cache):
        path.unlink(missing_ok=True)


def _bar(out: TextIO) -> Any:
    def show(done: int, total: int, statuses: Counter[str]) -> None:
        filled = BAR * done // max(1, total)
        bad = total and sum(v for k, v in statuses.items() if k not in ("ok", "no_match"))
        out.write(f"\r[{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} rows, {bad} not done")
        out.flush()

    return show


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def summary(report: BatchReport, output: str | None) -> str:
    """One line whose counts add up: geocoded + not geocoded = rows; the parts of each in
    parentheses (the cached rows are some of the geocoded ones). ``output`` None: a CSV that
    is not kept (the demo's)."""
    where = output if output is not None else "a temporary CSV"
    statuses = report.statuses
    found, empty = statuses["ok"], statuses["no_match"]
    text = (
        f"{plural(report.rows, 'row')} -> {where}: {report.geocoded} geocoded "
        f"({found} found, {empty} with no match; {report.cached} of them from the cache), "
        f"{report.not_geocoded} not geocoded"
    )
    parts = [f"{statuses[k]} {k}" for k in ("failed", "interrupted", "invalid") if statuses[k]]
    return text + (f" ({', '.join(parts)})" if parts else "")


def _state(spend: ProviderSpend) -> str:
    shut = [f"{gate} for {_duration(wait)}" for gate, wait in spend.shut.items()]
    return ", ".join(shut) or "open"


def spend_report(report: BatchReport, output: str | None) -> list[str]:
    """The summary line, then per provider: calls paid in this run, their cost, what is left,
    whether a health gate is shut (and for how long), why calls went past it."""
    lines = [summary(report, output), ""]
    rows = []
    for spend in report.providers.values():
        why = ", ".join(f"{reason} {count}" for reason, count in spend.skipped.most_common())
        rows.append(
            [
                spend.provider,
                str(spend.calls),
                f"{spend.cost} {spend.currency or ''}".strip(),
                "; ".join(f"{name}: {left}" for name, left in spend.left.items()) or "-",
                _state(spend),
                why or "-",
            ]
        )
    headers = ["provider", "calls", "cost", "left", "state", "passed over (why)"]
    lines += table(headers, rows, right={1})
    return lines
