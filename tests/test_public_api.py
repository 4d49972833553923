"""The public surface is pinned: adding or removing a name is a deliberate, reviewed change."""

from __future__ import annotations

import inspect

import tollway
import tollway.billing
import tollway.errors
import tollway.metrics
import tollway.outbound
import tollway.outbound.geocode
import tollway.testing

PUBLIC = {
    "AsyncReservation",
    "AsyncTollway",
    "ConfigurationError",
    "Crossing",
    "Decision",
    "InvalidArgumentError",
    "LimitExceeded",
    "LimitState",
    "NoProviderAvailable",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "Reservation",
    "ReservationError",
    "StoreError",
    "StoreUnavailableError",
    "Tollway",
    "TollwayError",
    "UnknownLimitError",
    "UnknownNameError",
    "UnknownOperationError",
    "UnknownPlanError",
    "UnknownSubjectError",
    "Usage",
    "__version__",
    "load_policy",
}


OUTBOUND = {
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
}


GEOCODE = {
    "Answer",
    "BatchReport",
    "CacheError",
    "GeocodeAdapter",
    "GeocodeOutcome",
    "GeocodeResult",
    "Geocoder",
    "ResultCache",
    "adapters_from_policy",
    "geocode_csv",
    "make_adapter",
}


def test_all_is_pinned_and_importable() -> None:
    assert set(tollway.__all__) == PUBLIC
    assert len(tollway.__all__) == len(PUBLIC)  # no duplicates
    for name in tollway.__all__:
        assert hasattr(tollway, name), name
    assert tollway.testing.__all__ == ["FakeClock"]
    assert set(tollway.outbound.__all__) == OUTBOUND
    assert tollway.billing.__all__ == [
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
    for name in tollway.billing.__all__:
        assert hasattr(tollway.billing, name), name
    assert set(tollway.outbound.geocode.__all__) == GEOCODE
    for name in tollway.outbound.geocode.__all__:
        assert hasattr(tollway.outbound.geocode, name), name
    for name in tollway.outbound.__all__:
        assert hasattr(tollway.outbound, name), name
    assert tollway.metrics.__all__ == ["DecisionObserver", "Metrics", "metrics_app", "render"]
    for name in tollway.metrics.__all__:
        assert hasattr(tollway.metrics, name), name


ERRORS = {
    "AdminError",
    "ForbiddenError",
    "UnauthorizedError",
    "UnknownTokenError",
    "BillingError",
    "CacheError",
    "CouponError",
    "GrantConflictError",
    "InvoiceError",
    "TrialUsedError",
    "ConfigurationError",
    "EventFormatError",
    "InvalidArgumentError",
    "InvalidUsageEventError",
    "LedgerError",
    "LedgerSchemaError",
    "LedgerUnavailableError",
    "LimitExceeded",
    "NoProviderAvailable",
    "PolicyError",
    "PolicyIssue",
    "ProviderCallError",
    "ReentrantCallError",
    "ReservationError",
    "StoreError",
    "StoreUnavailableError",
    "TollwayError",
    "UnknownLimitError",
    "UnknownNameError",
    "UnknownOperationError",
    "UnknownPlanError",
    "UnknownSubjectError",
    "WebhookVerificationError",
}


def test_every_error_is_defined_in_errors_and_exported_there() -> None:
    assert set(tollway.errors.__all__) == ERRORS
    defined = {
        name
        for name, obj in inspect.getmembers(tollway.errors, inspect.isclass)
        if obj.__module__ == "tollway.errors"
    }
    assert defined == ERRORS
    # where they were first defined, they are still importable (the same class)
    assert tollway.outbound.ProviderCallError is tollway.errors.ProviderCallError
    assert tollway.outbound.geocode.CacheError is tollway.errors.CacheError


def test_every_error_derives_from_tollway_error() -> None:
    errors = [
        obj
        for _, obj in inspect.getmembers(tollway.errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == "tollway.errors"
    ]
    assert len(errors) >= 12
    assert all(issubclass(error, tollway.TollwayError) for error in errors)


def test_errors_are_also_the_builtin_kinds_callers_expect() -> None:
    assert issubclass(tollway.PolicyError, ValueError)
    assert issubclass(tollway.InvalidArgumentError, ValueError)
    assert issubclass(tollway.UnknownOperationError, LookupError)
    assert issubclass(tollway.StoreUnavailableError, tollway.StoreError)


def test_the_package_is_typed() -> None:
    from importlib import resources

    assert (resources.files("tollway") / "py.typed").is_file()
    assert (resources.files("tollway.stores") / "lua" / "step.lua").is_file()
