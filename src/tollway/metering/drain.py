"""`Drain`: the event streams into the ledger, through a Redis consumer group (`tollway worker`).

One cycle: acknowledgements left over from a Redis failure; the registry, every second; this
consumer's own pending entries once after a start or a reconnect (``0``), else a dead worker's
entries idle longer than ``claim_idle_ms`` (``XAUTOCLAIM``), else new ones (``>``). Entries are
decoded, committed to the ledger in batches, and acknowledged only after the commit returned:
a worker killed at any point leaves its entries pending, and the ledger, idempotent on the
event id, keeps one copy of an entry committed twice. A commit that fails because the ledger
is down is retried, same entries, after a backoff, until it passes or the worker is stopped.
Entries that are not events go to `BAD_STREAM` with the reason, then are acknowledged.

The hooks' messages are written by the same commit, into the ledger's outbox; they are
delivered by a `tollway.metering.hookrunner.HookRunner` in threads of its own, which the drain
only wakes: the drain never waits for a receiver.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tollway.clock import US
from tollway.errors import LedgerUnavailableError, TollwayError
from tollway.metering.entries import Notice, decode_entry
from tollway.metering.ledger.events import UsageEvent
from tollway.metering.streams import Entry, Streams, is_nogroup

if TYPE_CHECKING:
    from tollway.metering.hookrunner import HookRunner
    from tollway.metering.ledger import Ledger
    from tollway.policy.model import Policy

try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover - exercised only without the extra installed
    RedisConnectionError = RedisTimeoutError = OSError  # type: ignore[assignment,misc]

__all__ = ["Backoff", "Commit", "Drain", "DrainStats", "default_commit", "default_consumer"]

logger = logging.getLogger("tollway.worker")

Commit = Callable[[Sequence[UsageEvent], Sequence[Notice]], object]
"""Writes one batch in one transaction; raises `LedgerUnavailableError` to be called again."""

Item = UsageEvent | Notice
PRUNE_IDLE_MS = 3_600_000
"""A consumer idle this long with nothing pending is a worker gone: its name is removed."""
_REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


def _now_us() -> int:
    return time.time_ns() // 1000


def default_consumer() -> str:
    """``HOST-PID``: unique per process, so two workers never share a pending list."""
    return f"{socket.gethostname()}-{os.getpid()}"


def default_commit(
    ledger: Ledger, hooks: Sequence[Any] = (), clock: Callable[[], int] | None = None
) -> Commit:
    """``ledger.commit(events, notices, hooks)``: the events, the notices and the hooks'
    outbox in one transaction (its messages due from ``clock()``, in microseconds)."""
    if clock is None:
        return lambda events, notices: ledger.commit(events, notices, hooks)
    return lambda events, notices: ledger.commit(events, notices, hooks, now_us=clock())


@dataclass(slots=True)
class Backoff:
    """Waits that double from ``first_s`` to ``max_s`` while failures last."""

    first_s: float = 0.1
    max_s: float = 5.0
    _next: float = 0.0

    def next(self) -> float:
        self._next = self.first_s if self._next == 0 else min(self._next * 2, self.max_s)
        return self._next

    def reset(self) -> None:
        self._next = 0.0


@dataclass(slots=True)
class DrainStats:
    """What a drain has done since it started (exact counts)."""

    events: int = 0
    """Usage events committed (new ones and ones the ledger already held)."""
    inserted: int | None = None
    """Of those, new to the ledger, when the commit says (``WriteResult.inserted``)."""
    notices: int = 0
    bad: int = 0
    """Entries parked in the dead-entry stream."""
    deleted: int = 0
    """Pending entries found deleted from their stream (nothing left to commit)."""
    claimed: int = 0
    """Entries taken over from another consumer."""
    batches: int = 0
    commit_failures: int = 0
    redis_failures: int = 0
    trimmed: int = 0
    lag_s: float = 0.0
    """Of the last batch: now minus its oldest event's time (0 when idle)."""
    max_lag_s: float = 0.0
    streams: int = 0
    started_us: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "inserted": self.inserted,
            "notices": self.notices,
            "bad": self.bad,
            "deleted": self.deleted,
            "claimed": self.claimed,
            "batches": self.batches,
            "commit_failures": self.commit_failures,
            "redis_failures": self.redis_failures,
            "trimmed": self.trimmed,
            "lag_s": round(self.lag_s, 3),
            "max_lag_s": round(self.max_lag_s, 3),
            "streams": self.streams,
        }


class Drain:
    """Drains every event stream of a store into a ledger. Synchronous: one per process (or
    thread); run as many as needed on one group, each entry is committed by one of them
    (twice only when a worker dies between its commit and its acknowledgement, which the
    ledger absorbs)."""

    def __init__(
        self,
        client: Any,
        ledger: Ledger | None,
        *,
        cluster: bool = False,
        policy: Policy | None = None,
        partitions: int | None = None,
        consumer: str | None = None,
        commit: Commit | None = None,
        batch: int | None = None,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        refresh_s: float = 1.0,
        trim_s: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], int] = _now_us,
        sleep: Callable[[float], object] = time.sleep,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        ledger_config = policy.ledger if policy is not None else None
        if partitions is None:
            partitions = ledger_config.partitions if ledger_config is not None else 16
        if commit is None:
            if ledger is None:
                raise TollwayError("Drain: give a ledger or a commit callable")
            hooks = policy.hooks if policy is not None else ()
            commit = default_commit(ledger, hooks, clock)
        if ledger is not None and policy is not None and ledger.sealer is None:
            from tollway.metering.ledger.sealing import sealer_for

            ledger.seal_with(sealer_for(policy.ledger))  # a missing key fails here, at start
        self.ledger = ledger
        self.policy = policy
        self.streams = Streams(
            client,
            cluster=cluster,
            partitions=partitions,
            consumer=consumer or default_consumer(),
            prefix=policy.store.prefix if policy is not None else "",
        )
        self.commit = commit
        self.batch = batch or (ledger_config.batch if ledger_config is not None else 1000)
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.refresh_us = int(refresh_s * US)
        self.trim_us = int(trim_s * US)
        # A cluster read does not block: wait this long when every stream was empty.
        self.idle_s = min(block_ms, 100) / 1000
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.sleep = sleep
        self.stop = stop
        self._stats = DrainStats(started_us=clock())
        self._refresh_at = 0
        self._trim_at = clock() + self.trim_us
        self._claim_at = 0
        self._claim_cursors: dict[str, str] = {}
        # This consumer's own pending entries are read once after a start or a reconnect.
        self._own_due = True
        self._own: dict[str, str] = {}
        self._unacked: dict[str, list[str]] = {}
        self.hooks = _runner(ledger, policy, clock)
        """Delivers the hooks in threads of their own (None: no hooks): the drain only wakes
        it after a commit, so no receiver can delay the ledger."""

    def stats(self) -> DrainStats:
        """A copy of the counts and lag so far."""
        return dataclasses.replace(self._stats)

    @property
    def consumer(self) -> str:
        return self.streams.consumer

    # ------------------------------------------------------------------ running
    def run(self, *, until_idle: bool = False, max_seconds: float | None = None) -> DrainStats:
        """Cycle until ``stop()`` (checked between batches), or the first idle cycle with
        ``until_idle`` (then the hooks' deliveries due now are waited for), or ``max_seconds``
        on the clock."""
        end = None if max_seconds is None else self.clock() + int(max_seconds * US)
        while not self.stop():
            handled = self.run_once()
            if until_idle and handled == 0 and self.idle:
                left = None if end is None else max(0.0, (end - self.clock()) / US)
                self.settle_hooks(left)
                break
            if end is not None and self.clock() >= end:
                break
        return self.stats()

    def run_once(self) -> int:
        """One cycle; returns how many entries it handled (0: idle). Redis failures are
        waited out here (backoff), so the caller only loops."""
        try:
            handled = self._cycle()
        except _REDIS_DOWN as exc:
            self._redis_failed(exc)
            return 0
        except TollwayError:
            raise
        except Exception as exc:
            if not is_nogroup(exc):
                raise
            logger.warning("consumer group gone (%s): creating it again", exc)
            self.streams.forget_groups()
            self._refresh_at = 0
            self._unacked = {}  # their pending lists went with the group
            return 0
        self.backoff.reset()
        if self.hooks is not None:
            self.hooks.start()
            if handled:
                self.hooks.wake()
        return handled

    @property
    def idle(self) -> bool:
        """Nothing held back: no acknowledgement owed, no own pending entries left to read."""
        return not self._unacked and not self._own_due

    def _cycle(self) -> int:
        now = self.clock()
        if now >= self._refresh_at:
            self.streams.refresh()
            self._stats.streams = len(self.streams.keys)
            self._refresh_at = now + self.refresh_us
        if self._unacked:  # committed before Redis went away
            self.streams.ack(self._unacked)
            self._unacked = {}
        if self._own_due:
            if not self._own:
                self._own = dict.fromkeys(self.streams.keys, "0")
            entries = self.streams.read_own(self._own, self.batch)
            self._own_due = bool(self._own)
            if entries:
                return self._handle(entries)
        if now >= self._claim_at:
            entries = self.streams.claim(self.claim_idle_ms, self.batch, self._claim_cursors)
            if all(c == "0-0" for c in self._claim_cursors.values()):
                # Scanned every pending list: look again in a quarter of the idle time.
                self._claim_at = now + max(self.claim_idle_ms * 1000 // 4, self.refresh_us)
            if entries:
                self._stats.claimed += len(entries)
                return self._handle(entries)
        if now >= self._trim_at:
            self._stats.trimmed += self.streams.trim()
            self.streams.prune(PRUNE_IDLE_MS)
            self._trim_at = now + self.trim_us
        entries = self.streams.read_new(self.batch, self.block_ms)
        if entries:
            return self._handle(entries)
        self._stats.lag_s = 0.0
        if self.streams.cluster:
            self.sleep(self.idle_s)
        return 0

    def _redis_failed(self, exc: BaseException) -> None:
        self._stats.redis_failures += 1
        wait = self.backoff.next()
        logger.warning("store unavailable (%s); retrying in %.1f s", exc, wait)
        # Redis may come back empty or restored: groups and own pending entries are read anew.
        self.streams.forget_groups()
        self._refresh_at = 0
        self._own_due, self._own = True, {}
        self.sleep(wait)

    # ------------------------------------------------------------------ one batch
    def _handle(self, entries: list[Entry]) -> int:
        for start in range(0, len(entries), self.batch):
            chunk = entries[start : start + self.batch]
            if not self._commit_chunk(chunk):
                return start  # stopped while the ledger was down: the rest stays pending
        return len(entries)

    def _commit_chunk(self, chunk: list[Entry]) -> bool:
        now = self.clock()
        items: list[tuple[Entry, Item]] = []
        bad: list[tuple[Entry, str]] = []
        deleted = 0
        for entry in chunk:
            if entry.fields is None:
                deleted += 1
                logger.error("entry %s of %s was deleted while pending", entry.id, entry.stream)
                continue
            try:
                item = decode_entry(
                    entry.stream, entry.id, entry.fields, recorded_at_us=now, policy=self.policy
                )
            except (TollwayError, ValueError, TypeError, KeyError) as exc:
                bad.append((entry, str(exc)))
                continue
            items.append((entry, item))
        result = self._commit_retrying(items, bad)
        if result is _STOPPED:
            return False
        self.streams.park(bad)
        ids: dict[str, list[str]] = {}
        for entry in chunk:
            ids.setdefault(entry.stream, []).append(entry.id)
        try:
            self.streams.ack(ids)
        except _REDIS_DOWN:
            self._unacked = ids  # committed: acknowledge as soon as Redis is back
            raise
        self._count(items, len(bad), deleted, result, now)
        return True

    def _commit_retrying(
        self, items: list[tuple[Entry, Item]], bad: list[tuple[Entry, str]]
    ) -> object:
        """Commit ``items`` (waiting out a ledger that is down); an item the ledger refuses is
        moved from ``items`` to ``bad``. `_STOPPED` when stopped while the ledger was down."""
        if not items:
            return None
        events = [item for _, item in items if isinstance(item, UsageEvent)]
        notices = [item for _, item in items if isinstance(item, Notice)]
        backoff = Backoff(self.backoff.first_s, self.backoff.max_s)
        while True:
            try:
                return self.commit(events, notices)
            except LedgerUnavailableError as exc:
                self._stats.commit_failures += 1
                if self.stop():
                    logger.warning("stopping with %d entries uncommitted: %s", len(items), exc)
                    return _STOPPED
                wait = backoff.next()
                logger.warning("ledger unavailable (%s); retrying in %.1f s", exc, wait)
                self.sleep(wait)
            except TollwayError as exc:
                if len(items) == 1:
                    bad.append((items[0][0], f"the ledger refused it: {exc}"))
                    items.clear()
                    return None
                # Some item of the batch is refused: find it by committing them one by one.
                logger.warning("the ledger refused a batch (%s); committing it one by one", exc)
                kept: list[tuple[Entry, Item]] = []
                inserted = 0
                for pair in items:
                    single = [pair]
                    result = self._commit_retrying(single, bad)
                    if result is _STOPPED:
                        return _STOPPED
                    kept.extend(single)
                    inserted += getattr(result, "inserted", 0) or 0
                items[:] = kept
                return _Inserted(inserted)

    def _count(
        self, items: list[tuple[Entry, Item]], bad: int, deleted: int, result: object, now: int
    ) -> None:
        stats = self._stats
        stats.batches += 1
        events = sum(1 for _, item in items if isinstance(item, UsageEvent))
        stats.events += events
        stats.notices += len(items) - events
        stats.bad += bad
        stats.deleted += deleted
        inserted = getattr(result, "inserted", None)
        if isinstance(inserted, int):
            stats.inserted = (stats.inserted or 0) + inserted
        oldest = min((item.occurred_at_us for _, item in items), default=None)
        stats.lag_s = max(0.0, (now - oldest) / US) if oldest is not None else 0.0
        stats.max_lag_s = max(stats.max_lag_s, stats.lag_s)

    # ------------------------------------------------------------------ hooks
    def settle_hooks(self, timeout: float | None = None) -> bool:
        """Wait until the hooks have nothing due now (see `HookRunner.settle`; ``stop()`` ends
        the wait); True at once without hooks."""
        if self.hooks is None:
            return True
        self.hooks.start()
        return self.hooks.settle(timeout, cancel=self.stop)

    def close(self) -> None:
        """Stop the hooks' delivery promptly (attempts in flight are handed back, due at once;
        see `HookRunner.stop`). The drain itself holds nothing to close."""
        if self.hooks is not None:
            self.hooks.stop()

    def __enter__(self) -> Drain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def backlog(self) -> int:
        """Entries in the streams not yet committed by the group."""
        return self.streams.backlog()


_STOPPED = object()


@dataclass(frozen=True, slots=True)
class _Inserted:
    inserted: int


def _runner(
    ledger: Ledger | None, policy: Policy | None, clock: Callable[[], int]
) -> HookRunner | None:
    """The hooks' runner when the policy has hooks (not started yet)."""
    hooks = policy.hooks if policy is not None else ()
    if not hooks or ledger is None:
        return None
    from tollway.metering.hookrunner import HookRunner

    return HookRunner(ledger, hooks, clock=clock)
