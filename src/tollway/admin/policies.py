"""Versioned policies: upload, diff, activate (for everyone or a pilot cohort), roll back.

The ledger is the system of record (`tollway.admin.policy_ledger`); an activation is then
published in the store (`tollway.stores.control`): the texts of the versions in force, then
the active key, which every client opened with ``policy_from="ledger"`` reads at most every
``check_every`` seconds (`tollway.watch`). Should the store be away after the ledger
committed, `Policies.publish` puts the ledger's state in the store again (idempotent).

Each mutation returns what it changed, ``(before, after)``, for the caller's audit record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from tollway.admin.override_ledger import (
    MAX_LIVE,
    OverrideRecord,
    add_override,
    live_overrides,
)
from tollway.admin.policy_diff import Change, diff, document
from tollway.admin.policy_ledger import (
    ActivationRecord,
    Dialect,
    Version,
    activate,
    add_version,
    current,
    get_version,
    history,
    list_versions,
    rollback,
)
from tollway.driver import drive
from tollway.engine.cohort import Cohort
from tollway.engine.requests import Control, Flow
from tollway.engine.step import system_clock
from tollway.errors import InvalidArgumentError, UnknownNameError
from tollway.keyspace import MAX_SUBJECT
from tollway.metering.ledger import Ledger
from tollway.metering.ledger.flows import Flow as LedgerFlow
from tollway.policy.overrides import override_limit
from tollway.stores import SyncStore
from tollway.stores.control import (
    ACTIVE_KEY,
    SetValues,
    body_key,
    checked_version,
    overrides_key,
)
from tollway.watch import parse_policy, shadow_counts

T = TypeVar("T")
MAX_BODY = 1_000_000
"""The largest policy text accepted (characters)."""
FORMATS = ("toml", "yaml", "json")


def _text(what: str, value: object, limit: int = 256, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise InvalidArgumentError(
            f"{what}: {value!r:.80} is not valid; expected {'0' if empty else '1'} to {limit} "
            "characters"
        )
    return value


def checked_upload(text: object, format: object, by: object, note: object) -> tuple[str, str]:
    """The text and format of an upload, checked; `PolicyError` (every problem with its key
    path) when the text is not a valid policy."""
    _text("by", by)
    _text("note", note, 1000, empty=True)
    if format not in FORMATS:
        raise InvalidArgumentError(f"format: {format!r:.40}; expected toml, yaml or json")
    if not isinstance(text, str) or len(text) > MAX_BODY:
        size = len(text) if isinstance(text, str) else type(text).__name__
        raise InvalidArgumentError(
            f"policy text: {size} characters; expected text of at most {MAX_BODY}"
        )
    assert isinstance(format, str)
    return text, format


MAX_OVERRIDE_DAYS = 366


def publish_flow(
    record: ActivationRecord, bodies: dict[str, Version], overrides: list[OverrideRecord]
) -> Flow[None]:
    """The texts of the versions in force and the overrides, then the active key naming them
    (read by `tollway.watch`)."""
    pairs = [
        (body_key(v.version), json.dumps({"format": v.format, "body": v.body}))
        for v in bodies.values()
    ]
    state = record.state
    if overrides:
        text = json.dumps([o.published() for o in overrides], sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        pairs.append((overrides_key(digest), text))
        state = replace(state, overrides=digest)
    pairs.append((ACTIVE_KEY, state.to_json()))
    yield Control(SetValues(tuple(pairs)))


class Policies:
    """Policy versions over a ledger and a store (sync face; the ASGI app runs it in a worker
    thread). ``Policies(tw.ledger, tw.store)``."""

    def __init__(
        self, ledger: Ledger, store: SyncStore, clock: Callable[[], int] | None = None
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.clock = clock or system_clock

    def _run(self, make: Callable[[Dialect], LedgerFlow[T]]) -> T:
        ledger = self.ledger
        return ledger.transact(lambda: make(ledger.dialect))

    def upload(self, text: str, format: str = "toml", *, by: str, note: str = "") -> Version:
        """Validate and store a version (nothing stored when invalid: `PolicyError` lists
        every problem with its key path); uploading the same document again returns it."""
        text, format = checked_upload(text, format, by, note)
        policy = parse_policy(text, format, "the uploaded policy")
        row = Version(policy.version, format, self.clock(), by, note)
        stored, _new = self._run(lambda d: add_version(d, row, text))
        return stored

    def versions(self) -> list[Version]:
        """Every version, newest first (without texts)."""
        return self._run(list_versions)

    def get(self, version: str) -> Version:
        """One version with its text; `UnknownNameError` when not uploaded."""
        checked_version(version)
        found = self._run(lambda d: get_version(d, version))
        if found is None:
            raise UnknownNameError(f"policy version {version!r}: not uploaded")
        return found

    def diff(self, a: str, b: str) -> list[Change]:
        """What changes from version ``a`` to version ``b`` (key paths of the documents)."""
        first, second = self.get(a), self.get(b)
        return diff(document(first.body, first.format), document(second.body, second.format))

    def active(self) -> ActivationRecord | None:
        """The activation in force, or None before the first."""
        return self._run(current)

    def history(self, limit: int = 100) -> list[ActivationRecord]:
        return self._run(lambda d: history(d, limit))

    def activate(
        self, version: str, cohort: Cohort | None = None, *, by: str, note: str = ""
    ) -> tuple[ActivationRecord | None, ActivationRecord]:
        """Put ``version`` in force for everyone, or with a ``cohort`` as a pilot (everyone
        else keeps the version in force); published to the store. (before, after)."""
        checked_version(version)
        _text("by", by)
        _text("note", note, 1000, empty=True)
        if cohort is not None and not isinstance(cohort, Cohort):
            raise InvalidArgumentError(f"cohort: {cohort!r:.80}; expected a Cohort or None")
        before, after = self._run(lambda d: activate(d, version, cohort, self.clock(), by, note))
        self._publish(after)
        return before, after

    def rollback(self, *, by: str) -> tuple[ActivationRecord, ActivationRecord]:
        """Back to the state before the activation in force (published). (before, after)."""
        _text("by", by)
        before, after = self._run(lambda d: rollback(d, self.clock(), by))
        self._publish(after)
        return before, after

    def publish(self) -> ActivationRecord | None:
        """Put the ledger's activation in force in the store again (after a store outage)."""
        record = self.active()
        if record is not None:
            self._publish(record)
        return record

    def shadow_report(self, version: str) -> dict[str, Any]:
        """What pilot ``version`` would have denied in its shadow (see `tollway.watch`)."""
        checked_version(version)
        return drive(shadow_counts(version), self.store)

    # -- per-subject overrides --------------------------------------------------------------

    def override(
        self,
        subject: str,
        limit_name: str,
        spec: Mapping[str, Any],
        expires: datetime | timedelta,
        *,
        by: str,
    ) -> tuple[OverrideRecord | None, OverrideRecord]:
        """Raise (or add) ``subject``'s limit ``limit_name`` to ``spec`` (a limit table as in
        the policy file, e.g. ``{"quota": "5000/hour"}``) until ``expires`` (a time, or a
        duration from now), without a new plan; validated against the version in force for
        everyone, published to the store. (the override it replaced or None, the new one)."""
        _subject(subject)
        _text("limit_name", limit_name)
        _text("by", by)
        now = self.clock()
        until = _until(expires, now)
        record = self.active()
        if record is None:
            raise InvalidArgumentError(
                "override: no policy version is active; activate one first (overrides apply "
                "on top of the version in force)"
            )
        base = self.get(record.base)
        limit = override_limit(parse_policy(base.body, base.format), limit_name, spec)
        plain = json.loads(json.dumps(dict(spec)))
        row = OverrideRecord(subject, limit.name, plain, now, until, by)
        live = self._run(lambda d: live_overrides(d, now))
        if len(live) >= MAX_LIVE:
            raise InvalidArgumentError(f"override: {MAX_LIVE} overrides are in force, the most")
        before, after = self._run(lambda d: add_override(d, row, now))
        self._publish(record)
        return before, after

    def end_override(
        self, subject: str, limit_name: str, *, by: str
    ) -> tuple[OverrideRecord | None, OverrideRecord]:
        """End ``subject``'s override of ``limit_name`` now (published)."""
        _subject(subject)
        _text("limit_name", limit_name)
        _text("by", by)
        now = self.clock()
        row = OverrideRecord(subject, limit_name, {}, now, now, by)
        before, after = self._run(lambda d: add_override(d, row, now))
        record = self.active()
        if record is not None:
            self._publish(record)
        return before, after

    def overrides(self, subject: str | None = None) -> list[OverrideRecord]:
        """The overrides in force now (of ``subject``, if given)."""
        now = self.clock()
        return self._run(lambda d: live_overrides(d, now, subject))

    def _publish(self, record: ActivationRecord) -> None:
        wanted = dict.fromkeys((record.base, record.version))
        bodies = {v: self.get(v) for v in wanted}
        live = self.overrides()
        drive(publish_flow(record, bodies, live), self.store)


def _subject(subject: object) -> str:
    if (
        not isinstance(subject, str)
        or not subject
        or len(subject) > MAX_SUBJECT
        or not subject.isprintable()
    ):
        raise InvalidArgumentError(
            f"subject: {subject!r:.80} is not a subject; expected 1 to {MAX_SUBJECT} printable "
            "characters"
        )
    return subject


def _until(expires: object, now_us: int) -> int:
    """``expires`` as microseconds since the epoch: later than now, within a year."""
    if isinstance(expires, timedelta):
        until = now_us + int(expires / timedelta(microseconds=1))
    elif isinstance(expires, datetime) and expires.tzinfo is not None:
        until = int(expires.timestamp() * 1_000_000)
    else:
        raise InvalidArgumentError(
            f"expires: {expires!r:.80}; expected a timezone-aware datetime or a timedelta"
        )
    if not now_us < until <= now_us + MAX_OVERRIDE_DAYS * 86_400_000_000:
        raise InvalidArgumentError(
            f"expires: {expires!r:.80}; expected a time after now and within "
            f"{MAX_OVERRIDE_DAYS} days"
        )
    return until


__all__ = ["FORMATS", "MAX_BODY", "Policies", "checked_upload", "publish_flow"]
