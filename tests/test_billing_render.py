"""Invoices rendered as JSON, CSV and HTML: deterministic, and escaped against injection."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from importlib import resources
from pathlib import Path

from tests.billing_support import us

from tollway.billing.invoice import Invoice
from tollway.billing.records import Line
from tollway.billing.render import CSV_COLUMNS, to_csv, to_html, to_json

JAN = (us(2026, 1, 1), us(2026, 2, 1))
HOSTILE = '<script>alert("x")</script>&'


def invoice(subject: str = "acct", description: str = "Plan pro fee") -> Invoice:
    lines = (
        Line(
            kind="fee",
            description=description,
            amount=Decimal("49.00"),
            exact=Decimal("49"),
            period_start_us=JAN[0],
            period_end_us=JAN[1],
            plan="pro",
        ),
        Line(
            kind="discount",
            description="Coupon X",
            amount=Decimal("-5.00"),
            exact=Decimal("-5"),
            period_start_us=JAN[0],
            period_end_us=JAN[1],
            coupon="X",
        ),
    )
    return Invoice(
        number="INV-2026-000001",
        status="finalized",
        subject=subject,
        currency="USD",
        period_start_us=JAN[0],
        period_end_us=JAN[1],
        lines=lines,
        as_of_us=JAN[1],
        finalized_at_us=JAN[1] + 1,
    )


def test_json_is_the_dict_and_stable() -> None:
    inv = invoice()
    text = to_json(inv)
    assert json.loads(text) == inv.to_dict()
    again = Invoice.from_dict(json.loads(text))
    assert to_json(again) == text and again.content_hash == inv.content_hash


def test_csv_one_row_per_line_and_formulas_escaped() -> None:
    inv = invoice(subject='=HYPERLINK("http://evil")', description="+SUM(A1)\t@x")
    rows = list(csv.reader(io.StringIO(to_csv(inv))))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == 3
    first = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert first["subject"] == '\'=HYPERLINK("http://evil")'
    assert first["description"] == "'+SUM(A1)\t@x"
    assert first["amount"] == "49.00" and first["period_start"] == "2026-01-01T00:00:00Z"
    # A plain negative number stays a number.
    assert dict(zip(CSV_COLUMNS, rows[2], strict=True))["amount"] == "-5.00"
    assert to_csv(inv) == to_csv(Invoice.from_dict(inv.to_dict()))


def test_html_escapes_every_value_and_loads_nothing() -> None:
    inv = invoice(subject=HOSTILE, description=HOSTILE)
    page = to_html(inv)
    assert (
        "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    )
    assert page.count("&lt;script&gt;") == 2
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert "49.00" in page and "44.00" in page and inv.content_hash in page
    assert to_html(Invoice.from_dict(inv.to_dict())) == page


def test_the_template_ships_as_package_data() -> None:
    assert resources.files("tollway.billing").joinpath("templates/invoice.html").is_file()
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    assert "billing/templates/*.html" in pyproject.read_text(encoding="utf-8")
