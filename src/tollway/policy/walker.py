"""The walk's bookkeeping: every issue found, with its key path, and the primitive checks.

Each section of the document is walked by a function of a `Walker` (see `tollway.policy.parse`
and its neighbours). A check that fails records an issue and stands in its default, so the walk
goes on and one `PolicyError` can list every problem of the document.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tollway.errors import PolicyIssue
from tollway.money import Money
from tollway.policy import fields
from tollway.policy.fields import Check, got, quoted, show, text
from tollway.policy.model import OnError, Operation

__all__ = ["MAX_COST", "MONEY", "NAME", "TIMEZONE", "Owner", "Table", "Walker", "join"]

T = TypeVar("T")
D = TypeVar("D")
Table = Mapping[str, object]

NAME = text(fields.parse_name, "free")
TIMEZONE = text(fields.parse_timezone, "Europe/Paris")
MONEY = text(fields.parse_money, "0.005 USD")
MAX_COST = fields.MAX_QUOTA

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join(path: str, key: str) -> str:
    """``plans.free`` + ``limits``; a key with dots or spaces is quoted to keep the path clear."""
    part = key if _PLAIN_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{part}" if path else part


@dataclass(frozen=True)
class Owner:
    """The plan or provider a list of limits belongs to, and what its limits inherit."""

    path: str
    is_provider: bool
    timezone: str
    price: Money | None = None


class Walker:
    """The issues found so far, and what later sections need from earlier ones (the policy's
    defaults, its operations)."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.issues: list[PolicyIssue] = []
        self.on_error: OnError = "open"
        self.timezone = "UTC"
        self.operations: dict[str, Operation] = {}
        self.operation_names: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.issues.append(PolicyIssue(path, message, self.source))

    def check(self, value: object, path: str, check: Check[T], default: D) -> T | D:
        try:
            return check(value)
        except ValueError as exc:
            self.error(path, str(exc))
            return default

    def get(self, table: Table, path: str, key: str, check: Check[T], default: D) -> T | D:
        if key not in table:
            return default
        return self.check(table[key], join(path, key), check, default)

    def table(self, value: object, path: str, allowed: Sequence[str] | None = None) -> Table:
        """The string-keyed entries of a table; unknown keys are reported and left out."""
        if not isinstance(value, Mapping):
            self.error(path, f"expected a table, got {got(value)}")
            return {}
        entries: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"expected string keys, got {got(key)}")
            elif allowed is not None and key not in allowed:
                self.unknown(path, key, allowed)
            else:
                entries[key] = item
        return entries

    def unknown(self, path: str, key: str, allowed: Sequence[str]) -> None:
        noun = "section" if not path else "key"
        message = f"unknown {noun} {show(key)}; expected one of {', '.join(allowed)}"
        close = difflib.get_close_matches(key, allowed, n=1)
        self.error(join(path, key), message + (f' (did you mean "{close[0]}"?)' if close else ""))

    def section(self, document: Table, name: str, allowed: Sequence[str] | None = None) -> Table:
        return self.table(document[name], name, allowed) if name in document else {}

    def named(self, table: Table, path: str) -> Iterator[tuple[str, str, object]]:
        """(name, path, value) of each entry of a table keyed by names that are valid."""
        for key, value in table.items():
            item_path = join(path, key)
            if self.check(key, item_path, NAME, None) is not None:
                yield key, item_path, value

    def items(self, value: object, path: str) -> list[object]:
        if not isinstance(value, (list, tuple)):
            self.error(path, f"expected a list, got {got(value)}")
            return []
        return list(value)

    def each(self, table: Table, path: str, key: str, check: Check[T]) -> tuple[T, ...]:
        if key not in table:
            return ()
        list_path = join(path, key)
        values = (
            self.check(item, f"{list_path}[{i}]", check, None)
            for i, item in enumerate(self.items(table[key], list_path))
        )
        return tuple(value for value in values if value is not None)

    def references(
        self, value: object, path: str, known: Sequence[str], what: str
    ) -> tuple[str, ...]:
        """A non-empty list of names, each declared in ``known``, none twice."""
        items = self.items(value, path)
        if isinstance(value, (list, tuple)) and not items:
            self.error(path, f"expected a non-empty list of {what} names, got []")
        names: list[str] = []
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]"
            name = self.check(item, item_path, fields.string, None)
            if name is None:
                continue
            if name not in known:
                expected = f"one of {quoted(known)}" if known else f"a {what} declared in [{what}s]"
                self.error(item_path, f"{show(name)} names no {what}; expected {expected}")
            elif name in names:
                self.error(item_path, f"{show(name)} is listed twice; expected each {what} once")
            else:
                names.append(name)
        return tuple(names)

    @staticmethod
    def section_names(document: Table, name: str) -> list[str]:
        """Names declared in a section, valid or not, so a bad entry is not reported twice."""
        section = document.get(name)
        return (
            [key for key in section if isinstance(key, str)] if isinstance(section, Mapping) else []
        )
