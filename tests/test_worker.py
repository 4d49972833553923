"""`tollway worker` / `tollway.metering.drain.Drain`: the event streams into the ledger, on a
real Redis (standalone and a 3-master cluster), real SQLite and PostgreSQL.

The drain's logic runs in-process with an injected clock and sleep; the crash, restart and
outage tests run the worker as a real process and poll, with deadlines, for the outcome.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from servers import RedisServer
from stream_support import (
    US,
    add,
    add_many,
    events_drained,
    group_pending,
    pg_schema,
    start_worker,
    stop_worker,
    subjects_on_distinct_slots,
    threshold_fields,
    usage_fields,
    wait_for,
    write_policy,
)
from tollway.cli.main import main as cli_main
from tollway.errors import LedgerUnavailableError
from tollway.metering.drain import Backoff, Drain
from tollway.metering.entries import REGISTRY, Notice, stream_key
from tollway.metering.ledger import Ledger, UsageEvent, open_ledger
from tollway.metering.streams import BAD_STREAM, Streams

T0 = 1_717_200_000 * US  # 2024-06-01T00:00:00Z
PARTITIONS = [f"tw:events:{n}" for n in range(16)]


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Crash(Exception):
    """A worker dying between its commit and its acknowledgement."""


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


def make_drain(client: Any, ledger: Ledger | None, **options: Any) -> Drain:
    waits: list[float] = []
    options.setdefault("clock", Clock())
    options.setdefault("sleep", waits.append)
    options.setdefault("block_ms", 0)
    options.setdefault("partitions", 16)
    drain = Drain(client, ledger, **options)
    drain.waits = waits  # type: ignore[attr-defined]
    return drain


def produce(
    client: Any, count: int, *, subjects: int = 7, cluster: bool = False, start: int = 0
) -> list[str]:
    """``count`` usage entries over ``subjects`` subjects, every other one with a request id;
    returns the event ids the ledger must end up with."""
    names = (
        subjects_on_distinct_slots(subjects) if cluster else [f"acct_{n}" for n in range(subjects)]
    )
    ids: list[str] = []
    for n in range(start, start + count):
        subject = names[n % subjects]
        ident = f"req-{n}" if n % 2 else None
        entry_id = add(
            client,
            subject,
            usage_fields(subject, "geocode", 1 + n % 3, T0 + n, ident=ident),
            cluster=cluster,
        )
        key = stream_key(subject, cluster=cluster, partitions=16)
        label = key[4 : key.index("}")] if cluster else key.rsplit(":", 1)[-1]
        ids.append(ident or f"tw-{label}-{entry_id}")
    return ids


def ledger_ids(ledger: Ledger) -> list[str]:
    return sorted(str(row[0]) for row in ledger._fetch("SELECT id FROM usage_events", []))


def quantity(ledger: Ledger, subject: str) -> int:
    totals = ledger.totals(subject, 0, 2**62)
    return sum(t.quantity for t in totals.values())


# =========================================================================== standalone


def test_drains_every_stream_exactly_once(redis_client: redis.Redis, ledger: Ledger) -> None:
    ids = produce(redis_client, 300)
    drain = make_drain(redis_client, ledger)
    stats = drain.run(until_idle=True)
    assert ledger_ids(ledger) == sorted(ids)
    assert stats.events == 300
    assert stats.inserted == 300
    assert stats.bad == stats.claimed == stats.commit_failures == 0
    assert stats.streams == 16
    assert group_pending(redis_client, PARTITIONS) == 0
    # subject n got quantities 1 + i % 3 for its entries i = n, n + 7, ...
    for n in range(7):
        assert quantity(ledger, f"acct_{n}") == sum(1 + i % 3 for i in range(n, 300, 7))


def test_acknowledges_only_after_the_commit_and_retries_the_same_entries(
    redis_client: redis.Redis, ledger: Ledger
) -> None:
    ids = produce(redis_client, 40)
    seen: list[list[str]] = []
    pending_during_failures: list[int] = []

    def commit(events: Any, notices: Any) -> object:
        seen.append(sorted(e.id for e in events))
        if len(seen) <= 3:
            pending_during_failures.append(group_pending(redis_client, PARTITIONS))
            raise LedgerUnavailableError("ledger down (test)")
        return ledger.write(events)

    drain = make_drain(redis_client, ledger, commit=commit, backoff=Backoff(0.5, 1.5))
    stats = drain.run(until_idle=True)
    assert pending_during_failures == [40, 40, 40]  # read, held, not acknowledged
    assert seen[0] == seen[1] == seen[2] == seen[3] == sorted(ids)  # the same entries again
    assert drain.waits == [0.5, 1.0, 1.5]  # type: ignore[attr-defined]
    assert stats.commit_failures == 3
    assert ledger_ids(ledger) == sorted(ids)
    assert group_pending(redis_client, PARTITIONS) == 0


def test_stopped_while_the_ledger_is_down_then_rereads_its_own_pending_entries(
    redis_client: redis.Redis, ledger: Ledger
) -> None:
    ids = produce(redis_client, 25)
    failures = 0

    def down(events: Any, notices: Any) -> object:
        nonlocal failures
        failures += 1
        raise LedgerUnavailableError("ledger down (test)")

    first = make_drain(redis_client, ledger, commit=down, consumer="w1", stop=lambda: failures >= 2)
    first.run_once()
    assert failures == 2
    assert group_pending(redis_client, PARTITIONS) == 25
    assert ledger.count() == 0
    # The same consumer started again reads its own pending entries first (id 0).
    again = make_drain(redis_client, ledger, consumer="w1", claim_idle_ms=3_600_000)
    stats = again.run(until_idle=True)
    assert stats.events == 25
    assert stats.claimed == 0
    assert ledger_ids(ledger) == sorted(ids)
    assert group_pending(redis_client, PARTITIONS) == 0


def test_a_dead_workers_entries_are_claimed(redis_client: redis.Redis, ledger: Ledger) -> None:
    ids = produce(redis_client, 30)

    def crash(events: Any, notices: Any) -> object:
        ledger.write(events)  # committed, then dies before acknowledging
        raise Crash

    dead = make_drain(redis_client, ledger, commit=crash, consumer="dead")
    with pytest.raises(Crash):
        dead.run_once()
    assert group_pending(redis_client, PARTITIONS) == 30
    # Not idle long enough yet: a live worker leaves them.
    patient = make_drain(redis_client, ledger, consumer="patient", claim_idle_ms=3_600_000)
    assert patient.run(until_idle=True).claimed == 0
    assert group_pending(redis_client, PARTITIONS) == 30
    taker = make_drain(redis_client, ledger, consumer="taker", claim_idle_ms=0)
    stats = taker.run(until_idle=True)
    assert stats.claimed == 30
    assert stats.events == 30
    assert stats.inserted == 0  # the dead worker had committed them: the ledger keeps one
    assert ledger_ids(ledger) == sorted(ids)
    assert group_pending(redis_client, PARTITIONS) == 0


def test_malformed_entries_are_parked_acknowledged_and_the_rest_committed(
    redis_client: redis.Redis, ledger: Ledger
) -> None:
    good = produce(redis_client, 10)
    bad_fields: list[dict[Any, Any]] = [
        {"junk": "x"},
        {"k": "u", "t": "1", "d": "not json"},
        {"k": "u", "t": "1", "d": "[1, 2]"},
        {"k": "z", "t": "1", "d": '["a","op","op",1,null,null,"free","v1",[]]'},
        {"k": "u", "t": "1", "d": '["a","op","op",1,null,null,"free","v1",[]]', "a": "{bad"},
        {"k": "u", "t": "1", "d": '["a","op","op","5",null,null,"free","v1",[]]'},
        {"k": "u", "t": "x", "d": '["a","op","op",1,null,null,"free","v1",[]]'},
        {"k": "t", "t": "1", "d": '["a","op","op",1,null,null,"free","v1",[]]'},
        {b"k": b"u", b"t": b"1", b"d": b"\xff\xfe"},
    ]
    bad_ids = [add(redis_client, "acct_0", fields) for fields in bad_fields]
    stats = make_drain(redis_client, ledger).run(until_idle=True)
    assert stats.bad == len(bad_fields)
    assert stats.events == 10
    assert ledger_ids(ledger) == sorted(good)
    assert group_pending(redis_client, PARTITIONS) == 0
    parked = redis_client.xrange(BAD_STREAM)
    assert [fields[b"id"].decode() for _, fields in parked] == bad_ids
    first = parked[0][1]
    assert first[b"stream"] == stream_key("acct_0", cluster=False, partitions=16).encode()
    assert first[b"f:junk"] == b"x"
    assert b"not a tollway event entry" in first[b"reason"]
    assert parked[-1][1][b"f:d"] == b"\xff\xfe"  # the original bytes, as they were
    # Never looping: a second run finds nothing to do.
    assert make_drain(redis_client, ledger).run(until_idle=True).bad == 0
    assert redis_client.xlen(BAD_STREAM) == len(bad_fields)


def test_notices_go_to_the_commit_with_their_window_id(
    redis_client: redis.Redis, ledger: Ledger
) -> None:
    add(redis_client, "acct_1", threshold_fields("acct_1", T0 + 5, T0, T0 + 3600 * US))
    add(redis_client, "acct_1", usage_fields("acct_1", "geocode", 1, T0 + 6, ident="r1"))
    got: list[tuple[list[UsageEvent], list[Notice]]] = []

    def commit(events: Any, notices: Any) -> object:
        got.append((list(events), list(notices)))
        return ledger.write(events)

    stats = make_drain(redis_client, ledger, commit=commit).run(until_idle=True)
    assert stats.notices == 1
    assert stats.events == 1
    [(events, notices)] = got
    assert [e.id for e in events] == ["r1"]
    assert [n.id for n in notices] == [f"thr-acct_1-q:hourly-{T0}-0"]
    assert notices[0].data["used"] == 8


def test_lag_is_now_minus_the_oldest_event_of_the_batch(
    redis_client: redis.Redis, ledger: Ledger
) -> None:
    clock = Clock(T0 + 90 * US)
    add(redis_client, "acct_1", usage_fields("acct_1", "geocode", 1, T0 + 30 * US))
    add(redis_client, "acct_2", usage_fields("acct_2", "geocode", 1, T0 + 85 * US))
    drain = make_drain(redis_client, ledger, clock=clock)
    drain.run_once()
    assert drain.stats().lag_s == 60.0
    assert drain.stats().max_lag_s == 60.0
    drain.run_once()  # idle
    assert drain.stats().lag_s == 0.0
    assert drain.stats().to_dict()["max_lag_s"] == 60.0


def test_idle_consumers_holding_nothing_are_pruned_and_holders_kept(
    redis_client: redis.Redis, ledger: Ledger
) -> None:
    """A killed worker never leaves the group: its name is pruned once it holds nothing; a
    consumer still holding pending entries stays until they are claimed."""
    produce(redis_client, 6, subjects=1)
    key = stream_key("acct_0", cluster=False, partitions=16)
    make_drain(redis_client, ledger, consumer="finished").run(until_idle=True)

    def crash(events: Any, notices: Any) -> object:
        raise Crash

    produce(redis_client, 4, subjects=1, start=100)
    with pytest.raises(Crash):
        make_drain(redis_client, ledger, commit=crash, consumer="holder").run_once()
    names = {_name(c) for c in redis_client.xinfo_consumers(key, "tollway")}
    assert {"finished", "holder"} <= names
    probe = Streams(redis_client, cluster=False, partitions=16, consumer="probe")
    probe.refresh()
    assert probe.prune(3_600_000) == 0  # none idle for an hour yet
    assert probe.prune(0) >= 1
    left = {_name(c): c["pending"] for c in redis_client.xinfo_consumers(key, "tollway")}
    assert "finished" not in left
    assert left["holder"] == 4


def _name(consumer: dict[str, Any]) -> str:
    name = consumer["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def test_trimming_never_removes_an_unacknowledged_entry(
    redis_client: redis.Redis, ledger: Ledger
) -> None:
    clock = Clock()
    produce(redis_client, 20, subjects=1)  # all in acct_0's partition
    key = stream_key("acct_0", cluster=False, partitions=16)
    drain = make_drain(redis_client, ledger, clock=clock, trim_s=5)
    drain.run(until_idle=True)
    assert redis_client.xlen(key) == 20  # not due yet
    clock.now += 5 * US
    drain.run_once()
    assert redis_client.xlen(key) == 0
    assert drain.stats().trimmed == 20

    def crash(events: Any, notices: Any) -> object:
        raise Crash

    produce(redis_client, 5, subjects=1, start=100)
    with pytest.raises(Crash):
        make_drain(redis_client, ledger, commit=crash, consumer="dead").run_once()
    produce(redis_client, 3, subjects=1, start=200)  # delivered to nobody yet
    clock.now += 5 * US
    drain.run_once()  # trims first (keeps all 8), then reads the 3 new ones
    assert redis_client.xlen(key) == 8
    clock.now += 5 * US
    drain.run_once()  # the 3 are acknowledged, but the dead worker's 5 are older
    assert redis_client.xlen(key) == 8  # MINID stops at the oldest pending entry
    taker = make_drain(redis_client, ledger, clock=clock, claim_idle_ms=0, trim_s=0)
    taker.run(until_idle=True)
    taker.run_once()
    assert redis_client.xlen(key) == 0
    assert ledger.count() == 28


def test_a_lost_consumer_group_is_created_again(redis_client: redis.Redis, ledger: Ledger) -> None:
    first = produce(redis_client, 10, subjects=1)
    key = stream_key("acct_0", cluster=False, partitions=16)
    drain = make_drain(redis_client, ledger)
    drain.run(until_idle=True)
    redis_client.xgroup_destroy(key, "tollway")  # what a Redis restarted without data does
    second = produce(redis_client, 10, subjects=1, start=100)
    drain.run(until_idle=True)
    drain.run(until_idle=True)
    assert ledger_ids(ledger) == sorted(first + second)
    # The new group starts from 0: the first 10 came again, and the ledger kept one of each.
    assert drain.stats().events == 30
    assert drain.stats().inserted == 20
    assert group_pending(redis_client, [key]) == 0


def test_cli_refuses_without_a_ledger_or_with_the_memory_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    memory = write_policy(tmp_path / "memory.toml", "memory://", "sqlite:///x.db")
    assert cli_main(["worker", "--config", str(memory)]) == 2
    err = capsys.readouterr().err
    assert "embedded mode" in err
    assert "Traceback" not in err
    nowhere = tmp_path / "nowhere.toml"
    nowhere.write_text(f'[store]\nurl = "{redis_url}"\n')
    assert cli_main(["worker", "--config", str(nowhere)]) == 2
    assert "no [ledger] url" in capsys.readouterr().err


def test_cli_until_idle(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = produce(redis_client, 50)
    config = write_policy(tmp_path / "p.toml", redis_url, f"sqlite:///{tmp_path / 'l.db'}")
    argv = ["worker", "--config", str(config), "--until-idle", "--block-ms", "10"]
    assert cli_main(argv) == 0
    assert events_drained(capsys.readouterr().err) == 50
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as check:
        assert ledger_ids(check) == sorted(ids)


# =========================================================================== cluster


def test_cluster_drain_claim_and_trim(
    redis_cluster_client: redis.cluster.RedisCluster, ledger: Ledger
) -> None:
    client = redis_cluster_client
    clock = Clock()
    ids = produce(client, 120, subjects=12, cluster=True)
    keys = [stream_key(s, cluster=True, partitions=16) for s in subjects_on_distinct_slots(12)]

    def crash(events: Any, notices: Any) -> object:
        raise Crash

    with pytest.raises(Crash):
        make_drain(client, ledger, cluster=True, commit=crash, consumer="dead", batch=50).run_once()
    assert group_pending(client, keys) == 120  # all read at once; the first commit died
    drain = make_drain(client, ledger, cluster=True, clock=clock, claim_idle_ms=0, trim_s=5)
    stats = drain.run(until_idle=True)
    assert stats.streams == 12
    assert stats.claimed == 120
    assert ledger_ids(ledger) == sorted(ids)
    assert group_pending(client, keys) == 0
    clock.now += 5 * US
    drain.run_once()
    assert sum(client.xlen(key) for key in keys) == 0
    assert drain.stats().trimmed == 120
    # A stream registered later is found at the next refresh (every second on the clock).
    late = subjects_on_distinct_slots(13)[-1]
    add(client, late, usage_fields(late, "geocode", 4, T0, ident="late-1"), cluster=True)
    drain.run_once()
    assert ledger.count() == 120
    clock.now += 1 * US
    drain.run(until_idle=True)
    assert drain.stats().streams == 13
    assert ledger.count() == 121
    assert quantity(ledger, late) == 4


# =========================================================================== processes


def test_kill_minus_9_mid_batch_many_times(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    """Workers SIGKILLed at random moments, a new one (another name) taking over each time:
    every event in the ledger exactly once, totals as produced."""
    rng = random.Random(7)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = write_policy(tmp_path / "p.toml", redis_url, ledger_url)
    options = ["--batch", "200", "--block-ms", "50", "--claim-idle-ms", "200", "-q"]
    ids: list[str] = []
    kills = 0
    with open_ledger(ledger_url) as ledger:
        for cycle in range(6):
            ids += produce_batch(redis_client, cycle, 4000)
            before = ledger.count()
            proc = start_worker(config, "--consumer", f"w{cycle}", *options)
            wait_for(lambda b=before: ledger.count() > b, f"worker w{cycle} to commit")
            time.sleep(rng.uniform(0, 0.04))  # a random moment of its run
            if ledger.count() < len(ids):
                kills += 1  # killed with work in hand
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
        final = start_worker(config, "--consumer", "final", *options)
        wait_for(
            lambda: ledger.count() == len(ids) and group_pending(redis_client, PARTITIONS) == 0,
            "the last worker to take over every pending entry",
        )
        code, err = stop_worker(final)
        assert code == 0, err
        assert kills >= 3
        assert ledger_ids(ledger) == sorted(ids)
        for n in range(7):
            produced = sum(
                1 + (i % 4000) % 3
                for c in range(6)
                for i in range(c * 4000, c * 4000 + 4000)
                if i % 7 == n
            )
            assert quantity(ledger, f"acct_{n}") == produced


def produce_batch(client: redis.Redis, cycle: int, count: int) -> list[str]:
    """Entries ``cycle * count ..``, each with its own request id, in one pipeline."""
    events = []
    ids = []
    for i in range(cycle * count, cycle * count + count):
        subject = f"acct_{i % 7}"
        ids.append(f"ev-{i}")
        events.append(
            (
                subject,
                usage_fields(subject, "geocode", 1 + (i % count) % 3, T0 + i, ident=f"ev-{i}"),
            )
        )
    add_many(client, events)
    return ids


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis that keeps every write (AOF, fsync always) across a SIGKILL."""
    server = RedisServer(
        extra_args=["--appendonly", "yes", "--appendfsync", "always"],
        directory=tmp_path / "redis",
    ).start()
    yield server
    server.stop()


def test_redis_restarted_mid_stream(tmp_path: Path, persistent_redis: RedisServer) -> None:
    client = redis.Redis.from_url(persistent_redis.url)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = write_policy(tmp_path / "p.toml", persistent_redis.url, ledger_url)
    ids = produce_batch(client, 0, 3000)
    proc = start_worker(config, "--consumer", "w", "--batch", "100", "--block-ms", "50")
    try:
        with open_ledger(ledger_url) as ledger:
            wait_for(lambda: ledger.count() > 0, "the first commits")
            persistent_redis.kill()
            persistent_redis.start()
            client = redis.Redis.from_url(persistent_redis.url)
            ids += produce_batch(client, 1, 3000)
            wait_for(
                lambda: ledger.count() == len(ids) and group_pending(client, PARTITIONS) == 0,
                "the worker to recover and drain everything",
            )
            code, err = stop_worker(proc)
            assert code == 0, err
            assert "store unavailable" in err
            assert ledger_ids(ledger) == sorted(ids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        client.close()


@pytest.mark.postgres
def test_postgres_down_for_a_while(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_url: str,
    make_postgres_server: Callable[[], Any],
) -> None:
    pg = make_postgres_server()
    config = write_policy(tmp_path / "p.toml", redis_url, pg.url)
    first = produce_batch(redis_client, 0, 2000)
    proc = start_worker(config, "--consumer", "w", "--batch", "250", "--block-ms", "50")
    try:
        with open_ledger(pg.url) as ledger:
            wait_for(lambda: ledger.count() == len(first), "the first entries committed")
            pg.kill()
            second = produce_batch(redis_client, 1, 2000)
            # The batch read is held pending while its commit fails; nothing is acknowledged.
            wait_for(lambda: group_pending(redis_client, PARTITIONS) > 0, "entries held pending")
            probe = Streams(redis_client, cluster=False, partitions=16, consumer="probe")
            probe.discover()
            assert probe.backlog() == len(second)
            assert redis_client.xlen("tw:events:bad") == 0
            pg.start()
            wait_for(lambda: ledger.count() == len(first) + len(second), "the worker to recover")
            wait_for(lambda: group_pending(redis_client, PARTITIONS) == 0, "acknowledgements")
            code, err = stop_worker(proc)
            assert code == 0, err
            assert "ledger unavailable" in err
            assert events_drained(err) == len(first) + len(second)
            assert ledger_ids(ledger) == sorted(first + second)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.postgres
def test_several_workers_at_once_each_event_once(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str, postgres_url: str
) -> None:
    with pg_schema(postgres_url) as url:
        config = write_policy(tmp_path / "p.toml", redis_url, url)
        ids = produce_batch(redis_client, 0, 6000)
        procs = [
            start_worker(config, "--consumer", f"w{n}", "--batch", "100", "--block-ms", "50")
            for n in range(3)
        ]
        try:
            ids += produce_batch(redis_client, 1, 6000)  # while they drain
            with open_ledger(url) as ledger:
                wait_for(lambda: ledger.count() == len(ids), "every event committed")
                wait_for(lambda: group_pending(redis_client, PARTITIONS) == 0, "acks")
                results = [stop_worker(proc) for proc in procs]
                assert [code for code, _ in results] == [0, 0, 0]
                drained = [events_drained(err) for _, err in results]
                # Each entry delivered to one worker only: the counts add up exactly.
                assert sum(drained) == len(ids)
                assert ledger_ids(ledger) == sorted(ids)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()


def test_a_worker_process_drains_real_acquires_on_a_cluster(
    tmp_path: Path, redis_cluster_client: redis.cluster.RedisCluster, redis_cluster_url: str
) -> None:
    """End to end: the step script appends each allowed step's event; a worker process drains
    them; the ledger's totals are the store's counters."""
    from tollway import Tollway

    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = write_policy(tmp_path / "p.toml", redis_cluster_url, ledger_url)
    subjects = subjects_on_distinct_slots(5, prefix="e2e")
    proc = start_worker(config, "--consumer", "w", "--block-ms", "20")
    try:
        with Tollway(config) as tw, open_ledger(ledger_url) as ledger:
            for n in range(200):
                assert tw.acquire(subjects[n % 5], "geocode", 1 + n % 4).allowed
            wait_for(lambda: ledger.count() == 200, "every acquire in the ledger")
            code, err = stop_worker(proc)
            assert code == 0, err
            assert events_drained(err) == 200
            for subject in subjects:
                hourly = tw.usage(subject).limit("hourly")
                assert hourly.window_start is not None
                start = int(hourly.window_start.timestamp()) * US
                assert quantity_since(ledger, subject, start) == hourly.used
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def quantity_since(ledger: Ledger, subject: str, start_us: int) -> int:
    return sum(t.quantity for t in ledger.totals(subject, start_us, 2**62).values())


def test_a_registry_lost_by_redis_is_rebuilt_by_the_worker_and_the_clients(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A Redis restarted without its data loses the set of streams: the worker puts back the
    streams it knew, and every client registers its streams again within a minute."""
    from tollway import Tollway

    doc = {
        "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}"},
        "operations": {"geocode": {"cost": 1}},
        "defaults": {"plan": "free"},
        "plans": {"free": {"limits": [{"name": "daily", "quota": "1000/day"}]}},
    }
    with Tollway(doc, redis_url) as tw:
        assert tw.acquire("acct_registry", "geocode").allowed
        key = stream_key("acct_registry", cluster=False, partitions=16)
        assert redis_client.sismember(REGISTRY, key)
        probe = Streams(redis_client, cluster=False, partitions=16, consumer="probe")
        probe.discover()
        redis_client.delete(REGISTRY)
        assert key in probe.discover()  # still known to the worker...
        assert redis_client.sismember(REGISTRY, key)  # ...and registered again by it
        redis_client.delete(REGISTRY)
        assert tw.acquire("acct_registry", "geocode").allowed
        assert not redis_client.sismember(REGISTRY, key)  # the client registered it already
        tw.store._register_by = 0  # type: ignore[attr-defined]  # a minute later
        assert tw.acquire("acct_registry", "geocode").allowed
        assert redis_client.sismember(REGISTRY, key)
