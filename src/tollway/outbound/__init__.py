"""Spend control for the paid APIs a service calls: routes of providers with budgets, quotas
and health, failing over before a limit breaks (``tw.route("geocoding")``)."""

from tollway.outbound.router import AsyncCall, AsyncRoute, Call, Route
from tollway.outbound.routing import Outcome, Skip, ThresholdAlert
from tollway.outbound.signals import ProviderCallError, Signal, parse_retry_after

__all__ = [
    "AsyncCall",
    "AsyncRoute",
    "Call",
    "Outcome",
    "ProviderCallError",
    "Route",
    "Signal",
    "Skip",
    "ThresholdAlert",
    "parse_retry_after",
]
