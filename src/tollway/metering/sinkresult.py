"""What one delivery attempt came to: `SendResult` (a sink's answer) and its `AttemptOutcome`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["AttemptOutcome", "SendResult"]

AttemptOutcome = Literal["delivered", "failed", "gone"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """One attempt's answer, from a sink's `Sink.send`."""

    outcome: AttemptOutcome
    status: int | None = None
    """The HTTP status, when there was an answer."""
    error: str | None = None
    """What went wrong (``"HTTP 500: …"``, ``"timed out after 0.2 s"``, an exception)."""
    retry_after: float | None = None
    """Seconds the sink asked to wait (``Retry-After``)."""
    refused: bool = False
    """A failure no retry can mend: the target was refused before anything was sent (its
    address is inside the network, `tollway.netrules`). The message is dead-lettered at once."""

    @classmethod
    def delivered(cls, status: int | None = None) -> SendResult:
        return cls("delivered", status=status)

    @classmethod
    def failed(
        cls, error: str, *, status: int | None = None, retry_after: float | None = None
    ) -> SendResult:
        return cls("failed", status=status, error=error, retry_after=retry_after)

    @classmethod
    def refused_by_rules(cls, error: str) -> SendResult:
        """Not sent: the rules refused the target (see ``refused``)."""
        return cls("failed", error=error, refused=True)

    @classmethod
    def gone(cls, error: str, *, status: int | None = 410) -> SendResult:
        return cls("gone", status=status, error=error)
