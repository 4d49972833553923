"""What changed between two policy documents, key path by key path.

Compared are the parsed documents (what the file says, not the defaults filled in), so a
change shows where an operator would edit it: ``plans.pro.limits[0].quota``. Tables are
compared key by key, lists item by item (a list that grew shows its new items as added).
A key that is not a plain name is written quoted: ``plans."a.b"``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollway.errors import PolicyError, PolicyIssue

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
MISSING: Any = None
"""``before`` of an added key, ``after`` of a removed one."""


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: the key path, and the value before and after (None: absent)."""

    path: str
    before: Any
    after: Any

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "before": self.before, "after": self.after}


def document(text: str, format: str) -> Any:
    """The parsed document of a stored version's text (already validated on upload)."""
    try:
        if format == "toml":
            return tomllib.loads(text)
        if format == "json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text) or {}
    except Exception as exc:  # stored texts were valid: this is a damaged row
        raise PolicyError([PolicyIssue("", f"cannot parse the stored {format}: {exc}")]) from None


def diff(before: Any, after: Any) -> list[Change]:
    """Every change from the document ``before`` to ``after``, in path order."""
    out: list[Change] = []
    _walk("", _plain(before), _plain(after), out)
    return out


def _walk(path: str, a: Any, b: Any, out: list[Change]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = _key(path, key)
            if key not in a:
                out.append(Change(sub, MISSING, b[key]))
            elif key not in b:
                out.append(Change(sub, a[key], MISSING))
            else:
                _walk(sub, a[key], b[key], out)
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            sub = f"{path}[{i}]"
            if i >= len(a):
                out.append(Change(sub, MISSING, b[i]))
            elif i >= len(b):
                out.append(Change(sub, a[i], MISSING))
            else:
                _walk(sub, a[i], b[i], out)
        return
    if a != b or type(a) is not type(b):
        out.append(Change(path, a, b))


def _key(path: str, key: str) -> str:
    name = key if _PLAIN.fullmatch(key) else json.dumps(key)
    return f"{path}.{name}" if path else name


def _plain(value: Any) -> Any:
    """JSON-like values (dates and times as ISO text), so every format compares alike."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


__all__ = ["Change", "diff", "document"]
