"""CSV cells as hostile input and as output a spreadsheet will open.

Out: a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as
a formula by Excel, LibreOffice and Google Sheets (CSV injection), whether it came from the
input or from a provider's formatted address; it is written with a leading ``'``, which those
tools show as text (OWASP's advice). A plain number (``-12.5``) is left as it is: it is no
formula, and the coordinates must stay numbers. ``raw=True`` writes cells unescaped. NUL bytes
are always stripped from what is written: they break the tools that read CSV, and no address
or formula needs one.

In: an address with a NUL byte, or longer than `MAX_QUERY`, is refused for its row (never sent
to a provider) and the rest of the batch goes on; other cells pass through as they are. A
field longer than `MAX_FIELD` (usually an unclosed quote that swallows the rest of the file)
makes the whole file unreadable: where such a field ends cannot be trusted.
"""

from __future__ import annotations

import re

__all__ = [
    "FORMULA_STARTS",
    "MAX_FIELD",
    "MAX_QUERY",
    "escape_cell",
    "query_problem",
]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_QUERY = 1024
"""Characters in one address; providers take far less than this."""
MAX_FIELD = 64 * 1024
"""Characters in one CSV field, past which the file is not read at all."""

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def escape_cell(value: str, *, raw: bool = False) -> str:
    """``value`` as written to the output CSV (see the module's docstring)."""
    value = value.replace("\x00", "")
    if raw or not value.startswith(FORMULA_STARTS) or _NUMBER.fullmatch(value):
        return value
    return "'" + value


def query_problem(query: str) -> str | None:
    """Why ``query`` is not sent to any provider, or None."""
    if "\x00" in query:
        return "address: holds a NUL byte; expected text without NUL bytes (the row is not sent)"
    if len(query) > MAX_QUERY:
        return f"address: {len(query):,} characters; expected at most {MAX_QUERY:,}"
    return None
