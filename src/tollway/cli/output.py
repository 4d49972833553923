"""Plain-text output: JSON documents, aligned tables, bars, and error lines."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Sequence
from typing import Any, TextIO

PROG = "tollway"


def print_json(document: Any, file: TextIO | None = None) -> None:
    """``document`` as indented JSON (money is already text in tollway's ``to_dict``)."""
    print(json.dumps(document, indent=2), file=file or sys.stdout)


def error(message: object) -> None:
    """One ``tollway: error: ...`` line on stderr (a multi-line message is folded)."""
    text = " ".join(str(message).split("\n"))
    print(f"{PROG}: error: {text}", file=sys.stderr)


def note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr)


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Collection[int] = (),
    indent: str = "",
) -> list[str]:
    """Rows under headers, columns two spaces apart; columns in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def bar(counts: Sequence[tuple[int, str]], scale: float) -> str:
    """A text bar: each ``(count, mark)`` as ``count / scale`` marks, at least one if non-zero."""
    out = []
    for count, mark in counts:
        if count > 0:
            out.append(mark * max(1, round(count / scale)))
    return "".join(out)
