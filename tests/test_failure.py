"""When Redis fails: bounded latency, a circuit breaker, fail-open / fail-closed decisions, and
a journal of what fail-open let through, replayed exactly once when Redis is back.

Every test runs its own redis-server (``make_redis_server``) and stops it mid-run. The store is
configured with ``timeout_ms=50, breaker_failures=2, breaker_cooldown_ms=200``. The breaker's
clock is the system clock, so waiting for its cooldown is a short real wait: a poll every 20 ms,
for at most 5 s (a cooldown, not a limit's window).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from model import day_safe_timezone
from servers import RedisServer
from tollway import AsyncTollway, Tollway

COOLDOWN_S = 0.2
OPEN, CLOSED = "acct-open", "acct-closed"


def _policy(url: str, journal: Path) -> dict[str, Any]:
    tz = day_safe_timezone()
    return {
        "store": {
            "url": url,
            "timeout_ms": 50,
            "breaker_failures": 2,
            "breaker_cooldown_ms": int(COOLDOWN_S * 1000),
            "journal": str(journal),
        },
        "defaults": {"plan": "lenient"},
        "operations": {"call": {"cost": 1}},
        "plans": {
            "lenient": {
                "limits": [
                    {"name": "calls", "quota": "100000/day", "timezone": tz, "on_error": "open"}
                ]
            },
            "strict": {
                "limits": [
                    {"name": "guarded", "quota": "100000/day", "timezone": tz, "on_error": "closed"}
                ]
            },
        },
    }


def _journal_lines(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(
        1
        for path in folder.glob("*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    )


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _until_recovered(acquire: Callable[[], Any]) -> tuple[Any, list[Any]]:
    """Acquire every 20 ms until the store answers again (at most 5 s); returns the first
    decision the store took and the degraded ones before it."""
    degraded = []
    deadline = time.perf_counter() + 5
    while True:
        decision = acquire()
        if not decision.degraded:
            return decision, degraded
        degraded.append(decision)
        assert time.perf_counter() < deadline, "the store was not used again within 5 s"
        time.sleep(0.02)


def _saved(server: RedisServer) -> None:
    """Persist the dataset, so the restarted server starts from what it had (an RDB file)."""
    with redis.Redis.from_url(server.url) as client:
        client.save()


def test_outage_fail_open_fail_closed_journal_and_replay(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    server = make_redis_server()
    folder = tmp_path / "journal"
    policy = _policy(server.url, folder)
    tw = Tollway(policy)
    tw.assign(CLOSED, "strict")

    # -- before: the store decides
    for _ in range(10):
        assert tw.acquire(OPEN, "call").allowed
    for _ in range(5):
        assert tw.acquire(CLOSED, "call").allowed
    _saved(server)
    server.kill()

    # -- the outage
    opened, closed, latencies = [], [], []
    for _ in range(30):
        decision, took = _timed(lambda: tw.acquire(OPEN, "call"))
        opened.append(decision)
        latencies.append(took)
        decision, took = _timed(lambda: tw.acquire(CLOSED, "call"))
        closed.append(decision)
        latencies.append(took)
    assert all(d.allowed and d.degraded for d in opened)
    assert all(d.reason for d in opened)
    assert all(not d.allowed and d.degraded for d in closed)
    assert all("guarded" in d.reason for d in closed), closed[0].reason
    assert [d.retry_after for d in closed if not d.retry_after or d.retry_after <= 0] == []
    assert _p99(latencies) < 0.5
    # after the breaker opened (2 failures), calls skip the network: all of them fast
    assert max(latencies[2:]) < 0.25, latencies
    assert sum(latencies) < 2.0

    # the journal holds exactly what fail-open let through, on disk, during the outage
    assert _journal_lines(folder) == len(opened)
    copy = tmp_path / "journal-copy"
    shutil.copytree(folder, copy)

    # -- back: same port, same data (the RDB written before the outage)
    server.start()
    first, polls = _until_recovered(lambda: tw.acquire(OPEN, "call"))
    assert first.allowed
    assert all(d.allowed for d in polls)
    degraded_allowed = len(opened) + len(polls)
    assert tw.store.wait_replayed(10)  # in the background, not in a caller's acquire
    usage = tw.usage(OPEN).limit("calls")
    assert usage.used == 10 + degraded_allowed + 1
    assert tw.usage(CLOSED).limit("guarded").used == 5  # fail-closed let nothing through
    assert _journal_lines(folder) == 0  # replayed, then emptied
    assert tw.acquire(CLOSED, "call").allowed
    tw.close()

    # -- replaying the same entries again counts nothing twice
    for path in copy.glob("*.jsonl"):
        shutil.copy(path, folder / f"again-{path.name}")
    assert _journal_lines(folder) == len(opened)
    with Tollway(policy) as again:
        assert again.store.wait_replayed(10)
        assert again.usage(OPEN).limit("calls").used == 10 + degraded_allowed + 1
        assert again.acquire(OPEN, "call").allowed
        assert again.usage(OPEN).limit("calls").used == 10 + degraded_allowed + 2
    assert _journal_lines(folder) == 0
    with Tollway(policy) as third:  # a later instance on the same folder finds nothing
        assert third.usage(OPEN).limit("calls").used == 10 + degraded_allowed + 2


def test_hung_server_costs_one_timeout_per_cooldown(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """A server that accepts but never answers (SIGSTOP): every call is bounded by the
    timeout, and while the breaker is open calls do not wait on the network at all."""
    server = make_redis_server()
    folder = tmp_path / "journal"
    tw = Tollway(_policy(server.url, folder))
    for _ in range(5):
        assert tw.acquire(OPEN, "call").allowed
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        latencies = []
        started = time.perf_counter()
        while time.perf_counter() - started < 1.0:  # about 5 cooldowns
            decision, took = _timed(lambda: tw.acquire(OPEN, "call"))
            assert decision.allowed and decision.degraded
            latencies.append(took)
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert _p99(latencies) < 0.5
    assert max(latencies) < 0.5
    waited = [t for t in latencies if t >= 0.04]  # calls that waited for a timeout
    # two failures open the breaker, then one probe per cooldown at most
    assert 2 <= len(waited) <= 2 + math.ceil(elapsed / COOLDOWN_S) + 3, waited
    assert len(latencies) > 10 * len(waited)
    degraded_allowed = len(latencies)

    first, polls = _until_recovered(lambda: tw.acquire(OPEN, "call"))
    assert first.allowed
    degraded_allowed += len(polls)
    # every allowed call counted exactly once: the journaled ones are replayed, and a step
    # that timed out must not also have been counted by the server
    assert tw.store.wait_replayed(10)
    used = tw.usage(OPEN).limit("calls").used
    expected = 5 + degraded_allowed + 1
    assert used == expected, f"{used - expected} timed-out step(s) counted twice"
    tw.close()


async def test_async_outage_and_replay(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    server = make_redis_server()
    folder = tmp_path / "journal"
    async with AsyncTollway(_policy(server.url, folder)) as tw:
        await tw.assign(CLOSED, "strict")
        for _ in range(4):
            assert (await tw.acquire(OPEN, "call")).allowed
        assert (await tw.acquire(CLOSED, "call")).allowed
        _saved(server)
        server.kill()

        latencies = []
        opened = []
        for _ in range(10):
            start = time.perf_counter()
            decision = await tw.acquire(OPEN, "call")
            denied = await tw.acquire(CLOSED, "call")
            latencies.append(time.perf_counter() - start)
            assert decision.allowed and decision.degraded and decision.reason
            assert not denied.allowed and denied.degraded and "guarded" in denied.reason
            assert denied.retry_after is not None and denied.retry_after > 0
            opened.append(decision)
        assert max(latencies) < 0.5
        assert _journal_lines(folder) == len(opened)

        server.start()
        polls = 0
        deadline = time.perf_counter() + 5
        while True:
            decision = await asyncio.wait_for(tw.acquire(OPEN, "call"), timeout=5)
            if not decision.degraded:
                break
            polls += 1
            assert time.perf_counter() < deadline
            await asyncio.sleep(0.02)
        assert await tw.store.wait_replayed_async(10)
        usage = await asyncio.wait_for(tw.usage(OPEN), timeout=5)
        assert usage.limit("calls").used == 4 + len(opened) + polls + 1
        assert (await tw.usage(CLOSED)).limit("guarded").used == 1
        assert _journal_lines(folder) == 0


@pytest.mark.parametrize("failures", [1, 3])
def test_breaker_opens_after_the_configured_failures(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path, failures: int
) -> None:
    """Fail-closed denials say how long to wait, from the very first failed call."""
    server = make_redis_server()
    policy = _policy(server.url, tmp_path / "journal")
    policy["store"]["breaker_failures"] = failures
    policy["defaults"]["plan"] = "strict"
    with Tollway(policy) as tw:
        assert tw.acquire(CLOSED, "call").allowed
        server.kill()
        denials = [tw.acquire(CLOSED, "call") for _ in range(failures + 3)]
        assert all(not d.allowed and d.degraded for d in denials)
        assert [d.retry_after for d in denials if not d.retry_after or d.retry_after <= 0] == []
        server.start()
        first, _ = _until_recovered(lambda: tw.acquire(CLOSED, "call"))
        assert first.allowed
        # the data did not survive the crash (no persistence): only the new call counts
        assert tw.usage(CLOSED).limit("guarded").used == 1


def test_a_torn_journal_line_does_not_break_acquires(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """A process that dies mid-append (or a full disk) leaves a partial last line; the complete
    entries must still be replayed once, and acquires must keep answering."""
    server = make_redis_server()
    folder = tmp_path / "journal"
    tw = Tollway(_policy(server.url, folder))
    assert tw.acquire(OPEN, "call").allowed
    _saved(server)
    server.kill()
    journaled = [tw.acquire(OPEN, "call") for _ in range(3)]
    assert all(d.allowed and d.degraded for d in journaled)
    [path] = folder.glob("*.jsonl")
    whole = path.read_text(encoding="utf-8")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(whole.splitlines()[0][:40])  # the torn append: no closing brace, no \n

    server.start()
    first, polls = _until_recovered(lambda: tw.acquire(OPEN, "call"))
    assert first.allowed
    after = [tw.acquire(OPEN, "call") for _ in range(2)]
    assert all(d.allowed and not d.degraded for d in after)
    assert tw.store.wait_replayed(10)
    assert tw.usage(OPEN).limit("calls").used == 1 + 3 + len(polls) + 1 + 2
    tw.close()


def test_reservations_during_an_outage_count_the_actual_cost_once(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """A reservation taken before the outage and committed during it, and one taken and
    committed during it: each ends counted at its actual cost, once; a release during the
    outage costs nothing."""
    server = make_redis_server()
    folder = tmp_path / "journal"
    policy = _policy(server.url, folder)
    policy["store"]["hold_ttl_ms"] = 300
    tw = Tollway(policy)
    before = tw.reserve(OPEN, "call", 5)
    assert before.allowed and not before.decision.degraded
    _saved(server)
    server.kill()

    during = tw.reserve(OPEN, "call", 4)
    assert during.allowed and during.decision.degraded
    committed_before = before.commit(2)  # the store is away: journaled at the actual cost
    assert committed_before.degraded
    committed_during = during.commit(3)
    assert committed_during.degraded
    released = tw.reserve(OPEN, "call", 7)
    released.release()  # nothing held anywhere, nothing to give back
    assert _journal_lines(folder) == 2

    server.start()
    time.sleep(0.35)  # the pre-outage hold's ttl (a reservation's expiry, not a window)
    first, polls = _until_recovered(lambda: tw.acquire(OPEN, "call"))
    assert first.allowed
    assert tw.store.wait_replayed(10)
    used = tw.usage(OPEN).limit("calls").used
    assert used == 2 + 3 + len(polls) + 1, used
    assert _journal_lines(folder) == 0
    tw.close()


async def test_async_hung_server_is_bounded_by_the_watchdog(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """asyncio calls carry no per-read timer: the deadline watchdog must still bound a call to
    a server that accepts and never answers, and count every allowed call exactly once."""
    server = make_redis_server()
    folder = tmp_path / "journal"
    async with AsyncTollway(_policy(server.url, folder)) as tw:
        for _ in range(3):
            assert (await tw.acquire(OPEN, "call")).allowed
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            stalled = await asyncio.gather(*(tw.acquire(OPEN, "call") for _ in range(5)))
            took = time.perf_counter() - started
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert all(d.allowed and d.degraded for d in stalled)
        assert took < 0.5  # about 1.5 timeouts (75 ms), not forever
        deadline = time.perf_counter() + 5
        while (first := await tw.acquire(OPEN, "call")).degraded:
            stalled.append(first)
            assert time.perf_counter() < deadline
            await asyncio.sleep(0.02)
        assert await tw.store.wait_replayed_async(10)
        used = (await tw.usage(OPEN)).limit("calls").used
        assert used == 3 + len(stalled) + 1


def test_a_step_journaled_while_its_own_journal_is_replayed_does_not_wait_for_ever(
    tmp_path: Path,
) -> None:
    """An asyncio store replays its journal between awaits; a fail-open step of another task
    journaled meanwhile must not wait on the replay's lock of that same file (it would hang
    the event loop for ever): it goes to a new file, which the next replay sends."""
    import threading

    from tollway.stores.journal import Journal, JournalEntry

    def entry(n: int) -> JournalEntry:
        return JournalEntry(f"e{n}", "acct", n, ("c",), (False,), (1,), (0,), (60_000_000,))

    journal = Journal(tmp_path / "journal")
    journal.append(entry(1))
    claims = journal.claim()
    claim = next(claims)  # the replay holds the file's lock now
    assert [e.id for e in claim.entries] == ["e1"]
    done = threading.Event()
    worker = threading.Thread(target=lambda: (journal.append(entry(2)), done.set()), daemon=True)
    worker.start()
    assert done.wait(timeout=10), "append waited on its own process's replay"
    claim.done = 1  # replayed
    with contextlib.suppress(StopIteration):
        next(claims)  # the replay ends: what it replayed is cut from the claimed file
    sent: list[str] = []
    assert journal.replay(lambda e: sent.append(e.id) or 0.0) == (1, 0.0)
    assert sent == ["e2"]  # nothing lost, nothing sent twice
    assert journal.replay(lambda e: sent.append(e.id) or 0.0) == (0, 0.0)


def test_a_step_late_every_time_is_decided_without_the_store_and_counted_once(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """A step that reaches Redis after its deadline is applied nowhere and sent again; late
    every time, even with Redis's clock learnt, it is decided by on_error (not an error out
    of the engine): fail-open is let through and journaled, fail-closed refused, and the
    journal counts the let-through step exactly once when steps arrive in time again."""
    from tollway.stores.redis_codec import state_key

    server = make_redis_server()
    policy = _policy(server.url, tmp_path / "journal")
    late = {"on": True, "lag_us": 0}

    def clock() -> int:
        # A client clock 10 s behind Redis and falling one more second behind at each look:
        # every deadline computed from it (4/5 of the 50 ms timeout) has passed on arrival.
        now = time.time_ns() // 1000
        if not late["on"]:
            return now
        late["lag_us"] += 1_000_000
        return now - 10_000_000 - late["lag_us"]

    tw = Tollway(policy, clock=clock)
    tw.assign(CLOSED, "strict")
    opened = tw.acquire(OPEN, "call")
    closed = tw.acquire(CLOSED, "call")
    assert opened.allowed and opened.degraded
    assert not closed.allowed and closed.degraded
    raw = redis.Redis.from_url(server.url)
    assert tw.store.wait_replayed(10)
    # The late steps applied nothing; the let-through one is in the journal, replayed once
    # Redis answered a call (the refused step's, late as it was): counted exactly once.
    assert raw.hget(state_key(OPEN), "q:calls") == b"1"
    assert set(raw.hgetall(state_key(CLOSED))) <= {b"plan"}
    tw.close()

    late["on"] = False
    again = Tollway(policy)
    assert again.acquire(OPEN, "call").allowed  # in time: the journal is replayed too
    assert again.store.wait_replayed(10)
    assert again.usage(OPEN).limit("calls").used == 2  # the let-through step, once, and this one
    assert again.usage(CLOSED).limit("guarded").used == 0  # the refused step counted nowhere
    again.close()
    raw.close()
