"""The memory store's request ids: what lua/step.lua keeps under ``KEY:rq:...`` and
``KEY:id:ID``, in process memory, forgotten after the dedupe window.

Two records, as in Redis:

- per (subject, operation, request id) of a taken acquire: the fingerprint (cost/amount) it
  was taken at and how often it was repeated since, so a repeat is recognized, a conflict
  (another cost or amount) refused, and repeats capped;
- per (subject, event id): the caller's ids in use as usage event ids, so an id taken on
  another operation, or by a reservation's commit, gets an event id of its own.

Callers hold the store's lock.
"""

from __future__ import annotations

from collections import deque

from tollway.engine.replies import CONFLICT, REPEATS

Scoped = tuple[str, str, str]
"""(subject, operation, request id)."""


class RequestIds:
    def __init__(self, dedupe_us: int) -> None:
        self.dedupe_us = dedupe_us
        self._events: dict[tuple[str, str], int] = {}
        """(subject, event id) -> until when it is remembered."""
        self._records: dict[Scoped, list[int | str]] = {}
        """Scoped id -> [fingerprint, repeats so far, remembered until]."""
        self._event_expiry: deque[tuple[int, tuple[str, str]]] = deque()
        self._record_expiry: deque[tuple[int, Scoped]] = deque()

    def check(self, seen: Scoped, fingerprint: str, max_repeats: int, now: int) -> tuple[bool, int]:
        """Whether ``seen`` is a repeat, and the code refusing it (0: none)."""
        self.forget(now)
        record = self._records.get(seen)
        if record is None:
            return False, 0
        if record[0] != fingerprint:
            return True, CONFLICT
        if int(record[1]) >= max_repeats:
            return True, REPEATS
        return True, 0

    def repeated(self, seen: Scoped) -> None:
        record = self._records[seen]
        record[1] = int(record[1]) + 1

    def take(self, seen: Scoped, fingerprint: str, now: int) -> str:
        """Record an id taken on its scope; the event id it gets (as step.lua): the caller's
        id, or ``ID~OPERATION`` when another operation (or a reservation) has the plain id,
        or '' (a fresh one) when even that is taken: one event per (subject, scope, id)."""
        until = now + self.dedupe_us
        self._records[seen] = [fingerprint, 0, until]
        self._record_expiry.append((until, seen))
        subject, scope, call = seen
        for event_id in (call, f"{call}~{scope}"):
            if self.claim(subject, event_id, now):
                return event_id
        return ""

    def claim(self, subject: str, event_id: str, now: int) -> bool:
        """Take ``event_id`` for the subject unless it is in use (``SET NX`` in Redis)."""
        self.forget(now)
        key = (subject, event_id)
        if key in self._events:
            return False
        self._events[key] = now + self.dedupe_us
        self._event_expiry.append((now + self.dedupe_us, key))
        return True

    def forget(self, now: int) -> None:
        expiry, events = self._event_expiry, self._events
        while expiry and expiry[0][0] <= now:
            _, key = expiry.popleft()
            if events.get(key, now + 1) <= now:
                del events[key]
        waiting, records = self._record_expiry, self._records
        while waiting and waiting[0][0] <= now:
            _, seen = waiting.popleft()
            record = records.get(seen)
            if record is not None and int(record[2]) <= now:
                del records[seen]


__all__ = ["RequestIds", "Scoped"]
