"""Invoices and credit notes (``billing_invoices``, ``billing_credit_notes``), numbered
gaplessly (``billing_numbers``).

A document's number is taken in the transaction that stores it (an upsert that bumps
``last_seq`` of its (scope, year) row and returns it: the row lock serializes concurrent
finalizations, and a rolled back one gives its number back), so numbers have no gaps and no
duplicates. The body holds its own number, so the caller passes ``make(number) -> draft``.
A credit note locks its invoice's row first, so two notes at once never credit more than
the invoice's total between them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tollway.billing.storage.sql import Dialect, mark, marks, require_text
from tollway.errors import BillingError, InvoiceError
from tollway.metering.ledger.flows import Flow, Query

__all__ = [
    "CreditNoteDraft",
    "InvoiceDraft",
    "StoredCreditNote",
    "StoredInvoice",
    "credit_notes",
    "invoice",
    "invoices",
    "last_invoice",
    "store_credit_note",
    "store_invoice",
]

BODY_MAX = 4 * 1024 * 1024
"""The longest canonical JSON body a document may have (bytes of UTF-8)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoiceDraft:
    """What `store_invoice`'s ``make`` returns for the number it was given."""

    subject: str
    period_start_us: int
    period_end_us: int
    currency: str
    total_micros: int
    finalized_at_us: int
    as_of_us: int
    body: str
    """The canonical JSON text (it holds the number)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredInvoice(InvoiceDraft):
    number: str
    status: str = "finalized"
    content_hash: str = ""
    """sha256 hex of ``body`` (UTF-8)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditNoteDraft:
    amount_micros: int
    reason: str
    refund: bool
    created_at_us: int
    body: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCreditNote(CreditNoteDraft):
    number: str
    invoice_number: str
    subject: str
    content_hash: str = ""


_ICOLS = (
    "number, subject, period_start_us, period_end_us, currency, total_micros, status, "
    "finalized_at_us, as_of_us, body, content_hash"
)
_CCOLS = (
    "number, invoice_number, subject, amount_micros, reason, refund, created_at_us, body, "
    "content_hash"
)


def content_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _check_body(body: object) -> str:
    if not isinstance(body, str) or len(body.encode("utf-8")) > BODY_MAX:
        raise BillingError(f"document body: expected a str of at most {BODY_MAX} bytes")
    return body


def _take_number(dialect: Dialect, scope: str, year: int, numbering: str) -> Flow[str]:
    require_text("numbering scope", scope)
    p = mark(dialect)
    rows = yield Query(
        f"INSERT INTO billing_numbers (scope, year, last_seq) VALUES ({p}, {p}, 1) "
        "ON CONFLICT (scope, year) DO UPDATE SET last_seq = billing_numbers.last_seq + 1 "
        "RETURNING last_seq",
        (scope, int(year)),
    )
    return numbering.format(year=int(year), seq=int(rows[0][0]))


def store_invoice(
    dialect: Dialect,
    *,
    scope: str,
    year: int,
    numbering: str,
    make: Callable[[str], InvoiceDraft],
) -> Flow[StoredInvoice]:
    """Take the next number of (``scope``, ``year``) formatted by ``numbering`` (``{year}``,
    ``{seq}``), build the invoice with ``make(number)`` and store it; `InvoiceError` (and no
    number taken) when the subject has an invoice for that period start already."""
    number = yield from _take_number(dialect, scope, year, numbering)
    draft = make(number)
    body = _check_body(draft.body)
    p = mark(dialect)
    clash = yield Query(
        f"SELECT number FROM billing_invoices WHERE subject = {p} AND period_start_us = {p}",
        (draft.subject, draft.period_start_us),
    )
    if clash:
        raise InvoiceError(
            f"{draft.subject!r} has invoice {clash[0][0]} for the period starting at "
            f"{draft.period_start_us} us already; a period is finalized once"
        )
    stored = StoredInvoice(
        number=number,
        subject=draft.subject,
        period_start_us=int(draft.period_start_us),
        period_end_us=int(draft.period_end_us),
        currency=draft.currency,
        total_micros=int(draft.total_micros),
        finalized_at_us=int(draft.finalized_at_us),
        as_of_us=int(draft.as_of_us),
        body=body,
        content_hash=content_hash(body),
    )
    yield Query(f"INSERT INTO billing_invoices ({_ICOLS}) VALUES ({marks(dialect, 11)})", (
        stored.number, stored.subject, stored.period_start_us, stored.period_end_us,
        stored.currency, stored.total_micros, stored.status, stored.finalized_at_us,
        stored.as_of_us, stored.body, stored.content_hash,
    ))  # fmt: skip
    return stored


def invoice(dialect: Dialect, number: str) -> Flow[StoredInvoice | None]:
    rows = yield Query(
        f"SELECT {_ICOLS} FROM billing_invoices WHERE number = {mark(dialect)}", (number,)
    )
    return _invoice(rows[0]) if rows else None


def invoices(dialect: Dialect, subject: str, limit: int = 1000) -> Flow[list[StoredInvoice]]:
    """``subject``'s invoices, newest period first (at most ``limit``)."""
    limit = max(1, min(int(limit), 100_000))
    rows = yield Query(
        f"SELECT {_ICOLS} FROM billing_invoices WHERE subject = {mark(dialect)} "
        f"ORDER BY period_start_us DESC LIMIT {limit}",
        (subject,),
    )
    return [_invoice(row) for row in rows]


def last_invoice(dialect: Dialect, subject: str) -> Flow[StoredInvoice | None]:
    found = yield from invoices(dialect, subject, limit=1)
    return found[0] if found else None


def store_credit_note(
    dialect: Dialect,
    *,
    invoice_number: str,
    scope: str,
    year: int,
    numbering: str,
    make: Callable[[str], CreditNoteDraft],
) -> Flow[StoredCreditNote]:
    """Credit part of invoice ``invoice_number``: `InvoiceError` when the invoice is not there
    or this note with the earlier ones would credit more than its total (nothing stored)."""
    p = mark(dialect)
    lock = " FOR UPDATE" if dialect == "postgres" else ""
    rows = yield Query(
        f"SELECT subject, total_micros FROM billing_invoices WHERE number = {p}{lock}",
        (invoice_number,),
    )
    if not rows:
        raise InvoiceError(f"invoice {invoice_number!r} is not in the ledger")
    subject, total = rows[0][0], int(rows[0][1])
    done = yield Query(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM billing_credit_notes "
        f"WHERE invoice_number = {p}",
        (invoice_number,),
    )
    credited = int(done[0][0])
    number = yield from _take_number(dialect, scope, year, numbering)
    draft = make(number)
    amount = int(draft.amount_micros)
    if amount <= 0 or credited + amount > total:
        raise InvoiceError(
            f"invoice {invoice_number}: total {total} micros, credited {credited} already; "
            f"a credit note of {amount} micros would exceed the total (expected 1.."
            f"{total - credited})"
        )
    body = _check_body(draft.body)
    note = StoredCreditNote(
        number=number,
        invoice_number=invoice_number,
        subject=subject,
        amount_micros=amount,
        reason=draft.reason,
        refund=bool(draft.refund),
        created_at_us=int(draft.created_at_us),
        body=body,
        content_hash=content_hash(body),
    )
    yield Query(f"INSERT INTO billing_credit_notes ({_CCOLS}) VALUES ({marks(dialect, 9)})", (
        note.number, note.invoice_number, note.subject, note.amount_micros, note.reason,
        note.refund, note.created_at_us, note.body, note.content_hash,
    ))  # fmt: skip
    return note


def credit_notes(dialect: Dialect, invoice_number: str) -> Flow[list[StoredCreditNote]]:
    """The credit notes of one invoice, oldest first."""
    rows = yield Query(
        f"SELECT {_CCOLS} FROM billing_credit_notes WHERE invoice_number = {mark(dialect)} "
        "ORDER BY created_at_us, number",
        (invoice_number,),
    )
    return [_note(row) for row in rows]


def _invoice(row: Sequence[Any]) -> StoredInvoice:
    return StoredInvoice(
        number=row[0],
        subject=row[1],
        period_start_us=int(row[2]),
        period_end_us=int(row[3]),
        currency=row[4],
        total_micros=int(row[5]),
        status=row[6],
        finalized_at_us=int(row[7]),
        as_of_us=int(row[8]),
        body=row[9],
        content_hash=row[10],
    )


def _note(row: Sequence[Any]) -> StoredCreditNote:
    return StoredCreditNote(
        number=row[0],
        invoice_number=row[1],
        subject=row[2],
        amount_micros=int(row[3]),
        reason=row[4],
        refund=bool(row[5]),
        created_at_us=int(row[6]),
        body=row[7],
        content_hash=row[8],
    )
