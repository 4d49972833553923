"""Billing on top of the ledger (issue 12, in progress): so far the rating of a quantity under
a charge model, exact in `Decimal` (`Charge`). Subscriptions, invoices, credits and credit
notes build on it."""

from tollway.billing.charges import AGGREGATIONS, MODELS, Charge, Tier

__all__ = ["AGGREGATIONS", "MODELS", "Charge", "Tier"]
