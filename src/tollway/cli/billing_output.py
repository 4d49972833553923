"""What `tollway billing` prints: invoice, credit-note and grant tables, and the ledger events
behind an invoice's lines (``show --lines``) in the invoice's own format.

Every value that comes from the ledger or the caller (subjects, descriptions, event ids,
reasons, notes) goes through `safe` before a terminal sees it: control characters are shown
as escapes, so a hostile value cannot move the cursor or recolour the screen. CSV cells go
through `escape_cell` (no formulas), HTML through `html.escape`.
"""

from __future__ import annotations

import csv
import html
import io
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from tollway.billing.closing import Closed
from tollway.billing.invoice import CreditNote, Invoice, rfc3339
from tollway.billing.records import GrantRecord, Line
from tollway.cli.output import plural, table
from tollway.metering.ledger import UsageEvent
from tollway.money import micros_to_decimal
from tollway.outbound.geocode.cells import escape_cell

__all__ = [
    "EVENT_COLUMNS",
    "Traced",
    "closed_table",
    "credit_note_text",
    "events_csv",
    "events_html",
    "events_json",
    "grant_text",
    "invoice_table",
    "invoices_table",
    "safe",
]

EVENT_COLUMNS = ("line", "event", "occurred_at", "quantity", "amount")


def safe(value: object) -> str:
    """``value`` as text a terminal shows as is: control and format characters (ESC, CR,
    bidi overrides...) become ``\\xNN`` / ``\\uNNNN`` escapes."""
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == " ":
            out.append(char)
        elif unicodedata.category(char) == "Zs":
            out.append(" ")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _day(us: int) -> str:
    return rfc3339(us)[:10]


def _quantity(line: Line) -> str:
    return "" if line.quantity is None else str(line.quantity)


def invoice_table(inv: Invoice) -> list[str]:
    """A header line, the lines, then subtotal, discounts, credits and total."""
    name = "draft invoice" if inv.number is None else f"invoice {safe(inv.number)} ({inv.status})"
    head = (
        f"{name} of {safe(inv.subject)}, {inv.currency}, "
        f"{rfc3339(inv.period_start_us)} to {rfc3339(inv.period_end_us)}, "
        f"as of {rfc3339(inv.as_of_us)}"
    )
    rows = [
        [str(i), line.kind, safe(line.description), _quantity(line), str(line.amount)]
        for i, line in enumerate(inv.lines)
    ]
    for label, value in (
        ("subtotal", inv.subtotal),
        ("discounts", inv.discounts),
        ("credits", inv.credits),
        ("total", inv.total),
    ):
        rows.append(["", "", label, "", str(value)])
    return [head, *table(["#", "kind", "description", "quantity", "amount"], rows, right={0, 3, 4})]


def invoices_table(subject: str, invoices: Sequence[Invoice]) -> list[str]:
    if not invoices:
        return [f"{safe(subject)}: no invoices"]
    rows = [
        [
            safe(inv.number or "draft"),
            inv.status,
            _day(inv.period_start_us),
            _day(inv.period_end_us),
            "-" if inv.finalized_at_us is None else rfc3339(inv.finalized_at_us),
            str(inv.total),
            inv.currency,
        ]
        for inv in invoices
    ]
    headers = ["number", "status", "from", "to", "finalized at", "total", "currency"]
    return table(headers, rows, right={5})


def closed_table(closed: Closed) -> list[str]:
    """The invoices and credit notes one `close` made, or 'nothing to finalize'."""
    lines: list[str] = []
    if closed.invoices:
        rows = [
            [
                safe(inv.number or ""),
                safe(inv.subject),
                _day(inv.period_start_us),
                _day(inv.period_end_us),
                str(inv.total),
                inv.currency,
            ]
            for inv in closed.invoices
        ]
        lines += table(["invoice", "subject", "from", "to", "total", "currency"], rows, {4})
    if closed.credit_notes:
        rows = [
            [
                safe(note.number),
                safe(note.invoice_number),
                safe(note.subject),
                str(note.amount),
                note.currency,
                safe(note.reason),
            ]
            for note in closed.credit_notes
        ]
        if lines:
            lines.append("")
        headers = ["credit note", "invoice", "subject", "amount", "currency", "reason"]
        lines += table(headers, rows, {3})
    if not lines:
        lines.append("nothing to finalize")
    lines.append(
        f"finalized {plural(len(closed.invoices), 'invoice')}, issued "
        f"{plural(len(closed.credit_notes), 'credit note')}, applied "
        f"{plural(closed.plans_applied, 'plan change')} to the store"
    )
    return lines


def grant_text(grant: GrantRecord, balance: Decimal) -> list[str]:
    expires = "never" if grant.expires_us is None else rfc3339(grant.expires_us)
    note = f", note {safe(grant.note)!r}" if grant.note else ""
    return [
        f"grant {safe(grant.id)}: {micros_to_decimal(grant.amount_micros)} {grant.currency} "
        f"to {safe(grant.subject)}, priority {grant.priority}, expires {expires}{note}",
        f"balance of {safe(grant.subject)}: {balance} {grant.currency}",
    ]


def credit_note_text(note: CreditNote) -> list[str]:
    where = "refunded" if note.refund else "back to the prepaid balance"
    return [
        f"credit note {safe(note.number)} on invoice {safe(note.invoice_number)} of "
        f"{safe(note.subject)}: {note.amount} {note.currency}, {where}, at "
        f"{rfc3339(note.created_at_us)}",
        f"reason: {safe(note.reason)}",
    ]


@dataclass(frozen=True, slots=True)
class Traced:
    """One invoice line and the ledger events behind it (``complete``: all of them)."""

    index: int
    line: Line
    events: tuple[UsageEvent, ...]
    complete: bool


def _amount(event: UsageEvent) -> str:
    if event.amount_micros is None:
        return ""
    return str(micros_to_decimal(event.amount_micros))


def _cells(index: int, event: UsageEvent) -> list[str]:
    return [
        str(index),
        event.id,
        rfc3339(event.occurred_at_us),
        str(event.quantity),
        _amount(event),
    ]


def events_json(number: str, traced: Sequence[Traced]) -> str:
    """A second JSON document after the invoice's (a stream `jq` reads as two)."""
    document = {
        "type": "invoice_events",
        "invoice": number,
        "lines": [
            {
                "line": t.index,
                "kind": t.line.kind,
                "description": t.line.description,
                "complete": t.complete,
                "events": [
                    {
                        "id": e.id,
                        "occurred_at": rfc3339(e.occurred_at_us),
                        "quantity": e.quantity,
                        "amount": None
                        if e.amount_micros is None
                        else str(micros_to_decimal(e.amount_micros)),
                        "currency": e.currency,
                    }
                    for e in t.events
                ],
            }
            for t in traced
        ],
    }
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def events_csv(traced: Sequence[Traced]) -> str:
    """A blank line, then a second CSV table: one row per event, its line's index first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    out.write("\n")
    writer.writerow(EVENT_COLUMNS)
    for t in traced:
        for event in t.events:
            writer.writerow([escape_cell(cell) for cell in _cells(t.index, event)])
    return out.getvalue()


def events_html(traced: Sequence[Traced]) -> str:
    """A ``<section>`` of escaped tables, to go before the page's ``</body>``."""
    parts = ['<section class="events">', "<h2>Ledger events per line</h2>"]
    for t in traced:
        more = "" if t.complete else " (more not shown)"
        title = f"Line {t.index}: {t.line.description} ({plural(len(t.events), 'event')}{more})"
        parts.append(f"<h3>{html.escape(title)}</h3>")
        if not t.events:
            continue
        parts.append("<table><tr><th>event</th><th>occurred_at</th><th>quantity</th>")
        parts[-1] += "<th>amount</th></tr>"
        for event in t.events:
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in _cells(t.index, event)[1:])
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts) + "\n"
