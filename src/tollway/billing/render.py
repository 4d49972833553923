"""An invoice as JSON, CSV and a printable HTML page; the same invoice, the same bytes.

- JSON: `Invoice.to_dict`, sorted keys, two-space indents, a final newline.
- CSV: a header, then one row per line. A cell that a spreadsheet would run as a formula
  (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return; plain numbers such as
  ``-5.00`` excepted) gets a leading ``'`` (`tollway.outbound.geocode.cells.escape_cell`).
- HTML: one page from the ``templates/invoice.html`` package data, inline CSS, no scripts,
  fonts or images from the network; every value is HTML-escaped, so a hostile subject or
  description cannot inject markup.
"""

from __future__ import annotations

import csv
import html
import io
import json
from functools import lru_cache
from importlib import resources
from string import Template

from tollway.billing.invoice import Invoice, rfc3339
from tollway.outbound.geocode.cells import escape_cell

__all__ = ["CSV_COLUMNS", "to_csv", "to_html", "to_json"]

CSV_COLUMNS = (
    "invoice",
    "status",
    "subject",
    "currency",
    "kind",
    "description",
    "plan",
    "meter",
    "quantity",
    "amount",
    "period_start",
    "period_end",
    "grant",
    "coupon",
)


def to_json(inv: Invoice) -> str:
    return json.dumps(inv.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def to_csv(inv: Invoice) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in inv.lines:
        cells = (
            inv.number or "",
            inv.status,
            inv.subject,
            inv.currency,
            line.kind,
            line.description,
            line.plan or "",
            line.meter or "",
            "" if line.quantity is None else str(line.quantity),
            str(line.amount),
            rfc3339(line.period_start_us),
            rfc3339(line.period_end_us),
            line.grant or "",
            line.coupon or "",
        )
        writer.writerow([escape_cell(cell) for cell in cells])
    return out.getvalue()


@lru_cache(maxsize=1)
def _template() -> Template:
    text = resources.files("tollway.billing").joinpath("templates/invoice.html").read_text("utf-8")
    return Template(text)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def to_html(inv: Invoice) -> str:
    rows = "\n".join(
        "<tr>"
        f'<td class="kind">{_e(line.kind)}</td>'
        f"<td>{_e(line.description)}</td>"
        f"<td>{_e(line.period_start.date())} &ndash; {_e(line.period_end.date())}</td>"
        f'<td class="num">{_e("" if line.quantity is None else line.quantity)}</td>'
        f'<td class="num">{_e(line.amount)}</td>'
        "</tr>"
        for line in inv.lines
    )
    number = inv.number or "DRAFT"
    return _template().substitute(
        title=_e(f"Invoice {number}"),
        number=_e(number),
        status=_e(inv.status),
        issuer=_e(inv.issuer),
        subject=_e(inv.subject),
        currency=_e(inv.currency),
        period=_e(f"{rfc3339(inv.period_start_us)} to {rfc3339(inv.period_end_us)}"),
        rows=rows,
        subtotal=_e(inv.subtotal),
        discounts=_e(inv.discounts),
        credits=_e(inv.credits),
        total=_e(inv.total),
        hash=_e(inv.content_hash),
    )
