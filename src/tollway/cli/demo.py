"""``tollway demo``: the four parts of the demo (`tollway.demo`), printed one after another."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tollway.cli.commands import OK, positive
from tollway.cli.output import note
from tollway.errors import ConfigurationError
from tollway.policy import load

__all__ = ["demo", "register"]

EXITS = """\
exit status:
  0  the demo ran (every part asked for; --part all skips geocoding, with a note, without the
     geocode extra); the billing part wrote its HTML invoice
  2  a bad option; a --config policy that is invalid or lacks what the inbound day needs;
     --part geocoding without the geocode extra (pip install 'tollway[geocode]'); an --html
     file that cannot be written
"""

DESCRIPTION = (
    "Run tollway's four jobs on embedded defaults, with a fake clock, and print what happened. "
    "inbound: a simulated day of API traffic (free and pro subjects: bursts, an hourly quota "
    "run out, a spend budget run out, an upgrade at noon, reservations) through the engine on "
    "the memory store, on the built-in policy (the file examples/tollway.toml) unless --config "
    "is given; a policy of your own must declare plans free and pro and operations geocode, "
    "search and enrich. geocoding: a batch of addresses failing over across three local stub "
    "providers as their quotas and budgets run out (needs pip install 'tollway[geocode]'; "
    "skipped with a note under --part all when missing). metering: an hour of usage written "
    "to a SQLite ledger and delivered to a callable hook and a signed webhook on 127.0.0.1, "
    "held against the counters. billing: March 2026 for three subjects (a trial, an upgrade "
    "with a coupon, prepaid credits running out and topped up), a late event and a refund, "
    "March and April closed into invoices, printed as a table; the HTML of one invoice is "
    "written to tollway-invoice-NUMBER.html in the current directory, or to --html FILE. "
    "Other files are written to a temporary folder, removed at the end."
)


def register(sub: Any, add: Any) -> None:
    demo_command = add(
        "demo",
        demo,
        "run the demo: a day of API traffic, a geocoding batch, an hour of metering, a month "
        "of billing",
        description=DESCRIPTION,
        parents=(),
        exits=EXITS,
    )
    demo_command.add_argument(
        "--config",
        metavar="FILE",
        help="run the inbound day on this policy instead of the built-in one",
    )
    demo_command.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    demo_command.add_argument(
        "--part",
        choices=("all", "inbound", "geocoding", "metering", "billing"),
        default="all",
        help="inbound: the day of API traffic; geocoding: a batch failing over across three "
        "stub providers as their budgets run out; metering: an hour of usage written to a "
        "SQLite ledger and delivered to a callable and a signed webhook, held against the "
        "counters; billing: a month of traffic rated into invoices (default: all four)",
    )
    demo_command.add_argument(
        "--html",
        metavar="FILE",
        help="billing: write the HTML invoice to FILE (default: tollway-invoice-NUMBER.html "
        "in the current directory)",
    )
    demo_command.add_argument(
        "--subjects",
        type=positive,
        default=4,
        metavar="N",
        help="inbound: how many subjects; roles repeat every four (default: 4, max: 40)",
    )


def demo(args: argparse.Namespace) -> int:
    from tollway.demo.inbound import simulate
    from tollway.demo.inbound_report import render_inbound

    policy = None if args.config is None else load(Path(args.config))
    name = "built in (the file examples/tollway.toml)" if policy is None else args.config
    printed = False
    if args.part in ("all", "inbound"):
        print(render_inbound(simulate(args.seed, args.subjects, policy), name))
        printed = True
    if args.part in ("all", "geocoding"):
        try:
            from tollway.demo.geocoding import run_geocoding_demo
            from tollway.demo.geocoding_report import render_geocoding
        except ImportError as exc:  # geopy is the optional "geocode" extra
            if args.part == "geocoding":
                raise ConfigurationError(
                    f"the geocoding demo needs geopy ({exc}); pip install 'tollway[geocode]'"
                ) from None
            note(f"skipped the geocoding part: it needs pip install 'tollway[geocode]' ({exc})")
        else:
            if printed:
                print()
            print(render_geocoding(run_geocoding_demo()))
            printed = True
    if args.part in ("all", "metering"):
        from tollway.demo.metering import run_metering_demo
        from tollway.demo.metering_report import render_metering

        if printed:
            print()
        print(render_metering(run_metering_demo(args.seed)))
        printed = True
    if args.part in ("all", "billing"):
        from tollway.demo.billing import run_billing_demo
        from tollway.demo.billing_report import render_billing

        if printed:
            print()
        print(render_billing(run_billing_demo(args.seed, _html(args.html))))
    return OK


def _html(value: str | None) -> Path | None:
    """The --html file, checked before the run: its folder exists and it is not a folder."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigurationError(
            f"--html: {value!r} is not a file in an existing folder; expected e.g. invoice.html"
        )
    return path
