"""The journal is replayed in the background, in slices: no caller's acquire waits for it, and
a store that keeps failing is logged once per streak, not once per attempt."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from model import day_safe_timezone
from servers import RedisServer
from tollway import Tollway
from tollway.policy import load
from tollway.stores.journal import Journal, JournalEntry
from tollway.stores.replayer import Replayer

ENTRIES = 5000


def test_the_first_acquire_after_recovery_does_not_wait_for_the_replay(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    server = make_redis_server()
    folder = tmp_path / "journal"
    tz = day_safe_timezone()
    policy = load(
        {
            "store": {"url": server.url, "timeout_ms": 50, "journal": str(folder)},
            "defaults": {"plan": "p"},
            "operations": {"call": {"cost": 1}},
            "plans": {"p": {"limits": [{"name": "calls", "quota": "100000/day", "timezone": tz}]}},
        }
    )
    with Tollway(policy) as tw:
        first = tw.acquire("acct", "call")  # learns the window and the field
        rule = first.step.rules[0]
        start, end = first.step.windows[0][:2]
    # 5,000 steps let through during an outage by a process that has died since.
    folder.mkdir(parents=True, exist_ok=True)
    lines = (
        JournalEntry(f"e{n}", "acct", start + n, (rule.field,), (False,), (1,), (start,), (end,))
        for n in range(ENTRIES)
    )
    (folder / "gone-1-0000dead-00000000.jsonl").write_text("".join(e.to_line() for e in lines))
    with Tollway(policy) as tw:
        started = time.perf_counter()
        assert tw.acquire("acct", "call").allowed
        took = time.perf_counter() - started
        assert took < 0.1, f"the first acquire took {took * 1000:.0f} ms"
        assert tw.store.wait_replayed(60)
        assert tw.usage("acct").limit("calls").used == 1 + ENTRIES + 1


def test_a_failing_replay_logs_once_per_streak(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path / "journal")
    journal.append(JournalEntry("e1", "acct", 1, ("c",), (False,), (1,), (0,), (9,)))
    failures = {"left": 5}
    applied: list[str] = []
    lock = threading.Lock()

    def apply(entry: JournalEntry) -> float:
        with lock:
            if failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("store away")
        applied.append(entry.id)
        return 0.0

    replayer = Replayer(journal, apply, "test")
    with caplog.at_level(logging.WARNING, logger="tollway.journal"):
        replayer.kick()
        assert replayer.wait(30)
    replayer.close()
    assert applied == ["e1"]
    messages = [r.getMessage() for r in caplog.records if r.name == "tollway.journal"]
    assert len([m for m in messages if "failed" in m]) == 1, messages  # 5 failures, 1 line
    assert len([m for m in messages if "works again" in m]) == 1
