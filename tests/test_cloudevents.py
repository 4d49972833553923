"""CloudEvents 1.0 envelopes: building, normalizing money, stable encoding, strict decoding."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.errors import EventFormatError, InvalidArgumentError, TollwayError
from tollway.metering.cloudevents import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    EVENT_TYPES,
    LIMIT_EXCEEDED,
    LIMIT_THRESHOLD,
    PROVIDER_FAILOVER,
    USAGE_RECORDED,
    check_event,
    decode,
    decode_batch,
    encode,
    encode_batch,
    format_time,
    make_event,
)
from tollway.money import Money

WHEN = datetime(2025, 1, 31, 12, 0, 0, 250000, tzinfo=timezone.utc)


def usage_event(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "source": "/tollway/api-1",
        "id": "evt_1",
        "time": WHEN,
        "subject": "acct_42",
    }
    fields.update(overrides)
    data = fields.pop("data", {"operation": "geocode", "amount": Decimal("0.005"), "units": 1})
    return make_event(USAGE_RECORDED, data, **fields)


# --------------------------------------------------------------------------- make_event


def test_the_envelope_has_every_required_and_optional_attribute() -> None:
    event = usage_event()
    assert event == {
        "specversion": "1.0",
        "id": "evt_1",
        "source": "/tollway/api-1",
        "type": "tollway.usage.recorded",
        "time": "2025-01-31T12:00:00.250000Z",
        "datacontenttype": "application/json",
        "subject": "acct_42",
        "data": {"operation": "geocode", "amount": "0.005", "units": 1},
    }


def test_the_event_types_are_exported() -> None:
    assert EVENT_TYPES == (
        "tollway.usage.recorded",
        "tollway.limit.threshold",
        "tollway.limit.exceeded",
        "tollway.provider.failover",
        "tollway.subscription.updated",
        "tollway.invoice.finalized",
        "tollway.invoice.refunded",
    )
    assert EVENT_TYPES[:4] == (USAGE_RECORDED, LIMIT_THRESHOLD, LIMIT_EXCEEDED, PROVIDER_FAILOVER)
    for kind in EVENT_TYPES:
        assert make_event(kind, {}, source="/t")["type"] == kind


def test_defaults_are_a_uuid_and_now_in_utc() -> None:
    before = datetime.now(timezone.utc)
    event = make_event(LIMIT_EXCEEDED, {"limit": "daily"}, source="urn:tollway:test")
    after = datetime.now(timezone.utc)
    assert str(uuid.UUID(event["id"])) == event["id"]
    assert "subject" not in event
    assert event["time"].endswith("Z")
    stamp = datetime.fromisoformat(event["time"][:-1]).replace(tzinfo=timezone.utc)
    assert before - timedelta(microseconds=1) <= stamp <= after
    assert make_event(LIMIT_EXCEEDED, {}, source="/t")["id"] != event["id"]


def test_time_is_written_in_utc_whatever_its_zone() -> None:
    paris = timezone(timedelta(hours=2))
    event = usage_event(time=datetime(2025, 6, 1, 14, 30, tzinfo=paris))
    assert event["time"] == "2025-06-01T12:30:00Z"
    assert format_time(datetime(2025, 6, 1, 14, 30, 0, 5, tzinfo=paris)) == (
        "2025-06-01T12:30:00.000005Z"
    )


def test_money_is_always_a_string_never_a_float() -> None:
    data = {
        "amount": Decimal("0.1"),
        "tiny": Decimal("1E-7"),
        "big": Decimal("1E+3"),
        "cost": Money.parse("0.005 USD"),
        "seen": [Decimal("2.50"), (1, 2)],
        "at": datetime(2025, 1, 1, tzinfo=timezone.utc),
        "nested": {"ok": True, "none": None},
    }
    out = usage_event(data=data)["data"]
    assert out == {
        "amount": "0.1",
        "tiny": "0.0000001",
        "big": "1000",
        "cost": {"amount": "0.005", "currency": "USD"},
        "seen": ["2.50", [1, 2]],
        "at": "2025-01-01T00:00:00Z",
        "nested": {"ok": True, "none": None},
    }
    assert b"0.1" in encode(usage_event(data=data))
    assert not any(isinstance(v, float) for v in json.loads(encode(usage_event(data=data)))["data"])


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"amount": 0.1}, "data.amount"),
        ({"cost": {"amount": 1.5}}, "data.cost.amount"),
        ({"items": [1, 2.0]}, "data.items[1]"),
        ({"amount": Decimal("NaN")}, "data.amount"),
        ({"when": datetime(2025, 1, 1)}, "data.when"),
        ({"thing": object()}, "data.thing"),
        ({1: "x"}, "data"),
    ],
)
def test_data_that_is_not_json_or_is_a_float_is_refused_with_its_path(
    data: dict[Any, Any], path: str
) -> None:
    with pytest.raises(EventFormatError) as info:
        usage_event(data=data)
    assert info.value.attribute == path
    assert str(info.value).startswith(path)
    assert isinstance(info.value, InvalidArgumentError)
    assert isinstance(info.value, TollwayError)


@pytest.mark.parametrize(
    ("kind", "attribute", "fragment"),
    [
        ("tollway.usage.recorder", "type", "not a tollway event type"),
        ("nodots", "type", "dotted"),
        ("", "type", "dotted"),
    ],
)
def test_bad_types_are_refused(kind: str, attribute: str, fragment: str) -> None:
    with pytest.raises(EventFormatError, match=fragment) as info:
        make_event(kind, {}, source="/t")
    assert info.value.attribute == attribute


def test_a_type_outside_the_tollway_namespace_is_the_callers_own() -> None:
    assert make_event("com.example.invoice.paid", {}, source="/t")["type"] == (
        "com.example.invoice.paid"
    )


@pytest.mark.parametrize(
    ("overrides", "attribute"),
    [
        ({"id": "evt.1"}, "id"),
        ({"id": ""}, "id"),
        ({"id": "a b"}, "id"),
        ({"id": "x" * 257}, "id"),
        ({"source": ""}, "source"),
        ({"source": "/a b"}, "source"),
        ({"subject": " "}, "subject"),
        ({"time": datetime(2025, 1, 1)}, "time"),
        ({"data": ["not", "a", "mapping"]}, "data"),
    ],
)
def test_bad_attributes_are_refused_naming_them(overrides: dict[str, Any], attribute: str) -> None:
    with pytest.raises(EventFormatError) as info:
        usage_event(**overrides)
    assert info.value.attribute == attribute
    assert attribute in str(info.value)


# --------------------------------------------------------------------------- encode / decode


def test_encoding_is_compact_sorted_and_stable() -> None:
    event = usage_event()
    shuffled = dict(reversed(list(event.items())))
    shuffled["data"] = dict(reversed(list(event["data"].items())))
    body = encode(event)
    assert body == encode(shuffled)
    assert b" " not in body
    assert body.startswith(b'{"data":{"amount":"0.005","operation":"geocode","units":1},')
    keys = list(json.loads(body))
    assert keys == sorted(keys)


def test_encoding_is_ascii_and_round_trips() -> None:
    event = usage_event(data={"city": "Zürich", "emoji": "\N{EURO SIGN}"})
    body = encode(event)
    assert body.isascii()
    assert b"\\u00fc" in body
    assert decode(body) == event
    assert decode(body.decode("ascii")) == event


def test_encode_normalizes_a_hand_built_event() -> None:
    event = {
        "specversion": "1.0",
        "id": "x1",
        "source": "/s",
        "type": USAGE_RECORDED,
        "time": WHEN,
        "data": {"amount": Decimal("3.10")},
    }
    assert json.loads(encode(event))["data"] == {"amount": "3.10"}
    assert json.loads(encode(event))["time"] == "2025-01-31T12:00:00.250000Z"
    with pytest.raises(EventFormatError) as info:
        encode({**event, "data": {"amount": 3.1}})
    assert info.value.attribute == "data.amount"


def test_decode_reads_fractions_as_decimals() -> None:
    raw = (
        '{"specversion":"1.0","id":"1","source":"/s","type":"t.x",'
        '"data":{"price":0.1,"n":3,"list":[1.25]}}'
    )
    data = decode(raw)["data"]
    assert data["price"] == Decimal("0.1")
    assert isinstance(data["price"], Decimal)
    assert data["n"] == 3
    assert data["list"] == [Decimal("1.25")]


@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type"])
def test_decode_names_a_missing_required_attribute(attribute: str) -> None:
    event = json.loads(encode(usage_event()))
    del event[attribute]
    with pytest.raises(EventFormatError, match=f"^{attribute}: missing") as info:
        decode(json.dumps(event))
    assert info.value.attribute == attribute


@pytest.mark.parametrize(
    ("change", "attribute", "fragment"),
    [
        ({"specversion": "0.3"}, "specversion", "expected '1.0'"),
        ({"id": ""}, "id", "non-empty string"),
        ({"id": 7}, "id", "non-empty string"),
        ({"source": None}, "source", "missing"),
        ({"type": ["a"]}, "type", "non-empty string"),
        ({"time": "yesterday"}, "time", "RFC 3339"),
        ({"time": "2025-01-31T12:00:00"}, "time", "RFC 3339"),
        ({"time": "2025-02-30T12:00:00Z"}, "time", "RFC 3339"),
        ({"Tenant": "a"}, "Tenant", "attribute name"),
        ({"tenant_id": "a"}, "tenant_id", "attribute name"),
        ({"tenant": {"a": 1}}, "tenant", "a string, an integer or a boolean"),
        ({"datacontenttype": ""}, "datacontenttype", "non-empty string"),
        ({"data_base64": "AA=="}, "data_base64", "together with data"),
    ],
)
def test_decode_refuses_bad_attributes_naming_them(
    change: dict[str, Any], attribute: str, fragment: str
) -> None:
    event = json.loads(encode(usage_event()))
    event.update(change)
    with pytest.raises(EventFormatError, match=fragment) as info:
        decode(json.dumps(event))
    assert info.value.attribute == attribute


def test_decode_accepts_extensions_and_offsets() -> None:
    event = json.loads(encode(usage_event()))
    event.update({"tenant": "t1", "sequence": 4, "time": "2025-01-31T13:00:00+01:00"})
    assert decode(json.dumps(event))["tenant"] == "t1"
    check_event(event)
    for stamp in ("2025-01-31T12:00:00.1Z", "2025-01-31t12:00:00.123456789-05:30"):
        assert decode(json.dumps({**event, "time": stamp}))["time"] == stamp


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'"text"', "expected a JSON object"),
        (b"[]", "decode_batch"),
        (b'{"specversion":"1.0","id":"1","source":"/s","type":"t.x","data":NaN}', "NaN"),
    ],
)
def test_decode_refuses_documents_that_are_not_one_event(body: bytes, fragment: str) -> None:
    with pytest.raises(EventFormatError, match=fragment):
        decode(body)


# --------------------------------------------------------------------------- batches


def test_a_batch_is_a_json_array_in_order() -> None:
    events = [usage_event(id=f"evt_{n}") for n in range(3)]
    body = encode_batch(events)
    assert body.startswith(b"[{") and body.endswith(b"}]")
    assert [event["id"] for event in json.loads(body)] == ["evt_0", "evt_1", "evt_2"]
    assert decode_batch(body) == events
    assert BATCH_CONTENT_TYPE == "application/cloudevents-batch+json"
    assert CONTENT_TYPE == "application/cloudevents+json"
    assert decode_batch(encode_batch([])) == []


def test_batch_errors_name_the_event_index() -> None:
    events = json.loads(encode_batch([usage_event(id="a"), usage_event(id="b")]))
    del events[1]["id"]
    with pytest.raises(EventFormatError, match=r"^\[1\]\.id: missing") as info:
        decode_batch(json.dumps(events))
    assert info.value.attribute == "[1].id"
    with pytest.raises(EventFormatError) as info:
        encode_batch([usage_event(), {**usage_event(), "data": {"x": 0.5}}])
    assert info.value.attribute == "[1].data.x"
    with pytest.raises(EventFormatError, match=r"\[0\]"):
        decode_batch(b"[1]")


def test_one_event_is_not_a_batch_and_a_batch_is_not_one_event() -> None:
    with pytest.raises(EventFormatError, match="expected a JSON array"):
        decode_batch(encode(usage_event()))
    with pytest.raises(EventFormatError, match="use encode"):
        encode_batch(usage_event())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

_amounts = st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-(10**9))
_values = st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none(), _amounts)


@given(st.dictionaries(st.text(min_size=1, max_size=10), _values, max_size=8))
def test_any_normalized_event_round_trips_exactly(data: dict[str, Any]) -> None:
    event = make_event(USAGE_RECORDED, data, source="/p", id="e1", time=WHEN)
    body = encode(event)
    assert encode(decode(body)) == body
    for key, value in data.items():
        if isinstance(value, Decimal):
            assert Decimal(decode(body)["data"][key]) == value
        else:
            assert decode(body)["data"][key] == value
