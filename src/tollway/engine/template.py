"""The usage template of a step: the part of its usage event the client knows before the
store runs it (the store adds its clock, and the caller's id and attributes). Kept here, light,
because every step with events builds one; `tollway.events` documents the format."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tollway.engine.rules import GATE
from tollway.errors import InvalidArgumentError

if TYPE_CHECKING:
    from tollway.engine.step import Step

__all__ = ["call_extras", "new_event_id", "usage_template"]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SAME: Any = object()


def usage_template(step: Step, version: str, units: int | None = None, micros: Any = _SAME) -> str:
    """The ``d`` field of the step's usage entry (cached on the step by the callers that reuse
    steps). ``units`` and ``micros`` override the step's cost (a reservation's commit)."""
    check = step.check
    amount = step.amount if micros is _SAME else micros
    currency = check.currency if check is not None and amount is not None else None
    if currency is None:
        amount = None
    operation = step.operation or step.plan or ""
    limits = [rule.name for rule in step.rules if rule.kind != GATE]
    return _encode(
        [
            step.subject,
            operation,
            operation,
            step.cost if units is None else units,
            amount,
            currency,
            step.plan,
            version or None,
            limits,
        ]
    )


def new_event_id(now_us: int) -> str:
    """A time-ordered event id (the ledger indexes these cheaper than random ones)."""
    return f"evt_{now_us:014x}{secrets.token_hex(8)}"


ID_MAX = 255
ATTRIBUTES_MAX_BYTES = 4096
ATTRIBUTE_KEY_MAX = 128
INT64 = 2**63


def call_extras(call_id: object, attributes: object) -> tuple[str, str]:
    """A call's request id and its attributes as JSON, checked: an error names the argument
    (and the key), and nothing is sent."""
    if call_id is None:
        ident = ""
    elif not isinstance(call_id, str) or not call_id or len(call_id) > ID_MAX:
        raise InvalidArgumentError(
            f"id: {call_id!r} is not a request id; expected a str of 1 to {ID_MAX} characters"
        )
    elif not call_id.isprintable():
        raise InvalidArgumentError(
            f"id: {call_id[:80]!r} holds control characters; expected printable text"
        )
    else:
        ident = call_id
    if not attributes:
        if attributes is not None and not isinstance(attributes, Mapping):
            raise InvalidArgumentError(f"attributes: {attributes!r} is not a dict")
        return ident, ""
    if not isinstance(attributes, Mapping):
        raise InvalidArgumentError(
            f"attributes: a {type(attributes).__name__} is not a dict of str to str, int or bool"
        )
    plain: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key or len(key) > ATTRIBUTE_KEY_MAX:
            raise InvalidArgumentError(
                f"attributes: key {key!r} is not a str of 1 to {ATTRIBUTE_KEY_MAX} characters"
            )
        if isinstance(value, str):
            if "\x00" in value or "\x00" in key:
                raise InvalidArgumentError(f"attributes[{key!r}]: holds a NUL character")
            plain[key] = str(value)
        elif isinstance(value, bool):
            plain[key] = value
        elif isinstance(value, int):
            if not -INT64 <= value < INT64:
                raise InvalidArgumentError(
                    f"attributes[{key!r}]: {value} is outside the 64-bit integer range"
                )
            plain[key] = int(value)
        else:
            raise InvalidArgumentError(
                f"attributes[{key!r}]: {value!r} is a {type(value).__name__}; expected str, "
                "int or bool"
            )
    text = _sorted(plain)
    size = len(text.encode("utf-8"))
    if size > ATTRIBUTES_MAX_BYTES:
        raise InvalidArgumentError(
            f"attributes: {size} bytes as JSON; at most {ATTRIBUTES_MAX_BYTES} bytes"
        )
    return ident, text


_sorted = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
