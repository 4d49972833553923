"""The journal: what the store could not be told, to tell it when it answers again.

Two kinds of entry. A step let through while the store was unreachable (fail-open) is to be
counted. A step *in doubt* (sent, but its reply lost: a timeout, a cut connection) carries
its identity (`tollway.stores.step_ids`): if the caller was let through, it is counted unless
the store applied it already; if the caller was refused, it is given back if the store did
apply it. Either way counters, decisions and the ledger agree once it is resolved.

Each process appends to a file of its own in the journal folder, one JSON line per step,
flushed and fsync'd before the step is answered. When the store answers again, a background
thread of any process (`tollway.stores.replayer`) replays every file of the folder (its own
and those of processes that died), each entry once: the replay script marks the entry's id in
Redis, so a replay repeated after a crash counts nothing twice. What was replayed is cut from
its file as the replay goes, so a crash or an error loses no progress.
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
    process: str = ""
    seq: int = 0
    """A step in doubt: the identity it was sent with (`StepIds`); "" and 0 otherwise."""
    deadline_us: int = 0
    """A step in doubt: its deadline on the store's clock; the store may still apply it until
    then (it sat in a buffer), so it is resolved only after."""
    undo: bool = False
    """A step in doubt whose caller was refused: give it back if the store applied it (the
    event is then a correction of it); else: count it unless the store applied it."""

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
        if self.process:
            line.update(p=self.process, q=self.seq, dl=self.deadline_us, u=self.undo)
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
            str(d.get("p", "")),
            int(d.get("q", 0)),
            int(d.get("dl", 0)),
            bool(d.get("u", False)),
        )


def default_folder(url: str, prefix: str = "") -> Path:
    """One folder per store and key prefix: a tenant's journal is replayed into its own keys."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    name = f"{url} {prefix}" if prefix else url  # no prefix: the folder it always was
    digest = uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:12]
    return Path(base) / "tollway" / f"journal-{digest}"


class Journal:
    """Append-only, fsync'd, one file per process, replayed by whoever finds the store back."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._pid = os.getpid()
        self._owner = _owner_token()
        self._name = _file_name(self._owner)
        self._alive: IO[bytes] | None = None
        """Held locked while this process lives: others replay its files only once it died,
        so a step in doubt is resolved by the process that sent it (see `_owner_alive`)."""
        self._lock = threading.Lock()
        self.pending = self.folder.exists() and any(self._files())
        """Whether entries may be waiting for a replay (checked without touching the disk)."""
        self._replaying = threading.Lock()
        self.appended = 0
        """Entries this process appended: a replay that ends with it changed has not seen
        them all (they may be in a file it had passed)."""

    @property
    def size_bytes(self) -> int:
        """Bytes of entries waiting in the folder's files, every process's (for metrics)."""
        total = 0
        if self.folder.exists():
            for path in self.folder.glob("*.jsonl"):
                with contextlib.suppress(FileNotFoundError):  # cut by a replay meanwhile
                    total += path.stat().st_size
        return total

    def _files(self) -> Iterator[Path]:
        return (p for p in self.folder.glob("*.jsonl") if p.stat().st_size > 0)

    def _forked(self) -> None:
        """A child of a fork writes files of its own (the parent's lock is not its own)."""
        if os.getpid() != self._pid:
            self._pid, self._owner, self._alive = os.getpid(), _owner_token(), None
            self._name = _file_name(self._owner)

    def _hold_alive(self) -> None:
        if self._alive is None:
            handle = (self.folder / f"{self._owner}.alive").open("a+b")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._alive = handle

    def close(self) -> None:
        """This process is done with the journal: its files are anyone's to replay."""
        with self._lock:
            self._forked()
            if self._alive is not None:
                with contextlib.suppress(OSError):
                    (self.folder / f"{self._owner}.alive").unlink()
                self._alive.close()
                self._alive = None

    def append(self, entry: JournalEntry) -> None:
        with self._lock:
            self._forked()
            self.folder.mkdir(parents=True, exist_ok=True)
            self._hold_alive()
            for _ in range(_MAX_FILES_PER_APPEND):
                with (self.folder / self._name).open("a+b") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        # A replay holds this file, perhaps this very process's (an asyncio
                        # store replays between awaits, and a step journaled meanwhile would
                        # wait on its own lock for ever): write to a new file instead, which
                        # the next replay finds like any other.
                        self._name = _file_name(self._owner)
                        continue
                    _write_line(handle, entry.to_line().encode("utf-8"))
                    self.appended += 1
                    self.pending = True
                    return
            raise StoreError(
                f"journal {self.folder}: {_MAX_FILES_PER_APPEND} files in a row were locked by "
                "replays; the entry was not written"
            )

    def claim(self) -> Iterator[Claim]:
        """Each journal file with entries, locked for replay; skip the ones another process is
        replaying (and everything while another thread of this one replays). When the `Claim`
        block is left, however, the entries before ``claim.done`` are cut from the file."""
        if not self.folder.exists():
            self.pending = False
            return
        if not self._replaying.acquire(blocking=False):
            return
        try:
            left, seen = False, self.appended
            self._forked()
            for path in sorted(self._files()):
                if not self._mine_or_dead(path):
                    continue  # a live process's: it replays its own
                with _claim(path) as claim:
                    if claim is None:
                        left = True  # locked (an append, or a replay): try again later
                        continue
                    yield claim
                    left = left or claim.done < len(claim.entries)
            self.pending = left or self.appended != seen
        finally:
            self._replaying.release()

    def _mine_or_dead(self, path: Path) -> bool:
        owner = path.stem.rsplit("-", 1)[0]
        if owner == self._owner:
            return True
        lock = self.folder / f"{owner}.alive"
        if _owner_alive(lock):
            return False
        with contextlib.suppress(OSError):
            lock.unlink()  # its owner died: the files are anyone's now
        return True

    def replay(self, apply: Callable[[JournalEntry], float], limit: int = 0) -> tuple[int, float]:
        """Send journaled entries through ``apply`` (at most ``limit``, 0 for all); returns
        how many were sent, and how long to wait before the next try (0: all were sent).

        ``apply`` answers 0 for an entry done, or how many seconds before it can be (a step in
        doubt before its deadline): the replay stops there. ``apply`` raising stops it too;
        either way what was done is cut from its file and the rest stays for the next try.
        Appends never wait for a replay: a file being replayed is locked, and a writer moves
        to a new file.
        """
        sent = 0
        for claim in self.claim():
            for entry in claim.entries[claim.done :]:
                if limit and sent >= limit:
                    self.pending = True
                    return sent, 0.0
                wait = apply(entry)
                if wait > 0:
                    self.pending = True
                    return sent, wait
                claim.done += 1
                sent += 1
        return sent, 0.0


_MAX_FILES_PER_APPEND = 8
"""New files an append tries before it gives up (each locked one is being replayed)."""


def _owner_token() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _file_name(owner: str) -> str:
    """A journal file of this process's own (a new one whenever its file is being replayed)."""
    return f"{owner}-{uuid.uuid4().hex[:8]}.jsonl"


def _owner_alive(path: Path) -> bool:
    """Whether the process whose lock file is ``path`` still runs (it holds the lock)."""
    try:
        with path.open("rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
    except FileNotFoundError:
        return False
    return False


def _write_line(handle: IO[bytes], line: bytes) -> None:
    end = handle.seek(0, os.SEEK_END)
    if end:
        handle.seek(end - 1)
        if handle.read(1) != b"\n":
            line = b"\n" + line  # a torn last line stays apart from this entry
    handle.write(line)
    handle.flush()
    os.fsync(handle.fileno())


@dataclass(slots=True)
class Claim:
    path: Path
    entries: list[JournalEntry]
    done: int = 0
    """How many of ``entries`` (from the first) were replayed."""


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
        claim = Claim(path, entries)
        try:
            yield claim
        finally:
            # Cut what was replayed; emptied, never unlinked: a writer may hold it open.
            rest = "".join(entry.to_line() for entry in entries[claim.done :])
            handle.seek(0)
            handle.truncate()
            if rest:
                handle.write(rest)
                handle.flush()
                os.fsync(handle.fileno())


def _set_aside(path: Path, number: int, line: str) -> None:
    with path.with_suffix(".bad").open("a", encoding="utf-8") as bad:
        bad.write(f"{path.name}:{number}: {line.rstrip()}\n")
    logger.warning(
        "journal %s line %d is not an entry; set aside in %s",
        path,
        number,
        path.with_suffix(".bad"),
    )
