"""The fail-open journal: what was let through while the store was unreachable.

Each process appends to a file of its own in the journal folder, one JSON line per step,
flushed and fsync'd before the step is answered. When the store answers again, any process
replays every file of the folder (its own and those of processes that died), each entry once:
the replay script marks the entry's id in Redis, so a replay repeated after a crash counts
nothing twice. A file is emptied only after all of its entries were replayed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tollway.errors import StoreError

logger = logging.getLogger("tollway.journal")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    id: str
    subject: str
    at_us: int
    fields: tuple[str, ...]
    rates: tuple[bool, ...]
    amounts: tuple[int, ...]
    """Per counter: microseconds of TAT for a rate, units (or micro-units) for a window."""
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    """Per counter: the window's start and end (us), 0 for a rate."""
    event: str = ""
    """The step's usage template, when it had events: the replay appends its usage event."""
    event_id: str = ""
    attrs: str = ""
    caller_id: bool = False
    """Whether ``event_id`` is the caller's request id (the replay marks it taken)."""

    def to_line(self) -> str:
        line = {
            "id": self.id,
            "s": self.subject,
            "at": self.at_us,
            "f": self.fields,
            "r": self.rates,
            "a": self.amounts,
            "st": self.starts,
            "e": self.ends,
        }
        if self.event or self.caller_id:
            line.update(ev=self.event, ei=self.event_id, ea=self.attrs, ec=self.caller_id)
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"

    @classmethod
    def from_line(cls, line: str) -> JournalEntry:
        d = json.loads(line)
        return cls(
            d["id"],
            d["s"],
            d["at"],
            tuple(d["f"]),
            tuple(d["r"]),
            tuple(d["a"]),
            tuple(d["st"]),
            tuple(d["e"]),
            d.get("ev", ""),
            d.get("ei", ""),
            d.get("ea", ""),
            bool(d.get("ec", False)),
        )


def default_folder(url: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = uuid.uuid5(uuid.NAMESPACE_URL, url).hex[:12]
    return Path(base) / "tollway" / f"journal-{digest}"


class Journal:
    """Append-only, fsync'd, one file per process, replayed by whoever finds the store back."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._name = _file_name()
        self._lock = threading.Lock()
        self.pending = self.folder.exists() and any(self._files())
        """Whether entries may be waiting for a replay (checked without touching the disk)."""
        self.replaying = False

    def _files(self) -> Iterator[Path]:
        return (p for p in self.folder.glob("*.jsonl") if p.stat().st_size > 0)

    def append(self, entry: JournalEntry) -> None:
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(_MAX_FILES_PER_APPEND):
                with (self.folder / self._name).open("a+b") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        # A replay holds this file, perhaps this very process's (an asyncio
                        # store replays between awaits, and a step journaled meanwhile would
                        # wait on its own lock for ever): write to a new file instead, which
                        # the next replay finds like any other.
                        self._name = _file_name()
                        continue
                    _write_line(handle, entry.to_line().encode("utf-8"))
                    self.pending = True
                    return
            raise StoreError(
                f"journal {self.folder}: {_MAX_FILES_PER_APPEND} files in a row were locked by "
                "replays; the entry was not written"
            )

    def claim(self) -> Iterator[Claim]:
        """Each journal file with entries, locked for replay; skip the ones another process is
        replaying. Leave the `Claim` block normally to empty the file, or raise to keep it."""
        if self.replaying or not self.folder.exists():
            self.pending = False
            return
        self.replaying = True
        try:
            for path in sorted(self._files()):
                with _claim(path) as claim:
                    if claim is not None:
                        yield claim
            self.pending = False
        finally:
            self.replaying = False

    def replay(self, apply: Callable[[JournalEntry], object]) -> int:
        """Send every journaled entry through ``apply``; returns how many were sent.

        ``apply`` raising leaves the file as it is, to be replayed again later.
        """
        sent = 0
        with self._lock:
            for claim in self.claim():
                for entry in claim.entries:
                    apply(entry)
                    sent += 1
        return sent


_MAX_FILES_PER_APPEND = 8
"""New files an append tries before it gives up (each locked one is being replayed)."""


def _file_name() -> str:
    """A journal file of this process's own (a new one whenever its file is being replayed)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"


def _write_line(handle: IO[bytes], line: bytes) -> None:
    end = handle.seek(0, os.SEEK_END)
    if end:
        handle.seek(end - 1)
        if handle.read(1) != b"\n":
            line = b"\n" + line  # a torn last line stays apart from this entry
    handle.write(line)
    handle.flush()
    os.fsync(handle.fileno())


@dataclass(frozen=True, slots=True)
class Claim:
    path: Path
    entries: list[JournalEntry]


@contextlib.contextmanager
def _claim(path: Path) -> Iterator[Claim | None]:
    with path.open("r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None  # another process is replaying it right now
            return
        entries = []
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entries.append(JournalEntry.from_line(line))
            except (ValueError, KeyError, TypeError):
                # A torn line (a crash mid-append, a full disk) is set aside, not retried.
                _set_aside(path, number, line)
        yield Claim(path, entries)
        # Emptied, never unlinked: a writer may hold the file open to append to it.
        handle.seek(0)
        handle.truncate()


def _set_aside(path: Path, number: int, line: str) -> None:
    with path.with_suffix(".bad").open("a", encoding="utf-8") as bad:
        bad.write(f"{path.name}:{number}: {line.rstrip()}\n")
    logger.warning(
        "journal %s line %d is not an entry; set aside in %s",
        path,
        number,
        path.with_suffix(".bad"),
    )
