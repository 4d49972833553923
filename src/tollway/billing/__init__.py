"""Billing on top of the ledger: prices, subscriptions, invoices, prepaid credits, discounts,
credit notes and re-rating.

`Billing` and `AsyncBilling` are ``tw.billing`` (`tollway.billing.facade`): they read the
records from the ledger, call the pure functions below, store what they give, and tell the
hooks. `Closed` is what `Billing.close` did. The rest is a pure function of records
(`PlanChange`, `GrantRecord`, `Redemption`, `Line`) and the `Policy`: no ledger, no store.

- `period_at(config, t_us, anchor_us=None)` (and `next_period`, `previous_period`): the
  billing period holding an instant, ``(start_us, end_us)``.
- `build_invoice(InvoiceInputs(...))`: the draft `Invoice` of one subject's period (fees
  prorated, usage rated, coupons, prepaid credits grant by grant, earlier adjustments);
  `finalize(draft, number, at_us)` numbers it. `Invoice.canonical_json()` and
  `Invoice.content_hash` are what is stored; `Invoice.from_dict` reads it back.
- `adjust(invoiced, rerated)`: the adjustment lines a re-rated period gives the next invoice;
  `favours_customer(lines)`: whether to issue a credit note for them instead.
- `build_credit_note(invoice, ...)`: a `CreditNote`, never more than the invoice has left.
- `allocate(grants, draws, start_us, end_us)` and `change_points(grants, start, end)`: which
  grant paid what (the invoice's credits lines; a balance by grant).
- `to_json`, `to_csv`, `to_html`: an invoice rendered, the same bytes every time.
- `Charge` and `round_line`: a quantity's price under a charge model, and a line's rounding.

The rules (proration, trials, discounts order, credits, adjustments, rounding) are in
docs/billing.md and in each module's docstring.
"""

from tollway.billing.adjustments import adjust, favours_customer
from tollway.billing.closing import Closed
from tollway.billing.credits import Allocation, allocate, change_points
from tollway.billing.facade import AsyncBilling, Billing
from tollway.billing.invoice import (
    CreditNote,
    Invoice,
    InvoiceInputs,
    build_credit_note,
    build_invoice,
    finalize,
)
from tollway.billing.periods import next_period, period_at, previous_period
from tollway.billing.records import GrantRecord, Line, PlanChange, Redemption
from tollway.billing.render import to_csv, to_html, to_json
from tollway.billing.rounding import minor_unit, round_line
from tollway.billing.subscriptions import Segment, segments
from tollway.policy.charges import AGGREGATIONS, MODELS, Charge, Tier

__all__ = [
    "AGGREGATIONS",
    "MODELS",
    "AsyncBilling",
    "Billing",
    "Closed",
    "Allocation",
    "Charge",
    "CreditNote",
    "GrantRecord",
    "Invoice",
    "InvoiceInputs",
    "Line",
    "PlanChange",
    "Redemption",
    "Segment",
    "Tier",
    "adjust",
    "allocate",
    "build_credit_note",
    "build_invoice",
    "change_points",
    "favours_customer",
    "finalize",
    "minor_unit",
    "next_period",
    "period_at",
    "previous_period",
    "round_line",
    "segments",
    "to_csv",
    "to_html",
    "to_json",
]
