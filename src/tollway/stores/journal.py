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
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


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

    def to_line(self) -> str:
        return (
            json.dumps(
                {
                    "id": self.id,
                    "s": self.subject,
                    "at": self.at_us,
                    "f": self.fields,
                    "r": self.rates,
                    "a": self.amounts,
                    "st": self.starts,
                    "e": self.ends,
                },
                separators=(",", ":"),
                ensure_ascii=False,
            )
            + "\n"
        )

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
        )


def default_folder(url: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = uuid.uuid5(uuid.NAMESPACE_URL, url).hex[:12]
    return Path(base) / "tollway" / f"journal-{digest}"


class Journal:
    """Append-only, fsync'd, one file per process, replayed by whoever finds the store back."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._lock = threading.Lock()
        self.pending = any(self._files()) if self.folder.exists() else False
        """Whether entries may be waiting for a replay (checked without touching the disk)."""

    def _files(self) -> Iterator[Path]:
        return (p for p in self.folder.glob("*.jsonl") if p.stat().st_size > 0)

    def append(self, entry: JournalEntry) -> None:
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / self._name
            with path.open("a", encoding="utf-8") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                handle.write(entry.to_line())
                handle.flush()
                os.fsync(handle.fileno())
            self.pending = True

    def replay(self, apply: Callable[[JournalEntry], object]) -> int:
        """Send every journaled entry through ``apply``; returns how many were sent.

        ``apply`` raising leaves the file as it is, to be replayed again later.
        """
        if not self.folder.exists():
            self.pending = False
            return 0
        sent = 0
        with self._lock:
            for path in sorted(self._files()):
                sent += self._replay_file(path, apply)
            self.pending = False
        return sent

    @staticmethod
    def _replay_file(path: Path, apply: Callable[[JournalEntry], object]) -> int:
        sent = 0
        with path.open("r+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another process is replaying it right now
            for line in handle:
                if line.strip():
                    apply(JournalEntry.from_line(line))
                    sent += 1
            handle.seek(0)
            handle.truncate()
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0 and not path.name.endswith(f"{os.getpid()}.jsonl"):
                path.unlink()
        return sent
