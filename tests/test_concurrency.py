"""Many processes, one Redis: limits hold exactly, never one unit more.

Eight processes (``spawn``) are released together by a barrier and hammer one subject with a
bounded number of attempts. The store's timeout is generous and every limit fails closed, so a
slow moment on a loaded machine can only deny, never let an extra call through; the tests also
check that no decision was degraded, so what they measure is the atomic step alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from model import day_safe_timezone, hour_safe_timezone
from processes import run_together
from tollway import Tollway

PROCESSES = 8


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail-open journal written here goes to a temporary folder, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _policy(limits: list[dict[str, Any]], price: str = "0.005 USD") -> dict[str, Any]:
    return {
        "store": {"timeout_ms": 5000, "on_error": "closed"},
        "defaults": {"plan": "p"},
        "operations": {"call": {"cost": 1, "price": price}},
        "plans": {"p": {"limits": limits}},
    }


@dataclass
class Tally:
    allowed: int
    degraded: int
    used: list[Any]
    """Per allowed decision, the ``watch`` limit's count right after the step."""
    crossings: list[tuple[str, str]]


def _worker(
    url: str,
    policy: dict[str, Any],
    subject: str,
    attempts: int,
    watch: str,
    barrier: Any,
    results: Any,
) -> None:
    try:
        with Tollway(policy, url) as tw:
            tw.usage(subject)  # connect, load the scripts: the race starts at the barrier
            barrier.wait()
            allowed = degraded = 0
            used: list[Any] = []
            crossings: list[tuple[str, str]] = []
            for _ in range(attempts):
                decision = tw.acquire(subject, "call")
                degraded += decision.degraded
                if decision.allowed:
                    allowed += 1
                    used.append(decision.limit(watch).used)
                    crossings += [(c.limit, str(c.threshold)) for c in decision.crossings]
            results.put(Tally(allowed, degraded, used, crossings))
    except BaseException as exc:  # report it: a silent child would only show as a timeout
        results.put(exc)
        raise


def hammer(
    url: str, policy: dict[str, Any], subject: str, attempts: int, watch: str
) -> list[Tally]:
    """``attempts`` acquires in total, spread over 8 processes started together."""
    share = [attempts // PROCESSES + (i < attempts % PROCESSES) for i in range(PROCESSES)]
    tallies: list[Tally] = run_together(_worker, [(url, policy, subject, n, watch) for n in share])
    assert sum(t.degraded for t in tallies) == 0
    return tallies


@pytest.fixture(params=["standalone", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "standalone":
        request.getfixturevalue("redis_client")  # flushed
        return str(request.getfixturevalue("redis_url"))
    request.getfixturevalue("redis_cluster_client")  # flushed
    return str(request.getfixturevalue("redis_cluster_url"))


def test_hourly_quota_allows_exactly_its_count(url: str) -> None:
    tz = hour_safe_timezone()
    policy = _policy(
        [
            {"name": "hourly", "quota": "1000/hour", "timezone": tz, "thresholds": [0.5, 0.8, 1.0]},
        ]
    )
    tallies = hammer(url, policy, "acct-q", 5000, "hourly")
    assert sum(t.allowed for t in tallies) == 1000
    # every allowed step saw its own count: 1..1000, each exactly once
    assert sorted(u for t in tallies for u in t.used) == list(range(1, 1001))
    # each threshold crossed by exactly one step, across all processes
    crossings = sorted(c for t in tallies for c in t.crossings)
    assert crossings == [("hourly", "0.5"), ("hourly", "0.8"), ("hourly", "1.0")]
    with Tollway(policy, url) as tw:
        hourly = tw.usage("acct-q").limit("hourly")
        assert hourly.used == 1000
        assert hourly.remaining == 0


def test_daily_budget_allows_exactly_what_it_can_pay(url: str) -> None:
    policy = _policy(
        [
            {"name": "spend", "budget": "50.00 USD/day", "timezone": day_safe_timezone()},
        ]
    )
    tallies = hammer(url, policy, "acct-b", 12_000, "spend")
    assert sum(t.allowed for t in tallies) == 10_000
    spent = sorted(u for t in tallies for u in t.used)
    assert spent[0] == Decimal("0.005")
    assert spent[-1] == Decimal("50.00")
    assert len(set(spent)) == 10_000
    with Tollway(policy, url) as tw:
        assert tw.usage("acct-b").limit("spend").used == Decimal("50.00")


@pytest.mark.parametrize(
    ("burst", "quota", "budget", "tightest"),
    [
        (300, 500, "2.50 USD", 300),  # the rate's burst binds (budget: 500 calls)
        (900, 350, "2.50 USD", 350),  # the quota binds
        (900, 800, "1.25 USD", 250),  # the budget binds
    ],
)
def test_three_limits_never_one_more_than_the_tightest(
    url: str, burst: int, quota: int, budget: str, tightest: int
) -> None:
    tz = day_safe_timezone()
    policy = _policy(
        [
            # one unit per hour: nothing refills during the test, the burst is all there is
            {"name": "rate", "rate": "1/h", "burst": burst},
            {"name": "quota", "quota": f"{quota}/day", "timezone": tz},
            {"name": "budget", "budget": f"{budget}/day", "timezone": tz},
        ]
    )
    tallies = hammer(url, policy, "acct-3", 1200, "quota")
    assert sum(t.allowed for t in tallies) == tightest
    assert sorted(u for t in tallies for u in t.used) == list(range(1, tightest + 1))
    with Tollway(policy, url) as tw:
        usage = tw.usage("acct-3")
        # all or nothing: the denied attempts took nothing from the other two limits
        assert usage.limit("rate").used == tightest
        assert usage.limit("quota").used == tightest
        assert usage.limit("budget").used == Decimal("0.005") * tightest
