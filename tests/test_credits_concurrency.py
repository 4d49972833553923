"""Prepaid credits under a race: 8 processes (Redis standalone and a 3-master Cluster) or 8
threads (memory) on one grant of 10.00 USD at 0.01 USD a call get exactly 1,000 calls, the
balance ends at 0, and the ledger holds exactly 1,000 events naming the credits limit whose
amounts sum to 10.00."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from processes import run_together
from tollway import Tollway
from tollway.events import stream_key
from tollway.metering.entries import decode_entry
from tollway.metering.ledger.events import UsageEvent

PROCESSES = 8
ATTEMPTS = 1_400
GRANT = 10_000_000  # 10.00 USD


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _policy(tmp: Path) -> dict[str, Any]:
    return {
        "store": {"timeout_ms": 5000, "on_error": "closed"},
        "defaults": {"plan": "p"},
        "operations": {"call": {"cost": 1, "price": "0.01 USD"}},
        "plans": {"p": {"limits": [{"name": "credits", "credits": "USD"}]}},
        "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}"},
    }


@dataclass
class Tally:
    allowed: int
    degraded: int
    drawn: int


def _race(tw: Tollway, subject: str, attempts: int) -> Tally:
    allowed = degraded = drawn = 0
    for _ in range(attempts):
        decision = tw.acquire(subject, "call")
        degraded += decision.degraded
        allowed += decision.allowed
        drawn += decision.drawn
    return Tally(allowed, degraded, drawn)


def _worker(
    url: str, policy: dict[str, Any], subject: str, attempts: int, barrier: Any, results: Any
) -> None:
    try:
        with Tollway(policy, url) as tw:
            tw.usage(subject)  # connect, load the scripts: the race starts at the barrier
            barrier.wait()
            results.put(_race(tw, subject, attempts))
    except BaseException as exc:  # report it: a silent child would only show as a timeout
        results.put(exc)
        raise


def _ledger_totals(tmp: Path) -> tuple[int, int]:
    with sqlite3.connect(tmp / "ledger.db") as db:
        row = db.execute(
            "SELECT count(*), coalesce(sum(amount_micros), 0) FROM usage_events "
            "WHERE limits = '[\"credits\"]'"
        ).fetchone()
    return int(row[0]), int(row[1])


def _check(tallies: list[Tally], tw: Tollway, subject: str) -> None:
    assert sum(t.degraded for t in tallies) == 0
    assert sum(t.allowed for t in tallies) == 1_000
    assert sum(t.drawn for t in tallies) == GRANT
    balance, grants = tw.driver.balance(subject, "USD")
    assert balance == 0 and [(g.id, g.remaining) for g in grants] == [("g", 0)]
    assert tw.usage(subject).limit("credits").remaining == Decimal("0")


@pytest.fixture(params=["standalone", "cluster"])
def server(request: pytest.FixtureRequest) -> tuple[str, Any]:
    if request.param == "standalone":
        client = request.getfixturevalue("redis_client")  # flushed
        return str(request.getfixturevalue("redis_url")), client
    client = request.getfixturevalue("redis_cluster_client")  # flushed
    return str(request.getfixturevalue("redis_cluster_url")), client


def test_eight_processes_draw_a_grant_exactly(server: tuple[str, Any], tmp_path: Path) -> None:
    url, client = server
    policy = _policy(tmp_path)
    subject = f"acct-{uuid.uuid4().hex[:8]}"
    with Tollway(policy, url) as tw:
        assert tw.driver.grant(subject, "USD", "g", GRANT)
    share = [ATTEMPTS // PROCESSES] * PROCESSES
    tallies: list[Tally] = run_together(_worker, [(url, policy, subject, n) for n in share])
    with Tollway(policy, url) as tw:
        _check(tallies, tw, subject)
        # What a drain does: decode the stream's entries, write them to the ledger.
        stream = stream_key(
            subject, cluster="cluster" in url, partitions=tw.policy.ledger.partitions
        )
        events = [
            decode_entry(stream, eid.decode(), fields, recorded_at_us=1, policy=tw.policy)
            for eid, fields in client.xrange(stream)
        ]
        usage = [e for e in events if isinstance(e, UsageEvent) and e.subject == subject]
        assert tw.ledger is not None
        tw.ledger.insert(usage)
    assert _ledger_totals(tmp_path) == (1_000, GRANT)


def test_eight_threads_draw_a_grant_exactly_in_memory(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    subject = "acct-mem"
    with Tollway(policy) as tw:
        assert tw.driver.grant(subject, "USD", "g", GRANT)
        barrier = threading.Barrier(PROCESSES)
        tallies: list[Tally] = []
        lock = threading.Lock()

        def run() -> None:
            barrier.wait()
            tally = _race(tw, subject, ATTEMPTS // PROCESSES)
            with lock:
                tallies.append(tally)

        threads = [threading.Thread(target=run) for _ in range(PROCESSES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(tallies) == PROCESSES
        _check(tallies, tw, subject)
        tw.flush()
    assert _ledger_totals(tmp_path) == (1_000, GRANT)
