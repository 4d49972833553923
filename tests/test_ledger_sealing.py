"""Sensitive event attributes encrypted at rest (``[ledger] sensitive``, AES-GCM), on a real
SQLite and PostgreSQL ledger: the raw column holds no plaintext, the readers (the billing
trace, `Ledger.opened`) give it back, rows of an older key still open after a rotation, and a
missing or wrong key is a clear error that never shows a key."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tollway import Tollway
from tollway.errors import ConfigurationError, LedgerError, PolicyError
from tollway.metering.drain import Drain
from tollway.metering.ledger import UsageEvent, open_ledger, sealer_for
from tollway.metering.ledger.flows import Flow, Query
from tollway.metering.ledger.sealing import MARK
from tollway.policy.model import LedgerConfig
from tollway.policy.parse import build_policy
from tollway.testing import FakeClock

UTC = timezone.utc
EMAIL = "alice@example.com"
OLD = base64.b64encode(b"o" * 32).decode()
NEW = base64.b64encode(b"n" * 32).decode()


def policy(url: str, **ledger: Any) -> dict[str, Any]:
    return {
        "defaults": {"plan": "pro"},
        "store": {"url": "memory://"},
        "ledger": {
            "url": url,
            "flush_ms": 60_000,
            "lateness_s": 10 * 86_400,
            "sensitive": ["email", "card"],
            "encryption_key_env": "TOLLWAY_LEDGER_KEY",
            **ledger,
        },
        "operations": {"geocode": {}},
        "billing": {"currency": "USD", "period": "month", "invoice_grace": "1h"},
        "plans": {"pro": {"charges": [{"meter": "geocode", "model": "unit", "unit": "0.01"}]}},
    }


def raw_attributes(tw: Tollway) -> list[str]:
    def flow() -> Flow[list[str]]:
        found = yield Query("SELECT attributes FROM usage_events ORDER BY id", ())
        return [row[0] if isinstance(row[0], str) else json.dumps(row[0]) for row in found]

    return tw.ledger.transact(flow)


def raw_attributes_at(url: str) -> list[str]:
    with open_ledger(url) as ledger:

        def flow() -> Flow[list[str]]:
            found = yield Query("SELECT attributes FROM usage_events ORDER BY id", ())
            return [row[0] if isinstance(row[0], str) else json.dumps(row[0]) for row in found]

        return ledger.transact(flow)


def make(url: str, monkeypatch: pytest.MonkeyPatch, key: str, **ledger: Any) -> Tollway:
    monkeypatch.setenv("TOLLWAY_LEDGER_KEY", key)
    clock = FakeClock(datetime(2026, 1, 10, tzinfo=UTC))
    return Tollway(policy(url, **ledger), clock=clock)


def trace_all(tw: Tollway, clock_to: datetime) -> list[UsageEvent]:
    assert isinstance(tw.engine.clock, FakeClock)
    tw.engine.clock.set(clock_to)
    (invoice,) = tw.billing.close().invoices
    assert invoice.number is not None
    (line,) = [i for i, x in enumerate(invoice.lines) if x.kind == "usage"]
    return tw.billing.trace(invoice.number, line)


def test_the_raw_column_holds_no_plaintext_and_the_trace_gives_it_back(
    billing_ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make(billing_ledger_url, monkeypatch, NEW) as tw:
        tw.acquire("a", "geocode", attributes={"email": EMAIL, "card": 4242, "region": "eu"})
        tw.acquire("a", "geocode", attributes={"email": EMAIL, "card": True})
        tw.flush()
        stored = raw_attributes(tw)
        assert len(stored) == 2
        for text in stored:
            assert EMAIL not in text and "alice" not in text and "4242" not in text
            assert MARK in text
        assert any('"eu"' in text for text in stored)  # not sensitive: as it was
        events = trace_all(tw, datetime(2026, 2, 1, 2, tzinfo=UTC))
    got = sorted((dict(e.attributes) for e in events), key=lambda a: str(a["card"]))
    assert got == [
        {"email": EMAIL, "card": 4242, "region": "eu"},
        {"email": EMAIL, "card": True},
    ]
    assert {type(a["card"]) for a in got} == {int, bool}  # types kept


def test_old_rows_still_open_after_a_rotation(
    billing_ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make(billing_ledger_url, monkeypatch, OLD) as tw:
        tw.acquire("a", "geocode", attributes={"email": "old@example.com"})
        tw.flush()
    # Rotation: the new key first, the old one still listed.
    monkeypatch.delenv("TOLLWAY_LEDGER_KEY")
    monkeypatch.setenv("TOLLWAY_LEDGER_KEYS", f"{NEW} {OLD}")
    rotated = {"encryption_key_env": None, "encryption_keys_env": "TOLLWAY_LEDGER_KEYS"}
    doc = policy(billing_ledger_url)
    doc["ledger"] = {k: v for k, v in {**doc["ledger"], **rotated}.items() if v is not None}
    clock = FakeClock(datetime(2026, 1, 11, tzinfo=UTC))
    with Tollway(doc, clock=clock) as tw:
        tw.acquire("a", "geocode", attributes={"email": "new@example.com"})
        tw.flush()
        ids = [text.split(MARK)[1].split(":")[0] for text in raw_attributes(tw)]
        sealer = tw.ledger.sealer
        assert sealer is not None
        assert ids[0] != ids[1] and set(ids) == set(sealer.key_ids)
        assert sealer.key_ids[0] == ids[1]  # the new row: the newest key
        events = trace_all(tw, datetime(2026, 2, 1, 2, tzinfo=UTC))
    assert sorted(e.attributes["email"] for e in events) == ["new@example.com", "old@example.com"]
    # Without the old key, its row is a clear error naming the key id, never the key.
    stored = raw_attributes_at(billing_ledger_url)
    sealer = sealer_for(
        LedgerConfig(sensitive=("email",), encryption_keys_env="TOLLWAY_LEDGER_KEYS"),
        env={"TOLLWAY_LEDGER_KEYS": NEW},
    )
    assert sealer is not None
    sealed = next(s for s in stored if ids[0] in s)
    event = UsageEvent(
        id="x",
        subject="a",
        operation="geocode",
        meter="geocode",
        quantity=1,
        occurred_at_us=1,
        recorded_at_us=1,
        attributes=json.loads(sealed),
    )
    with pytest.raises(LedgerError) as caught:
        sealer.open(event)
    text = str(caught.value)
    assert ids[0] in text and "email" in text and "TOLLWAY_LEDGER_KEYS" in text
    assert OLD not in text and NEW not in text


def test_a_drain_seals_too_and_a_redelivery_is_no_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLWAY_LEDGER_KEY", NEW)
    pol = build_policy(policy(f"sqlite:///{tmp_path / 'l.db'}"))
    event = UsageEvent(
        id="e1",
        subject="a",
        operation="geocode",
        meter="geocode",
        quantity=1,
        occurred_at_us=1,
        recorded_at_us=2,
        attributes={"email": EMAIL},
    )
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        Drain(None, ledger, policy=pol, commit=lambda *a: None)  # seals the ledger it is given
        assert ledger.sealer is not None
        first = ledger.write([event])
        again = ledger.write([event])  # the same event redelivered: the same sealed row
        assert (first.inserted, again.inserted, tuple(again.conflicts)) == (1, 0, ())
        (stored,) = ledger._fetch("SELECT attributes FROM usage_events", [])
        assert EMAIL not in str(stored[0])


def test_a_tampered_value_does_not_open(monkeypatch: pytest.MonkeyPatch) -> None:
    sealer = sealer_for(
        LedgerConfig(sensitive=("email", "name"), encryption_key_env="K"), env={"K": NEW}
    )
    assert sealer is not None
    base: dict[str, Any] = {"id": "e", "subject": "a", "operation": "o", "meter": "o"}
    base["quantity"] = 1
    sealed = sealer.seal(
        UsageEvent(
            **base, occurred_at_us=1, recorded_at_us=1, attributes={"email": EMAIL, "name": "Al"}
        )
    )
    value = str(sealed.attributes["email"])
    flipped = value[:-3] + ("A" if value[-3] != "A" else "B") + value[-2:]
    for attributes in ({"email": flipped}, {"name": value}):  # altered; moved to another name
        bad = UsageEvent(**base, occurred_at_us=1, recorded_at_us=1, attributes=attributes)
        with pytest.raises(LedgerError, match="does not open"):
            sealer.open(bad)
    assert sealer.open(sealed).attributes == {"email": EMAIL, "name": "Al"}
    assert NEW not in repr(sealer)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "TOLLWAY_LEDGER_KEY is not set"),
        ({"TOLLWAY_LEDGER_KEY": "not-base64!"}, "is not base64"),
        ({"TOLLWAY_LEDGER_KEY": base64.b64encode(b"short").decode()}, "is 5 bytes"),
        ({"TOLLWAY_LEDGER_KEY": f"{NEW} {OLD}"}, "encryption_keys_env"),
    ],
)
def test_a_missing_or_bad_key_is_a_clear_error_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    monkeypatch.delenv("TOLLWAY_LEDGER_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        Tollway(policy(f"sqlite:///{tmp_path / 'l.db'}"))
    text = str(caught.value)
    assert words in text and "[ledger]" in text
    for value in env.values():
        assert value not in text or value == ""


@pytest.mark.parametrize(
    ("ledger", "words"),
    [
        ({"sensitive": ["email"]}, "ledger.sensitive: sensitive attributes are encrypted"),
        ({"encryption_key_env": "K"}, "ledger.encryption_key_env: only applies with"),
        (
            {"sensitive": ["e"], "encryption_key_env": "K", "encryption_keys_env": "L"},
            "not both",
        ),
        ({"sensitive": ["e", "e"], "encryption_key_env": "K"}, "listed twice"),
        ({"sensitive": [""], "encryption_key_env": "K"}, "ledger.sensitive[0]"),
        ({"sensitive": ["e"], "encryption_key_env": "whsec_x y"}, "encryption_key_env"),
    ],
)
def test_the_policy_checks_the_encryption_settings(ledger: dict[str, Any], words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        build_policy({"ledger": ledger})
    assert words in str(caught.value)


def test_no_sensitive_attribute_leaves_rows_as_they_were(tmp_path: Path) -> None:
    assert sealer_for(LedgerConfig()) is None
    with Tollway(
        {
            "store": {"url": "memory://"},
            "defaults": {"plan": "p"},
            "plans": {"p": {"limits": []}},
            "operations": {"o": {}},
            "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}"},
        }
    ) as tw:
        tw.acquire("a", "o", attributes={"email": EMAIL})
        tw.flush()
        assert tw.ledger.sealer is None
        assert any(EMAIL in text for text in raw_attributes(tw))
