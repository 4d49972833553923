"""Billing on top of the ledger (issue 12, in progress): so far the rating of a quantity under
a charge model, exact in `Decimal` (`Charge`), and the rounding of an invoice line
(`round_line`). Subscriptions, invoices, credits and credit
notes build on it."""

from tollway.billing.rounding import minor_unit, round_line
from tollway.policy.charges import AGGREGATIONS, MODELS, Charge, Tier

__all__ = ["AGGREGATIONS", "MODELS", "Charge", "Tier", "minor_unit", "round_line"]
