"""`Usage`: where every limit of a subject's plan stands, read without consuming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tollway.engine.decision import LimitState, find_limit


@dataclass(frozen=True, slots=True)
class Usage:
    subject: str
    plan: str | None
    limits: tuple[LimitState, ...]
    fields: tuple[str, ...] = ()
    """The counters' fields in the subject's state, in the order of ``limits`` (for `reset`)."""

    def limit(self, name: str, operation: str | None = None) -> LimitState:
        """The state of the limit called ``name`` (of ``operation``, for a limit counted per
        operation); `UnknownLimitError` (a `KeyError` too) when none applies."""
        return find_limit(self.limits, name, operation, self.subject, self.plan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "plan": self.plan,
            "limits": [state.to_dict() for state in self.limits],
        }
