"""Billing's hook events: enqueued in the caller's ledger transaction, once per id, for the
hooks subscribed to their type only (real SQLite and PostgreSQL ledgers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_ledger import pg_url  # noqa: F401 (a fixture: a PostgreSQL schema per test)
from tollway.billing.notify import notice_flow
from tollway.events import INVOICE_FINALIZED, SUBSCRIPTION_UPDATED, USAGE_RECORDED
from tollway.metering.ledger import Ledger, open_ledger
from tollway.policy.model import HookConfig

AT = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
BILLING = HookConfig("billing", "callable", callable="x:y", events=(SUBSCRIPTION_UPDATED,))
USAGE_ONLY = HookConfig("usage", "callable", callable="x:y", events=(USAGE_RECORDED,))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = open_ledger(url)
    request.addfinalizer(opened.close)
    return opened


def _notify(ledger: Ledger, id: str, type: str = SUBSCRIPTION_UPDATED) -> int:
    extras = ledger.transact(
        lambda: notice_flow(
            ledger.dialect,
            [BILLING, USAGE_ONLY],
            id=id,
            type=type,
            subject="acct_42",
            at_us=AT,
            data={"plan": "pro", "previous_plan": None},
        )
    )
    return extras.enqueued


def test_a_notice_reaches_only_the_hooks_subscribed_to_its_type(ledger: Ledger) -> None:
    assert _notify(ledger, "sub_acct_42_1") == 1
    (message,) = ledger.hook_messages()
    assert (message.hook, message.type) == ("billing", SUBSCRIPTION_UPDATED)
    body = json.loads(message.body)
    assert body["subject"] == "acct_42"
    assert body["data"]["plan"] == "pro"
    assert _notify(ledger, "inv_INV-2026-000001", INVOICE_FINALIZED) == 0


def test_the_same_id_again_enqueues_nothing(ledger: Ledger) -> None:
    assert _notify(ledger, "sub_acct_42_1") == 1
    assert _notify(ledger, "sub_acct_42_1") == 0
    assert len(ledger.hook_messages()) == 1
