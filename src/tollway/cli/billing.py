"""``tollway billing``: preview, close, list and show invoices, grant credits, credit notes.

Each command opens the policy's ``[billing]`` and ``[ledger]`` (`Tollway.billing`), on the
policy's store or ``--store URL``, with the real clock: periods, grace and finalization are
decided by now. Money goes in as plain decimal text (``12.50``, never ``1e3`` or a float)
and comes out as the facade's Decimals.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollway.billing import render
from tollway.billing.records import Line
from tollway.cli import billing_output as out
from tollway.cli.commands import FAILED, OK, config_path, positive
from tollway.cli.output import note
from tollway.client import Tollway
from tollway.errors import ConfigurationError
from tollway.metering.ledger import UsageEvent

__all__ = ["register"]

BILLING_EXITS = """\
exit status:
  0  success
  2  usage error; a bad amount (not plain decimal text such as 12.50), time or format;
     an invalid subject; an unknown invoice; a credit note over what the invoice has
     left; a policy without [billing] or [ledger]
  3  the store could not be reached, or refused a command
"""

AMOUNT = re.compile(r"[0-9]{1,15}(\.[0-9]{1,6})?")
MAX_TEXT = 64
EVENTS_DEFAULT = 1000
EVENTS_MAX = 100_000
LIST_MAX = 10_000
PAGE = 1000


def amount(text: str) -> Decimal:
    """An argparse type: plain decimal text, at most 6 decimals (no exponent, sign or float)."""
    if len(text) > MAX_TEXT or not AMOUNT.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text[:MAX_TEXT]!r} is not an amount; expected plain decimal text with at most 6 "
            "decimals, e.g. 12.50"
        )
    return Decimal(text)


def instant(text: str) -> datetime:
    """An argparse type: an ISO 8601 time with its offset (``Z`` for UTC)."""
    when: datetime | None = None
    if len(text) <= MAX_TEXT:
        try:  # Python 3.10's fromisoformat does not read a trailing Z
            when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            when = None
    if when is None or when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text[:MAX_TEXT]!r} is not an ISO 8601 time with an offset; expected e.g. "
            "2027-01-01T00:00:00Z"
        )
    return when.astimezone(timezone.utc)


def _at_most(most: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = positive(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"{text!r} is more than {most}")
        return value

    return parse


def _open(args: argparse.Namespace, *, writes: bool = False) -> Tollway:
    """The policy's Tollway, refused before any I/O when it has no [billing]. ``writes``:
    warn that a memory:// store keeps what the command writes there for this process only."""
    tw = Tollway.from_file(config_path(args), store=args.store)
    if tw.policy.billing is None:
        tw.close()
        raise ConfigurationError(
            f"billing: the policy {config_path(args)} has no [billing] section; add one with at "
            'least currency = "USD" (see docs/billing.md)'
        )
    if writes and tw.store.url.startswith("memory:"):
        note(
            "the store is memory://: the ledger keeps the record, but the balance and plans "
            "in the store live in this process only; pass --store redis://HOST:PORT/DB (or "
            "set [store] url) to act on shared ones"
        )
    return tw


def _print(lines: list[str]) -> None:
    print("\n".join(lines))


def preview(args: argparse.Namespace) -> int:
    with _open(args) as tw:
        draft = tw.billing.preview(args.subject)
    if args.format == "json":
        sys.stdout.write(render.to_json(draft))
    else:
        _print(out.invoice_table(draft))
    return OK


def close(args: argparse.Namespace) -> int:
    with _open(args, writes=True) as tw:
        closed = tw.billing.close()
    _print(out.closed_table(closed))
    return OK


def invoices(args: argparse.Namespace) -> int:
    with _open(args) as tw:
        found = tw.billing.invoices(args.subject, limit=args.limit)
    if args.format == "json":
        documents = [inv.to_dict() for inv in found]
        sys.stdout.write(json.dumps(documents, sort_keys=True, indent=2, ensure_ascii=False) + "\n")
        return OK
    _print(out.invoices_table(args.subject, found))
    return OK


def _trace(tw: Tollway, number: str, index: int, line: Line, most: int) -> out.Traced:
    """The first ``most`` events of line ``index``, page by page (at most one event past)."""
    events: list[UsageEvent] = []
    cursor: str | None = None
    size = min(PAGE, most + 1)
    while len(events) <= most:
        page = tw.billing.trace(number, index, cursor=cursor, limit=size)
        events += page
        if len(page) < size:
            break
        cursor = page[-1].id
    return out.Traced(index, line, tuple(events[:most]), len(events) <= most)


def show(args: argparse.Namespace) -> int:
    with _open(args) as tw:
        inv = tw.billing.invoice(args.number)
        traced = (
            [_trace(tw, args.number, i, line, args.events) for i, line in enumerate(inv.lines)]
            if args.lines
            else []
        )
    renders: dict[str, Callable[[Any], str]] = {
        "json": render.to_json,
        "csv": render.to_csv,
        "html": render.to_html,
    }
    text = renders[args.format](inv)
    if args.lines:
        if args.format == "json":
            text += out.events_json(args.number, traced)
        elif args.format == "csv":
            text += out.events_csv(traced)
        else:
            head, sep, tail = text.rpartition("</body>")
            text = head + out.events_html(traced) + sep + tail
    if args.output is None:
        sys.stdout.write(text)
        return OK
    path = Path(args.output)
    try:
        with path.open("w", encoding="utf-8", newline="") as file:
            file.write(text)
    except OSError as exc:
        raise ConfigurationError(
            f"--output: cannot write {args.output!r}: {exc.strerror}; expected a writable file"
        ) from None
    note(f"invoice {out.safe(args.number)} written to {out.safe(path)} ({args.format})")
    return OK


def grant(args: argparse.Namespace) -> int:
    with _open(args, writes=True) as tw:
        made = tw.billing.grant(
            args.subject,
            args.amount,
            currency=args.currency,
            expires=args.expires,
            id=args.id,
            priority=args.priority,
            note=args.note,
        )
        balance = tw.billing.balance(args.subject, made.currency)
    _print(out.grant_text(made, balance))
    return OK


def credit_note(args: argparse.Namespace) -> int:
    with _open(args, writes=not args.refund) as tw:
        made = tw.billing.credit_note(
            args.number, amount=args.amount, reason=args.reason, refund=args.refund
        )
    _print(out.credit_note_text(made))
    return OK


def _format(command: argparse.ArgumentParser, *choices: str) -> None:
    command.add_argument(
        "--format",
        choices=choices,
        default=choices[0],
        help=f"output format (default: {choices[0]})",
    )


def register(sub: Any, add: Any) -> None:
    """Add the ``billing`` group to the `tollway` parser."""
    group = sub.add_parser(
        "billing",
        help="preview, finalize and show invoices; grant prepaid credits; issue credit notes",
        description="Billing on the policy's [billing] and [ledger]: the open period's draft, "
        "finalizing what is due, finalized invoices (JSON, CSV, HTML) traced to their ledger "
        "events, prepaid credit grants and credit notes. Times are the real clock's.",
    )

    def group_help(args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return FAILED

    group.set_defaults(run=group_help)
    billing = group.add_subparsers(dest="billing_command", metavar="COMMAND")

    def command(name: str, run: Any, help: str, description: str | None = None) -> Any:
        return add(name, run, help, description=description, into=billing, exits=BILLING_EXITS)

    p = command("preview", preview, "print the open period's draft invoice of a subject")
    p.add_argument("subject", metavar="SUBJECT")
    _format(p, "table", "json")

    command(
        "close",
        close,
        "finalize every period whose grace is over; print what was made",
        "Finalize every period whose invoice grace is over, as of now, and print the invoices "
        "and credit notes made (or 'nothing to finalize'). Running it again finalizes nothing "
        "twice.",
    )

    p = command("invoices", invoices, "list a subject's finalized invoices, newest first")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument(
        "--limit",
        type=_at_most(LIST_MAX),
        default=100,
        metavar="N",
        help="at most N invoices (default: 100)",
    )
    _format(p, "table", "json")

    p = command(
        "show",
        show,
        "print a finalized invoice as JSON, CSV or HTML",
        "Print the finalized invoice NUMBER, the same bytes on every run (JSON: the stored "
        "document, keys sorted). --lines adds, after it and in the same format, the ledger "
        "events behind each line (id, occurred_at, quantity, amount).",
    )
    p.add_argument("number", metavar="NUMBER", help="the invoice number, e.g. INV-2026-000001")
    _format(p, "json", "csv", "html")
    p.add_argument("--lines", action="store_true", help="also print every line's ledger events")
    p.add_argument(
        "--events",
        type=_at_most(EVENTS_MAX),
        default=EVENTS_DEFAULT,
        metavar="N",
        help=f"with --lines: at most N events per line (default: {EVENTS_DEFAULT})",
    )
    p.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")

    p = command(
        "grant",
        grant,
        "add prepaid credits to a subject; print the grant and the new balance",
        "Add AMOUNT of prepaid credits to SUBJECT (idempotent on --id) and print the grant and "
        "the balance now. With a memory:// store the balance is this process's only.",
    )
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("amount", type=amount, metavar="AMOUNT", help="plain decimal text, e.g. 10.00")
    p.add_argument("--currency", metavar="CODE", help="ISO 4217 code (default: [billing] currency)")
    p.add_argument(
        "--expires",
        type=instant,
        metavar="ISO8601",
        help="when it expires, e.g. 2027-01-01T00:00:00Z",
    )
    p.add_argument(
        "--id", metavar="ID", help="the grant's id (a repeat with the same terms is a no-op)"
    )
    p.add_argument(
        "--priority", type=int, default=0, metavar="N", help="drawn first: higher (default: 0)"
    )
    p.add_argument("--note", default="", metavar="TEXT", help="a note kept with the grant")

    p = command(
        "credit-note",
        credit_note,
        "credit part or all of a finalized invoice; print the note",
        "Credit --amount of the finalized invoice NUMBER (at most its total less earlier "
        "notes): back to the subject's prepaid balance, or --refund (told to the payment "
        "platform as tollway.invoice.refunded).",
    )
    p.add_argument("number", metavar="NUMBER", help="the invoice number")
    p.add_argument("--amount", type=amount, required=True, metavar="AMOUNT", help="e.g. 5.00")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (kept on the note)")
    p.add_argument(
        "--refund", action="store_true", help="refund it instead of crediting the balance"
    )
