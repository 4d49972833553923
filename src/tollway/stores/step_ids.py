"""Every acquire step a process sends carries an identity, so that a step whose reply was lost
can be told apart from one that never ran.

The identity is this process's id and a sequence number. The step script records, per
subject and process, the sequence numbers it applied (a field of the subject's hash, see
``lua/step.lua``), and forgets those below the *low-water mark* the step also carries: the
lowest number this process has not settled yet. A step settles when its reply arrives, or,
when its reply was lost, once the journal has resolved it (applied it if the caller was let
through, given it back if the caller was refused, see ``lua/replay.lua``). So the record keeps
exactly what is still in doubt, and nothing for long: no key per step, and no guess about how
long a journal may wait.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import weakref


class StepIds:
    def __init__(self) -> None:
        self.renew()
        _LIVE.add(self)

    def renew(self) -> None:
        # Also in a child after a fork: two processes never send under one id.
        self.process = secrets.token_hex(6)
        """This process's id among the writers of the store (12 hex digits)."""
        self._next = itertools.count(1).__next__
        self._open: dict[int, None] = {}
        """Sequence numbers sent and not settled, in the order they were taken (a dict is
        an ordered set: the first key is the lowest)."""
        self._lock = threading.Lock()

    def begin(self) -> tuple[int, int]:
        """A new sequence number, and the low-water mark to send with it."""
        # Taken and stored under one lock, so the dict's order is the numbers' order and its
        # first key the lowest open one; a settle's pop needs none (atomic).
        with self._lock:
            seq = self._next()
            opened = self._open
            opened[seq] = None
            while True:
                try:
                    return seq, next(iter(opened))
                except RuntimeError:  # a settle popped meanwhile: read the first key again
                    continue

    def settle(self, seq: int) -> None:
        """``seq``'s outcome is known: its record in the store may be forgotten."""
        self._open.pop(seq, None)


_LIVE: weakref.WeakSet[StepIds] = weakref.WeakSet()


def _after_fork() -> None:
    for ids in list(_LIVE):
        ids.renew()


os.register_at_fork(after_in_child=_after_fork)

__all__ = ["StepIds"]
