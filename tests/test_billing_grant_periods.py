"""A grant drawn in several billing periods names itself on each period's invoice: the draws
of a period are allocated inside it, though the grant was made in an earlier one."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from tollway import Tollway
from tollway.testing import FakeClock

UTC = timezone.utc


def test_a_grant_of_january_pays_february_lines_under_its_name(tmp_path: Path) -> None:
    policy = {
        "defaults": {"plan": "free"},
        "store": {"url": "memory://"},
        "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}", "flush_ms": 60_000},
        "operations": {"lookup": {"price": "0.01 USD"}},
        "billing": {"currency": "USD", "period": "month", "invoice_grace": "1h"},
        "plans": {
            "free": {"limits": [{"name": "hourly", "quota": "10/hour"}]},
            "pro": {"limits": [{"name": "wallet", "credits": "USD", "operations": ["lookup"]}]},
        },
    }
    clock = FakeClock(datetime(2026, 1, 10, tzinfo=UTC))
    with Tollway(policy, clock=clock) as tw:
        tw.assign("a", "pro")
        tw.billing.grant("a", Decimal("1.00"), id="g1")
        tw.billing.grant("a", Decimal("0.50"), id="g2", priority=1)  # drawn first
        assert tw.acquire("a", "lookup", 60).allowed  # 0.50 from g2, 0.10 from g1
        clock.set(datetime(2026, 2, 3, tzinfo=UTC))
        assert tw.acquire("a", "lookup", 20).allowed  # 0.20 from g1
        clock.set(datetime(2026, 3, 1, 2, tzinfo=UTC))
        tw.flush()
        closed = tw.billing.close().invoices
    credits = [
        [(line.grant, line.amount) for line in inv.lines if line.kind == "credits"]
        for inv in closed
    ]
    assert credits == [
        [("g2", Decimal("-0.50")), ("g1", Decimal("-0.10"))],
        [("g1", Decimal("-0.20"))],
    ]
