"""CloudEvents 1.0 envelopes in the structured JSON mode: one event, or a batch of them.

An envelope is a plain ``dict``::

    {"specversion": "1.0", "id": "…", "source": "/tollway/api-1",
     "type": "tollway.usage.recorded", "time": "2025-01-31T12:00:00.250000Z",
     "datacontenttype": "application/json", "subject": "acct_42", "data": {…}}

- `make_event` builds one and normalizes its ``data`` to JSON values: a `Decimal` becomes a
  string (``"0.005"``), a `Money` becomes ``{"amount": "0.005", "currency": "USD"}``, an aware
  `datetime` becomes an RFC 3339 string in UTC. A float anywhere in ``data`` is refused: events
  feed billing, and a float cannot be told apart from money that lost its exactness.
- `encode` writes compact JSON with sorted keys, ASCII only, so the bytes of an event are
  always the same (they are what a webhook signs). `decode` reads them back, checking the
  required attributes (``specversion``, ``id``, ``source``, ``type``) and the optional ones it
  knows; every error names the attribute at fault. Numbers with a fraction are read as
  `Decimal`, never as floats.
- A batch is a JSON array of envelopes (``application/cloudevents-batch+json``):
  `encode_batch` / `decode_batch`.

Types in the ``tollway.`` namespace must be one of `EVENT_TYPES` (defined in `tollway.events`
and re-exported here), so a typo cannot slip out;
any other reverse-DNS type (``com.example.thing``) is the caller's own.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from tollway.errors import EventFormatError
from tollway.events import (
    EVENT_TYPES,
    LIMIT_EXCEEDED,
    LIMIT_THRESHOLD,
    PROVIDER_FAILOVER,
    USAGE_RECORDED,
)
from tollway.money import Money

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CONTENT_TYPE",
    "DATA_CONTENT_TYPE",
    "EVENT_TYPES",
    "LIMIT_EXCEEDED",
    "LIMIT_THRESHOLD",
    "PROVIDER_FAILOVER",
    "SPECVERSION",
    "USAGE_RECORDED",
    "check_event",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "format_time",
    "make_event",
]

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
"""The HTTP content type of one event in the structured mode."""
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
"""The HTTP content type of a batch (a JSON array of events)."""
DATA_CONTENT_TYPE = "application/json"

_REQUIRED = ("specversion", "id", "source", "type")
_ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]+$")
# What `make_event` accepts as an id: it doubles as the webhook-id, which Standard Webhooks
# signs as "{id}.{timestamp}.{body}", so no "." and nothing a header cannot carry.
_EVENT_ID = re.compile(r"^[!-\-/-~]{1,256}$")
_TYPE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+$")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)


def make_event(
    type: str,
    data: Mapping[str, Any],
    *,
    source: str,
    id: str | None = None,
    time: datetime | None = None,
    subject: str | None = None,
) -> dict[str, Any]:
    """One CloudEvent: ``type`` (one of `EVENT_TYPES`, or a type outside ``tollway.``), ``data``
    (a mapping, normalized as the module's docstring says), ``source`` (a URI-reference naming
    the producer, e.g. ``/tollway/api-1``), ``id`` (default: a random UUID; at most 256
    printable ASCII characters without ``.``, since it is also the webhook-id), ``time``
    (an aware datetime, default now; written in UTC) and an optional ``subject``.

    Raises `EventFormatError` naming the attribute at fault."""
    _check_type(type)
    _check_text("source", source, "a URI-reference naming the producer, e.g. '/tollway/api-1'")
    if id is None:
        id = str(uuid.uuid4())
    elif not isinstance(id, str) or not _EVENT_ID.match(id):
        raise EventFormatError(
            f"id: {id!r}; expected 1 to 256 printable ASCII characters without spaces or '.' "
            "(the id is also the webhook-id)",
            "id",
        )
    if time is None:
        time = datetime.now(timezone.utc)
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": id,
        "source": source,
        "type": type,
        "time": _format_time(time, "time"),
        "datacontenttype": DATA_CONTENT_TYPE,
    }
    if subject is not None:
        if not isinstance(subject, str) or not subject.strip():
            raise EventFormatError(
                f"subject: {subject!r}; expected a non-empty string, e.g. the account the event "
                "is about",
                "subject",
            )
        event["subject"] = subject
    if not isinstance(data, Mapping):
        raise EventFormatError(
            f"data: {data!r} is a {_kind(data)}; expected a mapping of names to values", "data"
        )
    event["data"] = _jsonify(data, "data")
    return event


def format_time(when: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC: ``2025-01-31T12:00:00.250000Z`` (no fraction when
    it is zero). A naive datetime is refused: its zone would be a guess."""
    return _format_time(when, "time")


def check_event(event: Mapping[str, Any], *, where: str = "") -> None:
    """Raise `EventFormatError` unless ``event`` is a valid CloudEvents 1.0 envelope in the JSON
    format: the required attributes present, non-empty strings, ``specversion`` ``"1.0"``;
    ``time`` RFC 3339; attribute names lower-case letters and digits; not both ``data`` and
    ``data_base64``. ``where`` prefixes attribute names in errors (``"[3]."`` in a batch)."""
    if not isinstance(event, Mapping):
        raise EventFormatError(
            f"{where or 'event'}: {_kind(event)}; expected a JSON object (a CloudEvent)",
            where.rstrip(".") or None,
        )
    for name in _REQUIRED:
        if name not in event or event[name] is None:
            raise EventFormatError(
                f"{where}{name}: missing; a CloudEvent needs {', '.join(_REQUIRED)}", where + name
            )
        value = event[name]
        if not isinstance(value, str) or not value:
            raise EventFormatError(
                f"{where}{name}: {value!r}; expected a non-empty string", where + name
            )
    if event["specversion"] != SPECVERSION:
        raise EventFormatError(
            f"{where}specversion: {event['specversion']!r}; expected {SPECVERSION!r}",
            where + "specversion",
        )
    if "data" in event and "data_base64" in event:
        raise EventFormatError(
            f"{where}data_base64: present together with data; expected one of them",
            where + "data_base64",
        )
    for name, value in event.items():
        if name in {"data", "data_base64"}:
            continue
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.match(name):
            raise EventFormatError(
                f"{where}{name}: not a valid attribute name; expected lower-case ASCII letters "
                "and digits only",
                f"{where}{name}",
            )
        if value is not None and (
            isinstance(value, (Decimal, float)) or not isinstance(value, (str, int, bool))
        ):
            raise EventFormatError(
                f"{where}{name}: {value!r} is a {_kind(value)}; expected a string, an integer "
                "or a boolean",
                where + name,
            )
    time = event.get("time")
    if time is not None and (not isinstance(time, str) or not _is_rfc3339(time)):
        raise EventFormatError(
            f"{where}time: {time!r}; expected an RFC 3339 timestamp such as '2025-01-31T12:00:00Z'",
            where + "time",
        )
    for name in ("datacontenttype", "subject", "dataschema"):
        value = event.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise EventFormatError(
                f"{where}{name}: {value!r}; expected a non-empty string", where + name
            )


def encode(event: Mapping[str, Any]) -> bytes:
    """One event as compact JSON (sorted keys, ASCII only): the same event, the same bytes."""
    return _dump(_normalized(event, ""))


def decode(body: bytes | str) -> dict[str, Any]:
    """One event from JSON, checked by `check_event`; fractions in ``data`` come back as
    `Decimal`. Raises `EventFormatError` naming the attribute at fault."""
    value = _load(body)
    if isinstance(value, list):
        raise EventFormatError(
            f"the document is a JSON array (a batch of {len(value)}); expected one event "
            "(use decode_batch for a batch)"
        )
    check_event(value)
    return dict(value)


def encode_batch(events: Iterable[Mapping[str, Any]]) -> bytes:
    """A batch (``application/cloudevents-batch+json``): a JSON array of events, in order."""
    if isinstance(events, Mapping):
        raise EventFormatError("a batch is a list of events; got one event (use encode)")
    return _dump([_normalized(event, f"[{index}].") for index, event in enumerate(events)])


def decode_batch(body: bytes | str) -> list[dict[str, Any]]:
    """A batch from JSON: every event checked; errors name the event's index (``[2].id``)."""
    value = _load(body)
    if not isinstance(value, list):
        raise EventFormatError(
            f"the document is a {_kind(value)}; expected a JSON array of events (a batch)"
        )
    for index, event in enumerate(value):
        check_event(event, where=f"[{index}].")
    return [dict(event) for event in value]


# --------------------------------------------------------------------------- helpers


def _normalized(event: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(event, Mapping):
        raise EventFormatError(
            f"{where or 'event'}: {_kind(event)}; expected a mapping (a CloudEvent)",
            where.rstrip(".") or None,
        )
    out = dict(event)
    if "data" in out:
        out["data"] = _jsonify(out["data"], where + "data")
    if isinstance(out.get("time"), datetime):
        out["time"] = _format_time(out["time"], where + "time")
    check_event(out, where=where)
    return out


def _dump(value: Any) -> bytes:
    return json.dumps(
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _load(body: bytes | str) -> Any:
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventFormatError(f"the document is not UTF-8: {exc}") from None
    elif isinstance(body, str):
        text = body
    else:
        raise EventFormatError(f"the document is a {_kind(body)}; expected bytes or str")
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except EventFormatError:
        raise
    except ValueError as exc:
        raise EventFormatError(f"the document is not JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise EventFormatError(f"the document holds {name}, which is not a JSON number")


def _jsonify(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        raise EventFormatError(
            f"{path}: {value!r} is a float; expected a Decimal for money or any fraction "
            "(written as a string) or an int (events never carry floats)",
            path,
        )
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise EventFormatError(f"{path}: {value!r}; expected a finite Decimal", path)
        return format(value, "f")
    if isinstance(value, Money):
        return {"amount": format(value.amount, "f"), "currency": value.currency}
    if isinstance(value, datetime):
        return _format_time(value, path)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventFormatError(
                    f"{path}: key {key!r} is a {_kind(key)}; expected string keys", path
                )
            out[key] = _jsonify(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonify(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise EventFormatError(
        f"{path}: {value!r} is a {_kind(value)}; expected a JSON value (str, int, bool, None, "
        "Decimal, Money, aware datetime, list or mapping)",
        path,
    )


def _format_time(when: datetime, path: str) -> str:
    if not isinstance(when, datetime):
        raise EventFormatError(f"{path}: {when!r} is a {_kind(when)}; expected a datetime", path)
    if when.tzinfo is None or when.utcoffset() is None:
        raise EventFormatError(
            f"{path}: {when.isoformat()} is naive; expected an aware datetime "
            "(e.g. datetime.now(timezone.utc))",
            path,
        )
    return when.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "Z"


def _is_rfc3339(text: str) -> bool:
    if not _RFC3339.match(text):
        return False
    # The form is checked above; this checks the ranges (no 30 February). The fraction is
    # dropped and "Z" spelled out: Python 3.10's fromisoformat takes neither an odd number of
    # digits nor "Z".
    normalized = re.sub(r"\.\d+", "", text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    try:
        datetime.fromisoformat(normalized.replace("t", "T", 1))
    except ValueError:
        return False
    return True


def _check_type(type: Any) -> None:
    if not isinstance(type, str) or not _TYPE.match(type):
        raise EventFormatError(
            f"type: {type!r}; expected a dotted event type such as {USAGE_RECORDED!r}", "type"
        )
    if type.startswith("tollway.") and type not in EVENT_TYPES:
        raise EventFormatError(
            f"type: {type!r} is not a tollway event type; expected one of {', '.join(EVENT_TYPES)}",
            "type",
        )


def _check_text(name: str, value: Any, expected: str) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise EventFormatError(f"{name}: {value!r}; expected {expected} (no spaces)", name)


def _kind(value: Any) -> str:
    return type(value).__name__
