"""tollway: fair-usage control for Python services.

Rate limits, quotas and money budgets decided in one atomic step, on Redis or in memory.
"""

from tollway.client import AsyncTollway, Tollway
from tollway.engine.decision import Crossing, Decision, LimitState
from tollway.errors import (
    ConfigurationError,
    InvalidArgumentError,
    LimitExceeded,
    NoProviderAvailable,
    PolicyError,
    PolicyIssue,
    ReservationError,
    StoreError,
    StoreUnavailableError,
    TollwayError,
    UnknownLimitError,
    UnknownNameError,
    UnknownOperationError,
    UnknownPlanError,
    UnknownSubjectError,
)
from tollway.policy import load as load_policy
from tollway.policy.model import Policy
from tollway.reservation import AsyncReservation, Reservation
from tollway.usage import Usage

__version__ = "0.1.0"

__all__ = [
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
]
