"""Failed API-key attempts, limited per client address (``[keys] failed_attempts``).

Guessing keys must not be free: each presented key that does not verify (a 401) takes one unit
of a quota counted under an internal subject made from the client address (``@key-failures:``
followed by its ``ip:…`` subject), in the same atomic step and the same store as every other
limit, so the count holds across processes. Once the quota is used up, that address's key
attempts are answered 429 with ``Retry-After`` until the window ends, **valid keys included**:
otherwise a 200 among the 429s would still tell a guesser which key is right. Successful
requests never count.

The sans-IO protocol, driven by the faces (`tollway.asgi`, `tollway.wsgi`, `tollway.fastapi`):

1. `KeyAttempts.blocked_for`: a 429 when this process already saw the address refused
   (until the store said the window ends), so a flood costs no store call at all.
2. The face verifies the key. Refused: `KeyAttempts.failure` builds the step that counts it;
   verified: `KeyAttempts.standing` builds a step that reads, without consuming, whether one
   more failure would still fit (the address may be blocked by another process).
3. The face runs the step (``tw.driver.decide``) and `KeyAttempts.refusal` reads its decision:
   the seconds to wait while the address is blocked (a 429), else None (the 401, or the
   admission, stands). `tollway.http.gate.Gate` does steps 1 and 3 for the middleware.

A store that cannot count is no reason to refuse a verified key (nor to answer a refused one
anything but 401): the limit is skipped then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, NamedTuple

from tollway.engine.core import Engine
from tollway.engine.decision import Decision
from tollway.engine.rules import Check, Rule
from tollway.engine.step import ACQUIRE, KEY_FAILURES_PREFIX, PEEK, Step
from tollway.http.problem import Problem, problem
from tollway.policy.model import Limit, Quota

__all__ = ["SUBJECT_PREFIX", "Attempt", "KeyAttempts"]

SUBJECT_PREFIX: Final = KEY_FAILURES_PREFIX
"""The internal subjects of the counts: ``@key-failures:ip:203.0.113.7``."""
LIMIT_NAME: Final = "@failed_attempts"
"""Not a name a policy's limit can have (they start with a letter or digit): its counter can
never be a field a plan's limit counts in, whatever subject the application uses."""
_OPERATION = "key-attempt"
_US = 1_000_000
# Addresses this process saw refused; a full table is cleared (it only saves store calls).
_BLOCKED_MAX = 65_536


class Attempt(NamedTuple):
    """A step for the face to decide (``tw.driver.decide(attempt.build)``), then to hand back
    to `KeyAttempts.refusal` with its answer."""

    subject: str
    build: Callable[[], Step]


class KeyAttempts:
    """The failed-attempts limit of the engine's policy, on its clock (`of`: None when the
    policy turns it off). Built by a face from the tollway that holds the keys."""

    def __init__(self, engine: Engine, quota: Quota) -> None:
        self.engine = engine
        self.quota = quota
        limit = Limit(
            name=LIMIT_NAME,
            kind="quota",
            path="keys.failed_attempts",
            quota=quota,
            on_error="open",
        )
        self.check = Check("keys", _OPERATION, (Rule(limit, None),), 1, None)
        self._blocked: dict[str, int] = {}

    @classmethod
    def of(cls, engine: Engine) -> KeyAttempts | None:
        quota = engine.policy.keys.failed_attempts
        return cls(engine, quota) if quota is not None else None

    @staticmethod
    def subject(address_subject: str) -> str:
        """The counter's subject for a client address's subject (``ip:…``)."""
        return SUBJECT_PREFIX + address_subject

    def blocked_for(self, subject: str) -> int | None:
        """Seconds to wait when this process saw ``subject`` refused and the window it was
        refused in has not ended (local clock); None otherwise."""
        until = self._blocked.get(subject)
        if until is None:
            return None
        now_us = self.engine.clock()
        if now_us >= until:
            self._blocked.pop(subject, None)  # another thread may have done it already
            return None
        return _seconds(until - now_us)

    def failure(self, subject: str) -> Attempt:
        """The step that counts one failed attempt of ``subject``."""
        return Attempt(subject, lambda: self._step(subject, ACQUIRE))

    def standing(self, subject: str) -> Attempt:
        """The step that reads whether ``subject`` may still fail once (consumes nothing)."""
        return Attempt(subject, lambda: self._step(subject, PEEK))

    def refusal(self, attempt: Attempt, decision: Decision | None) -> int | None:
        """Seconds to wait when ``decision`` (of ``attempt``'s step; None when the store could
        not answer) says the address is blocked, remembered until then; None when it is not."""
        if decision is None:
            return None
        for _rule, admitted, figures, _window in decision.standings():
            if admitted:
                return None
            wait_us = figures[2]  # until the window ends: the whole quota is back then
            if len(self._blocked) >= _BLOCKED_MAX:
                self._blocked.clear()
            self._blocked[attempt.subject] = self.engine.clock() + wait_us
            return _seconds(wait_us)
        return None  # pragma: no cover - the step has one rule

    def problem(self, retry_after: int) -> Problem:
        """The 429 problem answering a blocked address's key attempt."""
        quota = self.quota
        return problem(
            429,
            "Too many failed API key attempts",
            f"{quota.count} API keys that did not verify came from this client address this "
            f"{quota.period}; its key attempts are refused until the {quota.period} ends, in "
            f"{retry_after} second{'s' if retry_after != 1 else ''}.",
            headers=[("Retry-After", str(retry_after))],
        )

    def _step(self, subject: str, mode: int) -> Step:
        check, engine = self.check, self.engine
        # No plan is assigned to these subjects: the step names the check's own, as a
        # provider's step does; no usage event is written (step.event stays empty).
        step = Step(subject, None, check.plan, check, 1, None, [1], mode)
        span = step.span = check.windows(engine.clock() + engine.offset_us)
        step.windows = span[2]
        step.packed = span[3]
        return step


def _seconds(us: int) -> int:
    return max(1, math.ceil(us / _US))
