"""Embedded mode (the memory store): the process that takes the steps writes their events.

The memory store appends each step's entries to an in-process queue (`MemoryStore.events`, in
the format of `tollway.metering.entries`). `EmbeddedDrain` takes them in batches and writes
them to the ledger in one transaction each: from a background thread every ``[ledger]
flush_ms``, and at once on `Tollway.flush` and `close`. The hooks are delivered apart, by a
`tollway.metering.hookrunner.HookRunner` (a thread per hook), which the writes only wake: no
receiver can delay the ledger. `flush` and `close` also wait for what is due to be delivered.
A batch the ledger refuses goes back to the head of the queue, so nothing is lost and a retry
doubles nothing (the ledger is idempotent on the event id).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from tollway.errors import InvalidUsageEventError
from tollway.metering.entries import Notice, decode_entry
from tollway.metering.ledger.events import UsageEvent

if TYPE_CHECKING:
    from tollway.metering.hookrunner import HookRunner
    from tollway.metering.ledger import Ledger
    from tollway.policy.model import Policy
    from tollway.stores.memory import MemoryStore

__all__ = ["EmbeddedDrain", "commit_batch"]

logger = logging.getLogger("tollway.metering")
_PASS = 100
_MAX_PASSES = 1000
_MAX_BACKOFF_S = 30.0


def commit_batch(
    ledger: Ledger, events: list[UsageEvent], notices: list[Notice], policy: Policy, now_us: int
) -> int:
    """Write one batch in one transaction, with its hook messages (due from ``now_us``, on
    the engine's clock); how many events were new."""
    return ledger.commit(events, notices, policy.hooks, now_us=now_us).inserted


class EmbeddedDrain:
    def __init__(
        self,
        store: MemoryStore,
        ledger: Callable[[], Ledger],
        policy: Policy,
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self._ledger = ledger
        self.policy = policy
        self.clock = clock
        self.batch = policy.ledger.batch
        self.interval = policy.ledger.flush_ms / 1000
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runner: HookRunner | None = None
        self._closed = False  # after close: no new runner (close's own write still gets one)
        self.bad: list[tuple[dict[str, str], str]] = []
        """Entries that are not events (never expected), kept with the reason."""

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tollway-drain", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        wait, failures = self.interval, 0
        while not self._stop.wait(wait):
            try:
                self.write()
            except Exception:  # kept in the queue; retried after a wait that doubles
                failures += 1
                wait = min(_MAX_BACKOFF_S, max(self.interval, wait * 2))
                if failures == 1 or wait == _MAX_BACKOFF_S:  # not a line per tick
                    logger.exception(
                        "writing usage events to the ledger failed (%d in a row); "
                        "retrying in %.1f s, the events stay queued",
                        failures,
                        wait,
                    )
                continue
            if failures:
                logger.warning("the ledger takes usage events again after %d failures", failures)
            wait, failures = self.interval, 0

    def drain(self) -> int:
        """Write every queued entry now, then wait for the hooks to deliver what is due
        (`Tollway.flush`: the caller asked for it); how many events were new. Raises what the
        ledger raised, with the failed batch back in the queue."""
        inserted = self.write()
        runner = self._hooks()
        if runner is not None:
            runner.settle()
        return inserted

    def write(self) -> int:
        """Write every queued entry now and wake the hooks' threads; how many events were new.
        Never waits for a receiver (the background thread runs this)."""
        inserted = 0
        with self._lock:
            while True:
                taken = self._take()
                if not taken:
                    break
                try:
                    inserted += self._commit(taken)
                except BaseException:
                    self._put_back(taken)
                    raise
        runner = self._hooks()
        if runner is not None:
            runner.wake()
        return inserted

    def _take(self) -> list[dict[str, str]]:
        queue = self.store.events
        with self.store.lock:
            count = min(len(queue), self.batch)
            return [queue.popleft() for _ in range(count)]

    def _put_back(self, taken: list[dict[str, str]]) -> None:
        with self.store.lock:
            self.store.events.extendleft(reversed(taken))

    def _commit(self, taken: list[dict[str, str]]) -> int:
        now = self.clock()
        events: list[UsageEvent] = []
        notices: list[Notice] = []
        for entry in taken:
            try:
                item = decode_entry("memory", "", entry, recorded_at_us=now, policy=self.policy)
            except InvalidUsageEventError as exc:
                logger.error("an event entry was not valid and is set aside: %s", exc)
                self.bad.append((entry, str(exc)))
                continue
            if isinstance(item, UsageEvent):
                events.append(item)
            else:
                notices.append(item)
        return commit_batch(self._ledger(), events, notices, self.policy, now)

    def _hooks(self) -> HookRunner | None:
        """The hooks' runner (their own threads, on this ledger), started on first use."""
        hooks = self.policy.hooks
        if not hooks:
            return None
        with self._lock:
            if self._runner is None and not self._closed:
                from tollway.metering.hookrunner import HookRunner

                self._runner = HookRunner(self._ledger(), hooks, clock=self.clock).start()
            return self._runner

    def close(self) -> None:
        """Stop the thread, then write what is left (raising if the ledger refuses it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.write()
            if self._runner is not None:
                self._runner.settle()
        finally:
            with self._lock:
                self._closed = True
                runner, self._runner = self._runner, None
            if runner is not None:
                runner.stop()
