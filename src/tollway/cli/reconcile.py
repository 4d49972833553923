"""``tollway reconcile``: the store's quota and budget counters against the ledger
(`tollway.metering.reconcile`); exit status 1 when any drifts."""

from __future__ import annotations

import argparse
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from tollway.cli.commands import DENIED, OK, config_path
from tollway.cli.output import note, plural, table
from tollway.errors import ConfigurationError
from tollway.policy import load

if TYPE_CHECKING:
    from tollway.metering.reconcile import Report

__all__ = ["reconcile", "register", "render"]


def register(sub: Any, add: Any) -> None:
    command = add(
        "reconcile",
        reconcile,
        "compare the store's quota and budget counters with the ledger",
        description="For each subject (--subject, or every subject the store has counters for "
        "or the ledger has events of in the current windows, providers included as "
        "@provider:NAME), read its quota and budget counters without consuming and compare "
        "each with the sum of the ledger's events in the counter's window. Prints (subject, "
        "limit, window, store, held, ledger, drift); exit status 1 when any counter drifts, 0 "
        "when none does. Events not yet drained from the streams show as drift: their count "
        "is reported, or use --drain-first. A ledger with no events at all is said so.",
    )
    command.add_argument(
        "--subject",
        action="append",
        metavar="S",
        dest="subjects",
        help="a subject to reconcile (repeatable; default: every subject of the store and of "
        "the ledger)",
    )
    command.add_argument(
        "--drain-first",
        action="store_true",
        help="drain the event streams into the ledger first (as tollway worker --until-idle)",
    )
    command.add_argument(
        "--all", action="store_true", help="list every counter, not only the drifting ones"
    )


def _when(us: int) -> str:
    moment = datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%MZ")


def render(report: Report, *, every: bool = False) -> list[str]:
    rows = report.rows if every else report.drifts
    cells = [
        [
            row.subject,
            row.limit + (f" ({row.operation})" if row.operation else ""),
            f"{_when(row.window_start_us)}..{_when(row.window_end_us)}",
            row.amount(row.store),
            row.amount(row.held),
            row.amount(row.ledger),
            ("+" if row.drift > 0 else "") + row.amount(row.drift),
        ]
        for row in rows
    ]
    lines = table(
        ["subject", "limit", "window", "store", "held", "ledger", "drift"],
        cells,
        right={3, 4, 5, 6},
    )
    subjects = len({row.subject for row in report.rows})
    empty = " (the ledger has no events yet: not a clean pass)" if report.ledger_empty else ""
    lines.append(
        f"{plural(len(report.rows), 'counter')} of {plural(subjects, 'subject')}: "
        f"{plural(len(report.drifts), 'drift')}{empty}"
    )
    return lines if cells else lines[-1:]


def reconcile(args: argparse.Namespace) -> int:
    from tollway.client import Tollway
    from tollway.metering.ledger import open_ledger
    from tollway.metering.reconcile import reconcile as compare
    from tollway.metering.streams import Streams, connect

    policy = load(config_path(args))
    url = args.store or policy.store.url
    if policy.ledger.url is None:
        raise ConfigurationError(
            "tollway reconcile: the policy has no [ledger] url, so there is nothing to compare "
            "the counters with; set [ledger] url"
        )
    with open_ledger(policy.ledger.url) as ledger, Tollway(policy, store=url) as tw:
        pending: int | None = None
        if not url.startswith("memory:"):
            if args.drain_first:
                from tollway.cli.worker import open_drain

                stop = threading.Event()
                args.block_ms = 50  # a one-off drain: a short wait tells it is done
                drain = open_drain(args, policy, ledger, stop)
                drain.streams.consumer = f"reconcile-{drain.consumer}"
                drain.run(until_idle=True)
                drain.streams.leave()
            client, cluster = connect(url)
            streams = Streams(
                client,
                cluster=cluster,
                partitions=policy.ledger.partitions,
                consumer="reconcile",
                prefix=policy.store.prefix,
            )
            streams.discover()
            pending = streams.backlog()
            client.close()
        report = compare(tw, ledger, args.subjects, pending=pending)
    for line in render(report, every=args.all):
        print(line)
    if report.ledger_empty:
        note(
            "the ledger has no events at all yet: nothing has been drained into it (run "
            "tollway worker, or reconcile --drain-first), or it is not the ledger the worker "
            "writes; the store's counts show as drift"
        )
    if report.pending:
        note(
            f"{plural(report.pending, 'entry', 'entries')} still in the event streams, not yet "
            "in the ledger: the store has counted them, the ledger not yet, so they show as "
            "drift; run tollway worker, or reconcile --drain-first"
        )
    return DENIED if report.drifts else OK
