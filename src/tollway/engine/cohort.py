"""`Cohort`: who a pilot version applies to, decided the same way in every process.

A cohort is a list of subjects, a plan, or a stable percentage of subjects: a subject is in
a ``percent`` cohort when the first 8 bytes of the sha256 of its UTF-8 text, as a number,
fall in the first ``percent`` hundredths of their range. Every process computes the same
answer with no shared state, and raising the percentage only adds subjects (the ones in at
10% are still in at 20%).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tollway.errors import InvalidArgumentError
from tollway.keyspace import MAX_SUBJECT

MAX_COHORT_SUBJECTS = 10_000
"""The most subjects a cohort may list (it is published in one store key)."""
_SCALE = 1 << 64


@dataclass(frozen=True, slots=True)
class Cohort:
    """Exactly one of ``subjects``, ``plan`` or ``percent`` (0 < percent <= 100)."""

    subjects: tuple[str, ...] | None = None
    plan: str | None = None
    percent: float | None = None

    def __init__(
        self,
        subjects: Sequence[str] | None = None,
        plan: str | None = None,
        percent: float | None = None,
    ) -> None:
        options = (("subjects", subjects), ("plan", plan), ("percent", percent))
        given = [name for name, value in options if value is not None]
        if len(given) != 1:
            raise InvalidArgumentError(
                f"cohort: {', '.join(given) or 'nothing'} given; expected exactly one of "
                "subjects=[...], plan=NAME or percent=N"
            )
        if subjects is not None:
            subjects = _subjects(subjects)
        if plan is not None and (not isinstance(plan, str) or not plan or len(plan) > 256):
            raise InvalidArgumentError(f"cohort plan: {plan!r:.80}; expected a plan name")
        if percent is not None:
            if isinstance(percent, bool) or not isinstance(percent, (int, float)):
                raise InvalidArgumentError(f"cohort percent: {percent!r:.80}; expected a number")
            if not 0 < percent <= 100:
                raise InvalidArgumentError(
                    f"cohort percent: {percent}; expected more than 0 and at most 100"
                )
            percent = float(percent)
        object.__setattr__(self, "subjects", subjects)
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "percent", percent)

    def admits(self, subject: str, plan: str | None) -> bool:
        """Whether ``subject`` (on ``plan``, the plan in force for it) is in the cohort."""
        if self.subjects is not None:
            return subject in self.subjects
        if self.plan is not None:
            return plan == self.plan
        assert self.percent is not None
        return in_percent(subject, self.percent)

    def to_dict(self) -> dict[str, Any]:
        if self.subjects is not None:
            return {"subjects": list(self.subjects)}
        if self.plan is not None:
            return {"plan": self.plan}
        return {"percent": self.percent}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cohort:
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"cohort: {data!r:.80}; expected an object")
        unknown = set(data) - {"subjects", "plan", "percent"}
        if unknown:
            raise InvalidArgumentError(
                f"cohort: unknown key {sorted(unknown)[0]!r:.80}; expected subjects, plan or "
                "percent"
            )
        return cls(data.get("subjects"), data.get("plan"), data.get("percent"))


def in_percent(subject: str, percent: float) -> bool:
    """The stable percentage rule (see the module's docstring)."""
    digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < percent / 100 * _SCALE


def _subjects(subjects: object) -> tuple[str, ...]:
    if isinstance(subjects, str) or not isinstance(subjects, Sequence):
        raise InvalidArgumentError(
            f"cohort subjects: {subjects!r:.80}; expected a list of subjects"
        )
    if not subjects or len(subjects) > MAX_COHORT_SUBJECTS:
        raise InvalidArgumentError(
            f"cohort subjects: {len(subjects)} given; expected 1 to {MAX_COHORT_SUBJECTS}"
        )
    for subject in subjects:
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT:
            raise InvalidArgumentError(
                f"cohort subjects: {subject!r:.80} is not a subject; expected 1 to "
                f"{MAX_SUBJECT} characters"
            )
    return tuple(dict.fromkeys(subjects))


__all__ = ["MAX_COHORT_SUBJECTS", "Cohort", "in_percent"]
