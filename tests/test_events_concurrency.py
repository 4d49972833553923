"""Many processes, one Redis: every allowed step appends its usage event exactly once.

Eight processes (``spawn``) are released together by a barrier and race on one subject, on a
standalone Redis and on a 3-master cluster. The events are read back from the subject's
stream: one usage entry per allowed step, one notice per threshold and one per exceeded limit
(however many steps raced past them), and a request id taken once however many processes
send it. Limits fail closed and the timeout is generous, so a slow moment can only deny; no
decision may be degraded.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from model import day_safe_timezone
from processes import run_together
from tollway import Tollway
from tollway.metering.entries import EXCEEDED, THRESHOLD, Notice, decode_entry, stream_key
from tollway.metering.ledger.events import UsageEvent

PROCESSES = 8
TZ = day_safe_timezone()


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail-open journal written here goes to a temporary folder, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _policy(tmp: Path, count: int) -> dict[str, Any]:
    return {
        "store": {"timeout_ms": 5000, "on_error": "closed"},
        "defaults": {"plan": "p"},
        "operations": {"call": {"cost": 1, "price": "0.001 USD"}},
        "plans": {
            "p": {
                "limits": [
                    {
                        "name": "daily",
                        "quota": f"{count}/day",
                        "timezone": TZ,
                        "thresholds": ["50%", "80%", "100%"],
                    }
                ]
            }
        },
        # events on; a Redis store only appends them (the ledger is written by a worker)
        "ledger": {"url": f"sqlite:///{tmp / 'l.db'}"},
    }


@dataclass
class Tally:
    allowed: int
    degraded: int
    duplicates: int
    taken_ids: list[str]
    """The request ids this process was the one to take (not duplicates)."""


def _worker(
    url: str,
    policy: dict[str, Any],
    subject: str,
    attempts: int,
    ids: list[str] | None,
    seed: int,
    barrier: Any,
    results: Any,
) -> None:
    try:
        with Tollway(policy, url) as tw:
            tw.usage(subject)  # connect, load the scripts: the race starts at the barrier
            order = list(ids) if ids is not None else []
            random.Random(seed).shuffle(order)
            barrier.wait()
            allowed = degraded = duplicates = 0
            taken: list[str] = []
            for n in range(len(order) if ids is not None else attempts):
                ident = order[n] if ids is not None else None
                decision = tw.acquire(subject, "call", id=ident)
                degraded += decision.degraded
                allowed += decision.allowed
                if decision.duplicate:
                    duplicates += 1
                elif decision.allowed and ident is not None:
                    taken.append(ident)
            results.put(Tally(allowed, degraded, duplicates, taken))
    except BaseException as exc:  # report it: a silent child would only show as a timeout
        results.put(exc)
        raise


def race(
    url: str,
    policy: dict[str, Any],
    subject: str,
    *,
    attempts: int = 0,
    ids: list[str] | None = None,
) -> list[Tally]:
    """8 processes started together: ``attempts`` acquires in all, or each one every id."""
    share = [attempts // PROCESSES + (i < attempts % PROCESSES) for i in range(PROCESSES)]
    tallies: list[Tally] = run_together(
        _worker, [(url, policy, subject, n, ids, seed) for seed, n in enumerate(share)]
    )
    assert sum(t.degraded for t in tallies) == 0
    return tallies


@dataclass
class Server:
    kind: str
    url: str
    client: Any

    def entries(self, tw: Tollway, subject: str) -> list[UsageEvent | Notice]:
        stream = stream_key(
            subject, cluster=self.kind == "cluster", partitions=tw.policy.ledger.partitions
        )
        out = []
        for entry_id, fields in self.client.xrange(stream):
            event = decode_entry(
                stream, entry_id.decode(), fields, recorded_at_us=1, policy=tw.policy
            )
            if event.subject == subject:
                out.append(event)
        return out


@pytest.fixture(params=["standalone", "cluster"])
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "standalone":
        client = request.getfixturevalue("redis_client")  # flushed
        return Server("standalone", str(request.getfixturevalue("redis_url")), client)
    client = request.getfixturevalue("redis_cluster_client")  # flushed
    return Server("cluster", str(request.getfixturevalue("redis_cluster_url")), client)


def test_racing_steps_append_one_event_per_allowed_step(server: Server, tmp_path: Path) -> None:
    policy = _policy(tmp_path, 200)
    subject = f"acct-{uuid.uuid4().hex[:8]}"
    tallies = race(server.url, policy, subject, attempts=320)
    assert sum(t.allowed for t in tallies) == 200
    with Tollway(policy, server.url) as tw:
        assert tw.usage(subject).limit("daily").used == 200
        entries = server.entries(tw, subject)
    usage = [e for e in entries if isinstance(e, UsageEvent)]
    notices = [e for e in entries if isinstance(e, Notice)]
    assert len(usage) == 200
    assert len({e.id for e in usage}) == 200
    assert all(e.quantity == 1 and e.amount_micros == 1000 for e in usage)
    thresholds = [n for n in notices if n.type == THRESHOLD]
    assert sorted((n.data["threshold"], n.data["used"]) for n in thresholds) == [
        ("0.5", 100),
        ("0.8", 160),
        ("1", 200),
    ]
    exceeded = [n for n in notices if n.type == EXCEEDED]
    assert len(exceeded) == 1
    assert (exceeded[0].data["limit"], exceeded[0].data["used"]) == ("daily", 200)
    assert len(notices) == 4
    # the stream's order is the steps' order: the exceeded notice follows the last usage
    assert entries.index(exceeded[0]) > max(entries.index(e) for e in usage)
    times = [e.occurred_at_us for e in entries]
    assert times == sorted(times)


def test_racing_retries_of_the_same_ids_are_taken_once(server: Server, tmp_path: Path) -> None:
    policy = _policy(tmp_path, 1000)
    policy["ledger"]["max_repeats"] = PROCESSES - 1  # every process's try may pass
    subject = f"acct-{uuid.uuid4().hex[:8]}"
    ids = [f"req-{n:03d}" for n in range(100)]
    tallies = race(server.url, policy, subject, ids=ids)
    assert sum(t.allowed for t in tallies) == PROCESSES * 100  # duplicates are allowed
    assert sum(t.duplicates for t in tallies) == (PROCESSES - 1) * 100
    taken = Counter(i for t in tallies for i in t.taken_ids)
    assert sorted(taken) == ids and set(taken.values()) == {1}  # each by exactly one process
    with Tollway(policy, server.url) as tw:
        assert tw.usage(subject).limit("daily").used == 100
        entries = server.entries(tw, subject)
    usage = [e for e in entries if isinstance(e, UsageEvent)]
    assert len(usage) == 100
    assert sorted(e.id for e in usage) == ids
    assert [e for e in entries if isinstance(e, Notice)] == []  # 10% of the quota: no notice


def test_racing_repeats_stop_at_max_repeats(server: Server, tmp_path: Path) -> None:
    """Issue 11: 8 processes repeating each id; the default ``max_repeats`` (2) holds across
    them: each id passes 3 times, counted once."""
    policy = _policy(tmp_path, 1000)
    subject = f"acct-{uuid.uuid4().hex[:8]}"
    ids = [f"req-{n:03d}" for n in range(50)]
    tallies = race(server.url, policy, subject, ids=ids)
    assert sum(t.allowed for t in tallies) == 3 * 50
    assert sum(t.duplicates for t in tallies) == 2 * 50
    with Tollway(policy, server.url) as tw:
        assert tw.usage(subject).limit("daily").used == 50
        usage = [e for e in server.entries(tw, subject) if isinstance(e, UsageEvent)]
    assert sorted(e.id for e in usage) == ids
