"""Replays the journal in a background thread, in bounded slices, so no caller waits for it.

A store kicks its `Replayer` whenever it has entries waiting and a command succeeds (the store
answers again). The thread replays up to `SLICE` entries at a time, giving the others the
interpreter between slices, until the journal is empty, and then ends; the next kick starts a
new one. While the store keeps failing it retries with a growing pause, logging once per
streak of failures, not once per attempt. A step in doubt whose deadline has not passed (the
store might still apply it, see `tollway.stores.journal`) is waited for the same way.

The async store replays with a sync client of its own in this thread too: one implementation,
and the event loop is never held by a replay of thousands of entries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tollway.stores.journal import Journal, JournalEntry

logger = logging.getLogger("tollway.journal")

SLICE = 200
"""Entries replayed between two yields of the interpreter."""
PAUSE_S = (0.05, 2.0)
"""The pause after a failed slice: the first, and the longest it grows to (doubling)."""


class Replayer:
    def __init__(self, journal: Journal, apply: Callable[[JournalEntry], float], name: str) -> None:
        self.journal = journal
        self._apply = apply
        self._name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.replayed = 0
        """Entries replayed by this process so far."""

    def kick(self) -> None:
        """Start replaying in the background, unless a replay of this process is running."""
        if self._stop.is_set():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._wake.set()
                return
            self._idle.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"tollway-replay-{self._name}", daemon=True
            )
            self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait until nothing is left to replay (True), or ``timeout`` seconds (False)."""
        deadline = time.monotonic() + timeout
        while self.journal.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.kick()  # (again, when a kick met a thread that was just ending)
            self._idle.wait(left)
            if self.journal.pending:
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Stop replaying (what is left stays in the journal for the next process)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        pause, failing = PAUSE_S[0], False
        try:
            while not self._stop.is_set():
                try:
                    sent, wait = self.journal.replay(self._apply, SLICE)
                except Exception as exc:  # the store went away again, or refused a command
                    if not failing:
                        logger.warning("replaying the journal failed (%s); retrying", exc)
                    failing = True
                    self.journal.pending = True
                    self._pause(pause)
                    pause = min(pause * 2, PAUSE_S[1])
                    continue
                self.replayed += sent
                if failing:
                    logger.warning("replaying the journal works again")
                    failing, pause = False, PAUSE_S[0]
                if wait > 0:
                    self._pause(wait)
                elif not self.journal.pending:
                    return
                elif sent:
                    time.sleep(0)  # a slice done: let the callers' threads run
                else:
                    self._pause(PAUSE_S[0])  # a file was locked (an append): look again
        finally:
            with self._lock:
                self._idle.set()

    def _pause(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


__all__ = ["PAUSE_S", "SLICE", "Replayer"]
