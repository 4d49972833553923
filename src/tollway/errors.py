"""The one exception tree: every error tollway raises derives from `TollwayError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tollway.engine.decision import Decision
    from tollway.outbound.routing import Skip
    from tollway.outbound.signals import Signal

__all__ = [
    "AdminError",
    "BillingError",
    "CacheError",
    "CouponError",
    "ConfigurationError",
    "EventFormatError",
    "ForbiddenError",
    "GrantConflictError",
    "InvalidArgumentError",
    "InvoiceError",
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
    "TrialUsedError",
    "UnknownLimitError",
    "UnknownNameError",
    "UnknownOperationError",
    "UnknownPlanError",
    "UnauthorizedError",
    "UnknownSubjectError",
    "UnknownTokenError",
    "WebhookVerificationError",
]


class TollwayError(Exception):
    """Root of every error tollway raises."""


@dataclass(frozen=True)
class PolicyIssue:
    """One problem found in a policy document."""

    path: str
    """Key path inside the document, e.g. ``plans.free.limits[1].quota``."""
    message: str
    """What is wrong, with the bad value and what was expected."""
    source: str | None = None
    """The file the document came from, when it came from a file."""

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class PolicyError(TollwayError, ValueError):
    """The policy document is invalid; `issues` lists every problem found at once."""

    def __init__(self, issues: list[PolicyIssue] | tuple[PolicyIssue, ...]) -> None:
        self.issues = tuple(issues)
        count = len(self.issues)
        head = f"{count} problem{'s' if count != 1 else ''} in the policy"
        super().__init__(head + ":\n" + "\n".join(f"  {issue}" for issue in self.issues))


class ConfigurationError(TollwayError, ValueError):
    """A setting outside the policy document is wrong: a store URL, a clock, an option."""


class InvalidArgumentError(TollwayError, ValueError):
    """An argument to a call is out of range or of the wrong type (a cost, an amount, a subject)."""


class UnknownNameError(TollwayError, LookupError):
    """A name that the policy or the store does not know."""


class UnknownSubjectError(UnknownNameError):
    """The subject has no plan: it was never assigned one and the policy has no default plan."""


class UnknownOperationError(UnknownNameError):
    """The operation is not declared in the policy's ``[operations]``."""


class UnknownPlanError(UnknownNameError):
    """The plan is not declared in the policy's ``[plans]``."""


class UnknownLimitError(UnknownNameError, KeyError):
    """No limit of that name applies to the subject (a `KeyError` too: `Decision.limit` and
    `Usage.limit` raised a bare one before)."""

    __str__ = Exception.__str__  # KeyError's would quote the message


class StoreError(TollwayError):
    """The store failed to answer."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached (timeout, refused connection, open circuit breaker)."""

    def __init__(self, message: str, retry_after: float = 0.0, *, sent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds until the store will be tried again (the circuit breaker's cooldown)."""
        self.sent = sent
        """Whether the command may have reached the store (a timeout, a lost reply) rather
        than surely not (an open breaker): what it did there is in doubt."""


class ReservationError(TollwayError):
    """A reservation was settled twice, or settled with a bad amount."""


class LimitExceeded(TollwayError):
    """Raised by the helpers that raise on denial; carries the decision."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        names = ", ".join(decision.violated) or "store unavailable"
        super().__init__(
            f"{decision.subject!r} may not {decision.operation!r} now: {names}"
            + (f"; retry after {decision.retry_after:.3f} s" if decision.retry_after else "")
        )


class NoProviderAvailable(TollwayError):
    """No provider of a route could take the call; ``skipped`` says why for each one."""

    def __init__(self, route: str, skipped: tuple[Skip, ...]) -> None:
        self.route = route
        self.skipped = skipped
        waits = [s.retry_after for s in skipped if s.retry_after is not None]
        self.retry_after: float | None = min(waits) if waits else None
        """Seconds until the soonest provider could take the call again (None: unknown)."""
        reasons = "; ".join(str(skip) for skip in skipped) or "it has no providers"
        super().__init__(f"route {route!r}: no provider can take the call: {reasons}")


class EventFormatError(InvalidArgumentError):
    """A CloudEvents envelope is malformed: not JSON, or a required attribute missing or bad.

    ``attribute`` names the attribute at fault (``"specversion"``, ``"data.amount"``), or is None
    when the document as a whole is unreadable."""

    def __init__(self, message: str, attribute: str | None = None) -> None:
        super().__init__(message)
        self.attribute = attribute


class WebhookVerificationError(TollwayError):
    """A received webhook failed verification: a header missing or malformed, a timestamp outside
    the tolerance, or no signature matching any secret. A receiver answers it with 401 and never
    retries it; ``reason`` is a stable code, ``header`` the header at fault (or None)."""

    def __init__(self, message: str, *, reason: str, header: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        """``missing_header``, ``invalid_header``, ``timestamp_too_old``,
        ``timestamp_too_new`` or ``no_matching_signature``."""
        self.header = header


class InvalidUsageEventError(InvalidArgumentError):
    """A ledger usage event is malformed; ``field`` names the bad field (``attributes['k']``)."""

    def __init__(self, message: str, *, event_id: str | None = None, field: str = "") -> None:
        self.event_id = event_id
        """The event's id when it had a usable one, else None."""
        self.field = field
        """The field at fault: ``quantity``, ``attributes['region']``, ``events[3]``..."""
        where = f"usage event {event_id!r}" if event_id else "usage event"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class LedgerError(TollwayError):
    """The ledger (the database of usage events) failed or refused an operation."""


class LedgerUnavailableError(LedgerError):
    """The ledger's database cannot be reached (refused, dropped connection, locked, timeout).

    Nothing of the failed call was committed unless the connection died during COMMIT; either
    way the same batch can be sent again as it is: inserts are idempotent on the event id.
    """


class LedgerSchemaError(LedgerError):
    """The ledger's schema cannot be used: newer than this tollway, or a migration failed."""


class ProviderCallError(TollwayError):
    """A call to a provider failed; ``signal`` says what that means for the provider's health
    (the router reads it to cool down, mark exhausted or count an error, then fails over)."""

    def __init__(self, provider: str, signal: Signal, message: str = "") -> None:
        self.provider = provider
        self.signal = signal
        super().__init__(
            message
            or f"{provider}: {signal.kind}" + (f" ({signal.detail})" if signal.detail else "")
        )


class ReentrantCallError(TollwayError, RuntimeError):
    """The function running for a key asked for that same key again (it would wait forever)."""


class CacheError(TollwayError):
    """The cache file cannot be used: not a SQLite database, from a newer version, closed."""


class BillingError(TollwayError):
    """A billing operation cannot be done as asked (`tollway.billing`); nothing was written."""


class GrantConflictError(BillingError, ValueError):
    """A prepaid grant id already used for another subject, currency, amount or expiry."""


class TrialUsedError(BillingError):
    """A second trial for a subject or an identity that already had one."""


class CouponError(BillingError, ValueError):
    """A coupon that cannot be redeemed: unknown, redeemed already, used up, or expired."""


class InvoiceError(BillingError):
    """An invoice or credit note that does not exist or cannot take the change asked."""


class AdminError(TollwayError):
    """The control plane (`tollway.admin`) refused a request: who asks, or what they may do."""


class UnauthorizedError(AdminError):
    """No valid admin token: malformed, unknown, revoked or expired (`reason` says which)."""

    def __init__(self, message: str, reason: str = "unknown") -> None:
        super().__init__(message)
        self.reason = reason
        """``malformed``, ``unknown``, ``revoked`` or ``expired``."""


class ForbiddenError(AdminError):
    """A valid admin token whose role or subject scope does not allow the action."""


class UnknownTokenError(AdminError, UnknownNameError):
    """No admin token has that id."""
