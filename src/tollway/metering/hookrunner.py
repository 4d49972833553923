"""`HookRunner`: hook delivery apart from the drain, so no receiver can delay the ledger.

The drain (`tollway.metering.drain`, `tollway.metering.embedded`) only writes: its commit puts
each hook's messages in the ledger's outbox in the same transaction as the events, then it
`wake`\\ s the runner. The runner delivers from the outbox in threads of its own, one per hook,
each a `tollway.metering.hooks.Dispatcher` of that hook alone: a receiver that hangs or trickles
holds back its own hook's messages only, each attempt at most the hook's ``timeout_ms`` (the
whole attempt, `tollway.metering.httpattempt`), and never the drain nor another hook.

Stopping (`stop`) is prompt whatever a receiver does: attempts in flight are aborted and their
messages handed back uncounted, due at once, so the next worker sends them again (receivers
dedupe on the webhook-id). A thread waits between rounds until its soonest message is due,
``idle_s`` at most, or until woken.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from tollway.clock import US
from tollway.engine.step import system_clock
from tollway.errors import ConfigurationError

if TYPE_CHECKING:
    from tollway.metering.hooks import Dispatcher, SinkFactory
    from tollway.metering.ledger.base import Ledger
    from tollway.policy.model import HookConfig

__all__ = ["HookRunner"]

logger = logging.getLogger("tollway.hooks")
_MAX_BACKOFF_S = 30.0
_MIN_WAIT_S = 0.05


class HookRunner:
    """Deliver ``hooks``' messages from ``ledger`` (shared: the ledgers are safe across
    threads, and a transaction here is short: attempts run outside of them).

    ``clock`` counts microseconds (the drain's); ``max_messages`` is the most one round of a
    hook leases. Raises `ConfigurationError` as `Dispatcher` does (a missing secret...)."""

    def __init__(
        self,
        ledger: Ledger,
        hooks: Sequence[HookConfig],
        *,
        clock: Callable[[], int] | None = None,
        env: Mapping[str, str] = os.environ,
        sink_factory: SinkFactory | None = None,
        idle_s: float = 1.0,
        max_messages: int = 100,
        grace_s: float = 5.0,
    ) -> None:
        from tollway.metering.hooks import Dispatcher

        if not (isinstance(idle_s, (int, float)) and 0 < idle_s < float("inf")):
            raise ConfigurationError(f"idle_s: {idle_s!r}; expected seconds > 0")
        self.clock = clock or system_clock
        self.idle_s = float(idle_s)
        self.max_messages = max_messages
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._asked = 0  # bumped by `wake` and `settle`
        self._idle: dict[str, int] = {}  # per hook: the `_asked` its last empty round began at
        self._threads: list[threading.Thread] = []
        self._dispatchers: dict[str, Dispatcher] = {}
        try:
            for hook in hooks:
                if hook.name in self._dispatchers:
                    where = hook.path or "hooks"
                    raise ConfigurationError(f"{where}.name: {hook.name!r} is used twice")
                self._dispatchers[hook.name] = Dispatcher(
                    ledger, [hook], clock=self.clock, env=env, sink_factory=sink_factory,
                    grace_s=grace_s, stop=self._stopping.is_set,
                )  # fmt: skip
                self._idle[hook.name] = -1
        except BaseException:
            self._close_dispatchers()
            raise

    @property
    def hooks(self) -> tuple[str, ...]:
        return tuple(self._dispatchers)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> HookRunner:
        """Start one thread per hook (once)."""
        if not self._threads and not self._stopping.is_set():
            for name, dispatcher in self._dispatchers.items():
                thread = threading.Thread(
                    target=self._loop, args=(name, dispatcher), name=f"tollway-hook-{name}",
                    daemon=True,
                )  # fmt: skip
                self._threads.append(thread)
                thread.start()
        return self

    def wake(self) -> None:
        """New messages may be due: every hook looks now rather than after its wait."""
        with self._cond:
            self._asked += 1
            self._cond.notify_all()

    def settle(
        self, timeout: float | None = None, *, cancel: Callable[[], bool] | None = None
    ) -> bool:
        """Wait until every hook has made a round that began after this call and found
        nothing due (what was due is delivered, or failed and scheduled later); False when
        ``timeout`` seconds passed first, ``cancel()`` became true (checked every 0.1 s) or
        the runner stopped."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._asked += 1
            asked = self._asked
            self._cond.notify_all()
            while not all(seen >= asked for seen in self._idle.values()):
                if self._stopping.is_set() or not self.running or (cancel and cancel()):
                    return False
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.1 if left is None else min(left, 0.1))
        return True

    def stop(self, timeout: float = 1.5) -> None:
        """Stop promptly: no new attempt, the ones in flight aborted (their messages handed
        back, due at once), the threads joined (``timeout`` seconds in all at most: a Python
        callable cannot be interrupted, its thread is left to finish on its own)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for dispatcher in self._dispatchers.values():
            dispatcher.abort()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        if not self.running:
            self._close_dispatchers()

    def _close_dispatchers(self) -> None:
        for dispatcher in self._dispatchers.values():
            dispatcher.close()

    # ------------------------------------------------------------------ one hook's thread
    def _loop(self, name: str, dispatcher: Dispatcher) -> None:
        failures, wait = 0, self.idle_s
        while not self._stopping.is_set():
            with self._cond:
                asked = self._asked
            try:
                attempted = dispatcher.run_once(self.max_messages)
                due_us = None if attempted else dispatcher.next_due_us()
            except Exception as exc:  # the ledger away, most likely: the state is kept there
                failures += 1
                wait = min(_MAX_BACKOFF_S, self.idle_s * 2**failures)
                if failures == 1:  # one line per failed streak, not one per round
                    logger.warning("hook %s: delivery round failed (%s); retrying", name, exc)
                self._pause(asked, wait)
                continue
            if failures:
                logger.warning("hook %s: delivering again after %d failures", name, failures)
                failures = 0
            if attempted:
                continue  # more may be due (a retry on a schedule of 0 s, a full round)
            with self._cond:
                self._idle[name] = max(self._idle[name], asked)
                self._cond.notify_all()
            wait = self.idle_s
            if due_us is not None:
                # At least a moment: a message due but leased by another worker is no reason
                # to spin.
                wait = min(wait, max(_MIN_WAIT_S, (due_us - self.clock()) / US))
            self._pause(asked, wait)

    def _pause(self, asked: int, seconds: float) -> None:
        with self._cond:
            if self._asked == asked and not self._stopping.is_set():
                self._cond.wait(seconds)
