"""Policy activations picked up by every process sharing a store, without a restart.

`tollway.admin.policies` records versions in the ledger and, on an activation, publishes in
the store the version's text and the `Activation` in force (`tollway.stores.control`). A
client opened with ``policy_from="ledger"`` (or ``policy_from=PolicyWatch(...)`` for other
options) reads that one key at most once per ``check_every`` seconds, on the acquire path
itself: no thread. The interval is measured on the store's clock, from the time its replies
carry (Redis ``TIME``; the memory store's clock), so between two reads an acquire pays two
attribute tests and a comparison, not a clock call. The read due is made after the reply of
the call that finds it due, for the calls after it; the first call of a client reads the key
before it decides (and with ``check_every=0`` every call does). On a new activation it
parses the published text, checks it hashes to the announced version, and swaps the engine's
policy (`Engine.use`); a pilot gets an engine of its own.

Pilots: subjects in the activation's `Cohort` are decided under the pilot version, everyone
else under the base version. One in ``shadow_every`` acquires of subjects outside the cohort
is also evaluated under the pilot version as a dry run (a peek: nothing consumed), and the
limits that would have denied it are counted in the store (`shadow_report`), so an operator
sees what the pilot would deny before widening it. A shadow evaluation costs one more round
trip, plus one when something would be denied; it never fails the call.

What a watch cannot change: the open store (its ``[store]`` section applies at open only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tollway.engine import flows
from tollway.engine.cohort import Cohort
from tollway.engine.core import Engine
from tollway.engine.replies import OK
from tollway.engine.requests import Control, Flow
from tollway.engine.step import PEEK
from tollway.errors import (
    ConfigurationError,
    PolicyError,
    PolicyIssue,
    StoreUnavailableError,
    TollwayError,
)
from tollway.policy import load, loads
from tollway.policy.model import Policy
from tollway.policy.overrides import Override, override_limit
from tollway.stores.control import (
    ACTIVE_KEY,
    CountUp,
    GetValue,
    ReadCounts,
    body_key,
    checked_version,
    overrides_key,
    shadow_key,
)

log = logging.getLogger("tollway.watch")

EVALUATED = "n"
"""The shadow hash field counting evaluated steps; a limit's field is ``l:NAME``."""
_MEMBERS_CACHE = 100_000
_NEVER = 1 << 62


@dataclass(frozen=True, slots=True)
class PolicyWatch:
    """How a client follows the active policy: ``check_every`` seconds (of the store's clock)
    between reads of the active key (0: before every call, for tests); one shadow evaluation
    in ``shadow_every`` acquires outside a pilot's cohort (0: none); shadow counts kept
    ``shadow_ttl_s`` after the last one."""

    check_every: float = 0.5
    shadow_every: int = 10
    shadow_ttl_s: int = 7 * 86_400

    def __post_init__(self) -> None:
        if not 0 <= self.check_every <= 3600:
            raise ConfigurationError(
                f"check_every: {self.check_every!r}; expected 0 to 3600 seconds"
            )
        if self.shadow_every < 0 or self.shadow_ttl_s < 1:
            raise ConfigurationError(
                f"shadow_every: {self.shadow_every!r}, shadow_ttl_s: {self.shadow_ttl_s!r}; "
                "expected shadow_every >= 0 and shadow_ttl_s >= 1"
            )


@dataclass(frozen=True, slots=True)
class Activation:
    """What is in force: ``version`` for everyone, or, with a ``pilot``, the pilot version for
    the ``cohort`` and ``version`` for everyone else. ``seq`` orders activations."""

    seq: int
    version: str
    pilot: str | None = None
    cohort: Cohort | None = None
    overrides: str | None = None
    """The digest of the per-subject overrides in force (None: none)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "version": self.version,
                "pilot": self.pilot,
                "cohort": None if self.cohort is None else self.cohort.to_dict(),
                "overrides": self.overrides,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Activation:
        data = json.loads(text)
        cohort = data.get("cohort")
        pilot = data.get("pilot")
        overrides = data.get("overrides")
        return cls(
            int(data["seq"]),
            checked_version(data["version"]),
            None if pilot is None else checked_version(pilot),
            None if cohort is None else Cohort.from_dict(cohort),
            None if overrides is None else checked_version(overrides),
        )


def parse_policy(text: str, format: str, source: str | None = None) -> Policy:
    """A policy from its text in ``format`` (toml, yaml or json); `PolicyError` lists every
    problem, each with its key path."""
    if format == "json":
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise PolicyError([PolicyIssue("", f"invalid JSON: {exc}", source)]) from None
        if not isinstance(document, Mapping):
            raise PolicyError(
                [PolicyIssue("", "expected a JSON object at the top of the document", source)]
            )
        return load(document)
    if format not in ("toml", "yaml"):
        raise ConfigurationError(f"format: {format!r:.40}; expected toml, yaml or json")
    return loads(text, format="toml" if format == "toml" else "yaml", source=source)


class Watcher:
    """A client's follower of the active policy (built by the face; see the module)."""

    def __init__(self, engine: Engine, options: PolicyWatch) -> None:
        self.base = engine
        self.options = options
        self.pilot: Engine | None = None
        """The pilot version's engine while a pilot is active (the faces test it)."""
        self.due_us = 0
        """The store time (µs) from which the active key is read again, by the call whose
        reply is at or after it (the faces compare it with ``Reply.now_us``)."""
        self.routing = True
        """Whether a call must go through `select` first: before the first read, while a
        pilot is active, and always with ``check_every=0``."""
        self._always = options.check_every == 0
        self.activation: Activation | None = None
        self._seen: str | None = None
        self._cohort: Cohort | None = None
        self._listed: frozenset[str] = frozenset()
        self._members: dict[str, bool] = {}
        self._tick = 0

    # -- following the active key -----------------------------------------------------------

    def poll(self, now_us: int | None = None) -> Flow[None]:
        """Read the active key (``now_us``: the store's time, from a reply; None: not known,
        read again at the next reply); on a new activation load its versions and swap them
        in. A store that cannot answer, or a published text that does not load, keeps what
        is in force (logged) until the next check."""
        if self._always:
            self.due_us = _NEVER  # read by `select`, before every call
        else:
            self.due_us = 0 if now_us is None else now_us + round(self.options.check_every * 1e6)
        self.routing = self._always or self.pilot is not None
        try:
            raw = yield Control(GetValue(ACTIVE_KEY))
            if raw is None or raw == self._seen:
                return
            activation = Activation.from_json(raw)
            base = yield from self._policy(activation.version)
            pilot = None
            if activation.pilot is not None:
                pilot = yield from self._policy(activation.pilot)
            overrides: list[dict[str, Any]] = []
            if activation.overrides is not None:
                text = yield Control(GetValue(overrides_key(activation.overrides)))
                overrides = json.loads(text) if text is not None else []
        except (TollwayError, ValueError, KeyError, TypeError) as exc:
            log.warning("tollway: the active policy could not be read: %s", exc)
            return
        if base is not self.base.policy:
            self.base.use(base)
        if pilot is None:
            self.pilot = None
        else:
            engine = Engine(pilot, self.base.clock)
            engine.offset_us = self.base.offset_us
            self.pilot = engine
        for each in (self.base, self.pilot):
            if each is not None:
                each.set_overrides(_overrides(each.policy, overrides))
        self._cohort = activation.cohort
        listed = activation.cohort.subjects if activation.cohort is not None else None
        self._listed = frozenset(listed or ())
        self._members = {}
        self.activation = activation
        self._seen = raw
        self.routing = self._always or self.pilot is not None

    def _policy(self, version: str) -> Flow[Policy]:
        if version == self.base.policy.version:
            return self.base.policy
        pilot = self.pilot
        if pilot is not None and version == pilot.policy.version:
            return pilot.policy
        raw = yield Control(GetValue(body_key(version)))
        if raw is None:
            raise ConfigurationError(f"policy version {version} is active but not published")
        doc = json.loads(raw)
        policy = parse_policy(doc["body"], doc["format"], f"policy version {version}")
        if policy.version != version:
            raise ConfigurationError(
                f"the text published as policy version {version} is version {policy.version}"
            )
        return policy

    # -- choosing the engine of a call ------------------------------------------------------

    def select(
        self,
        subject: str,
        operation: str | None = None,
        cost: int | None = None,
        amount: Decimal | None = None,
    ) -> Flow[Engine]:
        """The engine to decide ``subject``'s call under (reading the active key first if it
        never was); with an ``operation``, an acquire outside a pilot's cohort may be
        evaluated in its shadow too."""
        if self._always or (self.activation is None and self._seen is None and self.routing):
            yield from self.poll()
        pilot = self.pilot
        if pilot is None:
            return self.base
        inside = yield from self._admits(subject)
        if inside:
            return pilot
        every = self.options.shadow_every
        if operation is not None and every:
            self._tick += 1
            if self._tick >= every:
                self._tick = 0
                yield from self._shadow(pilot, subject, operation, cost, amount)
        return self.base

    def _admits(self, subject: str) -> Flow[bool]:
        cohort = self._cohort
        if cohort is None:
            return False
        if cohort.subjects is not None:
            return subject in self._listed
        if cohort.plan is not None:
            # The plan in force as this process knows it (read once for a subject not seen).
            base = self.base
            if not base.knows(subject):
                try:
                    yield from flows.plan_of(base, subject)
                except StoreUnavailableError:
                    return False  # the call itself decides without the store, as ever
            assigned = base.assigned(subject)
            plan = assigned if assigned is not None else base.policy.defaults.plan
            return plan == cohort.plan
        members = self._members
        member = members.get(subject)
        if member is None:
            if len(members) >= _MEMBERS_CACHE:
                members.clear()
            member = members[subject] = cohort.admits(subject, None)
        return member

    def _shadow(
        self, pilot: Engine, subject: str, operation: str, cost: int | None, amount: Decimal | None
    ) -> Flow[None]:
        """A dry run of the acquire under the pilot; the limits that would deny it counted."""
        try:
            step, answer = yield from flows.send(
                pilot, lambda: pilot.consume(subject, operation, cost, amount, PEEK)
            )
            if answer.code != OK:
                return
            misfits = answer.misfits
            fields = [EVALUATED]
            fields.extend(
                "l:" + rule.name
                for i, rule in enumerate(step.rules)
                if (misfits >> i) & 1 and rule.enforcing
            )
            version = pilot.policy.version
            ttl_ms = self.options.shadow_ttl_s * 1000
            yield Control(CountUp(shadow_key(version), tuple(dict.fromkeys(fields)), ttl_ms))
        except TollwayError as exc:  # a shadow never fails the call it watches
            log.debug("tollway: shadow evaluation skipped: %s", exc)


def _overrides(policy: Policy, entries: list[dict[str, Any]]) -> dict[str, list[Override]]:
    """The published overrides parsed for ``policy``; one that does not fit it is skipped."""
    out: dict[str, list[Override]] = {}
    for entry in entries:
        try:
            subject, name = str(entry["subject"]), str(entry["limit"])
            limit = override_limit(policy, name, entry["spec"])
            expires = int(entry["expires_us"])
        except (TollwayError, KeyError, TypeError, ValueError) as exc:
            log.warning("tollway: an override was skipped: %s", exc)
            continue
        out.setdefault(subject, []).append(Override(subject, name, limit, expires))
    return out


def shadow_counts(version: str) -> Flow[dict[str, Any]]:
    """The shadow report of ``version``: ``{"version", "evaluated", "would_deny": {limit: n}}``
    (see `PolicyWatch.shadow_every` for the sampling)."""
    counts: dict[str, int] = yield Control(ReadCounts(shadow_key(version)))
    would = {field[2:]: n for field, n in sorted(counts.items()) if field.startswith("l:")}
    return {"version": version, "evaluated": counts.get(EVALUATED, 0), "would_deny": would}


def watch_options(policy_from: str | PolicyWatch | None) -> PolicyWatch | None:
    """What a client's ``policy_from`` means: None (the policy it was given, fixed),
    ``"ledger"`` (follow activations with the default options), or a `PolicyWatch`."""
    if policy_from is None or isinstance(policy_from, PolicyWatch):
        return policy_from
    if policy_from == "ledger":
        return PolicyWatch()
    raise ConfigurationError(
        f'policy_from: {policy_from!r:.80}; expected None, "ledger" or a PolicyWatch'
    )


__all__ = [
    "Activation",
    "PolicyWatch",
    "Watcher",
    "parse_policy",
    "shadow_counts",
    "watch_options",
]
