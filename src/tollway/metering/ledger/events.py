"""`UsageEvent`: the durable record of one consumption, as the ledger stores it.

An event is validated once, when it is built (``UsageEvent(...)``, `from_row`, `from_dict`):
every error is an `InvalidUsageEventError` that names the event and the field at fault, so a
bad event never reaches a database and a batch holding one is refused whole.

Times are integer microseconds since the Unix epoch: ``occurred_at_us`` is the store's clock
when the step ran (what periods and totals are computed on), ``recorded_at_us`` when the event
was recorded (what ``as_of`` cuts on: a late event recorded after an invoice was drawn up is
left out of a re-run of that invoice). Money is integer micro-units of ``currency``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NoReturn, Union

from tollway.errors import InvalidUsageEventError
from tollway.keyspace import MAX_SUBJECT

__all__ = [
    "ATTRIBUTES_MAX_BYTES",
    "COLUMNS",
    "AttributeValue",
    "UsageEvent",
]

AttributeValue = Union[str, int, bool]  # noqa: UP007 (a runtime alias; 3.10 has no `type`)

ATTRIBUTES_MAX_BYTES = 4096
"""Cap on the size of ``attributes`` as compact UTF-8 JSON."""
ATTRIBUTES_MAX_KEY = 128
ID_MAX = 255
NAME_MAX = 255
SUBJECT_MAX = MAX_SUBJECT  # what the engine accepts
LIMITS_MAX = 64
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

COLUMNS: tuple[str, ...] = (
    "id",
    "subject",
    "operation",
    "meter",
    "quantity",
    "amount_micros",
    "currency",
    "plan",
    "policy_version",
    "limits",
    "occurred_at_us",
    "recorded_at_us",
    "attributes",
)
"""The ``usage_events`` columns, in the order of `UsageEvent.to_row`."""

# The fields that make an event's payload: all but ``recorded_at_us``. A redelivered event is
# recorded again later, so its recorded_at differs; that alone is not a conflict.
PAYLOAD_FIELDS: tuple[str, ...] = tuple(c for c in COLUMNS if c != "recorded_at_us")
_PAYLOAD_INDEXES = tuple(COLUMNS.index(name) for name in PAYLOAD_FIELDS)


# One encoder, built once: json.dumps with options builds a new one per call.
_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageEvent:
    """One usage event. Keyword-only; ``id`` is the idempotency key of the ledger."""

    id: str
    subject: str
    operation: str
    meter: str
    """What is counted: ``calls``, ``units``, ``tokens``... (totals are per meter)."""
    quantity: int
    occurred_at_us: int
    recorded_at_us: int
    amount_micros: int | None = None
    currency: str | None = None
    """ISO 4217 code (``USD``); set exactly when ``amount_micros`` is."""
    plan: str | None = None
    policy_version: str | None = None
    limits: tuple[str, ...] = ()
    """Names of the limits the step touched."""
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    """A flat JSON object: str keys, str/int/bool values, at most 4 KiB as JSON."""
    _limits_json: str = field(init=False, repr=False, compare=False, default="[]")
    _attributes_json: str = field(init=False, repr=False, compare=False, default="{}")

    def __post_init__(self) -> None:
        # Fast checks first (an event is built per consumption); the detailed ones, which
        # build the messages, run only on a value that failed.
        ident = self.id
        if not isinstance(ident, str) or not ident:
            raise InvalidUsageEventError(
                f"{ident!r} is not an event id; expected a non-empty str", field="id"
            )
        check = _Checker(ident)
        for name, value, limit in (
            ("id", ident, ID_MAX),
            ("subject", self.subject, SUBJECT_MAX),
            ("operation", self.operation, NAME_MAX),
            ("meter", self.meter, NAME_MAX),
        ):
            if not _text_ok(value, limit):
                check.text(name, value, limit)
        for name, number in (
            ("occurred_at_us", self.occurred_at_us),
            ("recorded_at_us", self.recorded_at_us),
        ):
            if type(number) is not int or not 0 <= number <= INT64_MAX:
                check.integer(name, number)
        # Quantity and amount may be negative: a correction (a provider call refunded).
        # `Tollway.record` still refuses a negative quantity from a caller.
        quantity = self.quantity
        if type(quantity) is not int or not INT64_MIN <= quantity <= INT64_MAX:
            check.integer("quantity", quantity, signed=True)
        amount, currency = self.amount_micros, self.currency
        if amount is not None and (type(amount) is not int or not INT64_MIN <= amount <= INT64_MAX):
            check.integer("amount_micros", amount, signed=True)
        if currency is not None and not (
            isinstance(currency, str) and len(currency) == 3 and currency.isascii()
            and currency.isalpha() and currency.isupper()
        ):  # fmt: skip
            check.fail("currency", f"{currency!r} is not a currency; expected 3 letters like 'USD'")
        if (amount is None) != (currency is None):
            check.fail(
                "currency",
                "amount_micros and currency go together: set both or neither "
                f"(amount_micros={amount!r}, currency={currency!r})",
            )
        if self.plan is not None and not _text_ok(self.plan, NAME_MAX):
            check.text("plan", self.plan, NAME_MAX)
        if self.policy_version is not None and not _text_ok(self.policy_version, NAME_MAX):
            check.text("policy_version", self.policy_version, NAME_MAX)

        limits = self.limits
        if limits:
            if isinstance(limits, (str, bytes)) or not isinstance(limits, (tuple, list)):
                check.fail("limits", f"{limits!r} is not a sequence of limit names")
            if len(limits) > LIMITS_MAX:
                check.fail("limits", f"{len(limits)} names; at most {LIMITS_MAX}")
            for index, name in enumerate(limits):
                if not _text_ok(name, NAME_MAX):
                    check.text(f"limits[{index}]", name, NAME_MAX)
            if not isinstance(limits, tuple):
                object.__setattr__(self, "limits", tuple(limits))
            object.__setattr__(self, "_limits_json", _limits_json(tuple(limits)))
        elif not isinstance(limits, tuple):
            if isinstance(limits, list):
                object.__setattr__(self, "limits", ())
            else:
                check.fail("limits", f"{limits!r} is not a sequence of limit names")

        attributes = self.attributes
        if not isinstance(attributes, Mapping):
            check.fail("attributes", f"{type(attributes).__name__} is not a JSON object (a dict)")
        if attributes:
            copy: dict[Any, Any] = dict(attributes)
            for key, value in copy.items():
                if not _text_ok(key, ATTRIBUTES_MAX_KEY):
                    if not isinstance(key, str):
                        check.fail("attributes", f"key {key!r} is not a str")
                    check.text(f"attributes[{key!r}]", key, ATTRIBUTES_MAX_KEY, what="key")
                kind: type = type(value)
                if kind is str:
                    if not _text_ok(value, ATTRIBUTES_MAX_BYTES, empty_ok=True):
                        check.text(f"attributes[{key!r}]", value, ATTRIBUTES_MAX_BYTES)
                elif kind is bool:
                    pass
                elif isinstance(value, int) and not isinstance(value, bool):
                    if not -INT64_MAX - 1 <= value <= INT64_MAX:
                        check.fail(
                            f"attributes[{key!r}]", f"{value} is outside the 64-bit integer range"
                        )
                    if kind is not int:
                        copy[key] = int(value)  # an IntEnum, say: store the number
                elif isinstance(value, str):
                    copy[key] = str(value)
                else:
                    check.fail(
                        f"attributes[{key!r}]",
                        f"{value!r} is a {kind.__name__}; expected str, int or bool",
                    )
            text = _json(copy)
            size = len(text) if text.isascii() else len(text.encode("utf-8"))
            if size > ATTRIBUTES_MAX_BYTES:
                check.fail(
                    "attributes", f"{size} bytes as JSON; at most {ATTRIBUTES_MAX_BYTES} bytes"
                )
            object.__setattr__(self, "attributes", MappingProxyType(copy))
            object.__setattr__(self, "_attributes_json", text)
        else:
            object.__setattr__(self, "attributes", _EMPTY)

    # ------------------------------------------------------------------ rows
    def to_row(self) -> tuple[Any, ...]:
        """The values of `COLUMNS`, ``limits`` and ``attributes`` as compact JSON text."""
        return (
            self.id,
            self.subject,
            self.operation,
            self.meter,
            self.quantity,
            self.amount_micros,
            self.currency,
            self.plan,
            self.policy_version,
            self._limits_json,
            self.occurred_at_us,
            self.recorded_at_us,
            self._attributes_json,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> UsageEvent:
        """The inverse of `to_row`; JSON columns may also come already decoded (jsonb)."""
        if len(row) != len(COLUMNS):
            raise InvalidUsageEventError(
                f"a row has {len(row)} values; expected {len(COLUMNS)} ({', '.join(COLUMNS)})"
            )
        limits, attributes = row[9], row[12]
        return cls(
            id=row[0],
            subject=row[1],
            operation=row[2],
            meter=row[3],
            quantity=row[4],
            amount_micros=row[5],
            currency=row[6],
            plan=row[7],
            policy_version=row[8],
            limits=tuple(json.loads(limits) if isinstance(limits, str) else limits),
            occurred_at_us=row[10],
            recorded_at_us=row[11],
            attributes=json.loads(attributes) if isinstance(attributes, str) else attributes,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (what a stream or a queue carries)."""
        return {
            "id": self.id,
            "subject": self.subject,
            "operation": self.operation,
            "meter": self.meter,
            "quantity": self.quantity,
            "amount_micros": self.amount_micros,
            "currency": self.currency,
            "plan": self.plan,
            "policy_version": self.policy_version,
            "limits": list(self.limits),
            "occurred_at_us": self.occurred_at_us,
            "recorded_at_us": self.recorded_at_us,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageEvent:
        """The inverse of `to_dict`; unknown or missing keys are errors naming the key."""
        ident = data.get("id") if isinstance(data, Mapping) else None
        event_id = ident if isinstance(ident, str) else None
        if not isinstance(data, Mapping):
            raise InvalidUsageEventError(f"{type(data).__name__} is not a dict")
        unknown = sorted(set(data) - set(COLUMNS))
        if unknown:
            raise InvalidUsageEventError(
                f"unknown key(s) {', '.join(map(repr, unknown))}",
                event_id=event_id,
                field=str(unknown[0]),
            )
        for required in ("id", "subject", "operation", "meter", "quantity"):
            if required not in data:
                raise InvalidUsageEventError("missing", event_id=event_id, field=required)
        for required in ("occurred_at_us", "recorded_at_us"):
            if required not in data:
                raise InvalidUsageEventError("missing", event_id=event_id, field=required)
        values = dict(data)
        if "limits" in values and isinstance(values["limits"], list):
            values["limits"] = tuple(values["limits"])
        if values.get("attributes") is None:
            values.pop("attributes", None)
        return cls(**values)

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy does not pickle: travel as the dict (and be validated on arrival).
        return (_from_dict, (self.to_dict(),))

    # ------------------------------------------------------------------ comparison
    def payload(self) -> tuple[Any, ...]:
        """What two deliveries of one event must agree on: the row less ``recorded_at_us``."""
        row = self.to_row()
        return tuple(row[i] for i in _PAYLOAD_INDEXES)

    def differences(self, other: UsageEvent) -> tuple[str, ...]:
        """Names of the payload fields in which ``other`` differs from this event."""
        mine, theirs = self.payload(), other.payload()
        return tuple(
            name for name, a, b in zip(PAYLOAD_FIELDS, mine, theirs, strict=True) if a != b
        )


_EMPTY: Mapping[str, AttributeValue] = MappingProxyType({})


def _from_dict(data: Mapping[str, Any]) -> UsageEvent:
    return UsageEvent.from_dict(data)


@lru_cache(maxsize=1024)
def _limits_json(limits: tuple[str, ...]) -> str:
    # Events of one plan touch the same few limits: encode each set of names once.
    return _json(list(limits))


def _text_ok(value: object, limit: int, *, empty_ok: bool = False) -> bool:
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        return False
    if not value:
        return empty_ok
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Checker:
    """Raises `InvalidUsageEventError` naming the event and the field."""

    __slots__ = ("event_id",)

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id

    def fail(self, name: str, message: str) -> NoReturn:
        raise InvalidUsageEventError(message, event_id=self.event_id, field=name)

    def text(
        self, name: str, value: object, limit: int, *, what: str = "", empty_ok: bool = False
    ) -> None:
        label = f"{what} " if what else ""
        if not isinstance(value, str):
            self.fail(name, f"{label}{value!r} is a {type(value).__name__}; expected a str")
        if not value and not empty_ok:
            self.fail(name, f"{label}is empty")
        if len(value) > limit:
            self.fail(name, f"{label}is {len(value)} characters long; at most {limit}")
        if "\x00" in value:
            self.fail(name, f"{label}{value!r} holds a NUL character")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                self.fail(name, f"{label}{value!r} is not valid Unicode (a lone surrogate)")

    def integer(self, name: str, value: object, *, signed: bool = False) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(name, f"{value!r} is a {type(value).__name__}; expected an int")
        if signed and not INT64_MIN <= value <= INT64_MAX:
            self.fail(name, f"{value} is out of range; expected -2**63 <= value < 2**63")
        if not signed and not 0 <= value <= INT64_MAX:
            self.fail(name, f"{value} is out of range; expected 0 <= value < 2**63")
