"""Billing's storage in the ledger (migration 3): plan history, trials, grants, redemptions,
usage aggregates, invoices and credit notes, as flows.

Each function takes the ledger's dialect first and returns a flow
(`tollway.metering.ledger.flows`); run it in one transaction of a sync or async ledger::

    change = ledger.transact(lambda: append_change(ledger.dialect, "acct_1", "pro", ...))
    totals = await aledger.transact(lambda: usage_totals(aledger.dialect, "acct_1", ...))
"""

from __future__ import annotations

from tollway.billing.storage.activity import changed_since, first_activity
from tollway.billing.storage.documents import (
    CreditNoteDraft,
    InvoiceDraft,
    StoredCreditNote,
    StoredInvoice,
    credit_notes,
    invoice,
    invoices,
    last_invoice,
    store_credit_note,
    store_invoice,
)
from tollway.billing.storage.grants import add_grant, grants, redeem, redemptions
from tollway.billing.storage.history import (
    append_change,
    changes,
    subjects_with_history,
    take_trial,
)
from tollway.billing.storage.sql import Dialect
from tollway.billing.storage.usage import draw_sums, trace, usage_totals, usage_totals_all

__all__ = [
    "CreditNoteDraft",
    "Dialect",
    "InvoiceDraft",
    "StoredCreditNote",
    "StoredInvoice",
    "add_grant",
    "append_change",
    "changed_since",
    "changes",
    "credit_notes",
    "draw_sums",
    "first_activity",
    "grants",
    "invoice",
    "invoices",
    "last_invoice",
    "redeem",
    "redemptions",
    "store_credit_note",
    "store_invoice",
    "subjects_with_history",
    "take_trial",
    "trace",
    "usage_totals",
    "usage_totals_all",
]
