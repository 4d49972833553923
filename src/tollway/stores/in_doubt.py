"""What a Redis store does when an acquire gets no reply: journal it, so that once the store
answers again counters, decisions and the ledger agree exactly.

A step that surely never reached the store (the breaker was open, or every send came too
late) is journaled to be counted if its caller was let through (fail-open), and forgotten if
not. A step that may have reached it (a timeout, a cut connection: it ran, or it did not) is
*in doubt*: journaled with its identity (`StepIds`) and what its caller was told, to be
counted only if the store did not apply it (let through), or given back only if it did
(refused). `tollway.stores.replayer` resolves the entries in the background.
"""

from __future__ import annotations

import uuid

from tollway.engine.step import Step, closed_limits
from tollway.errors import StoreUnavailableError
from tollway.stores import redis_codec as codec
from tollway.stores.journal import Journal, JournalEntry
from tollway.stores.step_ids import StepIds


def lets_through(step: Step) -> bool:
    """Whether the caller is let through without the store (see `tollway.engine.step.degraded`:
    no plan known raises instead, which refuses too)."""
    return step.plan is not None and not closed_limits(step)


class InDoubt:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.ids = StepIds()

    def begin(self) -> tuple[int, tuple[str, int, int]]:
        """A sequence number for an acquire about to be sent, and its identity: this process,
        the number, and the low-water mark."""
        seq, low = self.ids.begin()
        return seq, (self.ids.process, seq, low)

    def settle(self, seq: int) -> None:
        self.ids.settle(seq)

    def lost(
        self, step: Step, seq: int, deadline_us: int, exc: StoreUnavailableError, at_us: int
    ) -> None:
        """Journal the acquire ``step`` (sent as ``seq``) that got ``exc`` instead of a reply."""
        through = lets_through(step)
        if not (exc.sent and seq):
            if seq:
                self.ids.settle(seq)
            if through:
                self.journal.append(codec.journal_entry(step, uuid.uuid4().hex, at_us))
            return
        entry = codec.journal_entry(
            step, uuid.uuid4().hex, at_us, (self.ids.process, seq, deadline_us), undo=not through
        )
        try:
            self.journal.append(entry)
        except BaseException:
            self.ids.settle(seq)  # nothing will resolve it: its record must not be kept
            raise

    def resolved(self, entry: JournalEntry) -> None:
        """A journal entry was resolved: if it was a step of this process, it is settled."""
        if entry.process == self.ids.process and entry.seq:
            self.ids.settle(entry.seq)


__all__ = ["InDoubt", "lets_through"]
