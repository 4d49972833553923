"""Metering end to end: acquires → the store's event stream (or the embedded queue) → the ledger
→ the billing hooks, every part real and every count exact.

- Redis (standalone, a 3-master cluster) → a real ``tollway worker`` process → SQLite or
  PostgreSQL → a real HTTP receiver; each request verified with the `standardwebhooks` package.
- Embedded mode: the memory store on a `FakeClock`, a SQLite ledger, a callable hook and a
  webhook aggregated per minute (buckets close on the fake clock; webhook timestamps are real).
- A receiver that fails, then recovers; one that always fails, dead-lettered then replayed with
  ``tollway hooks replay --dead``. Retries run on ``schedule = [0, ...]``: no waiting for one.
- A Redis outage under ``on_error = "open"``: the fail-open journal, replayed when Redis is back,
  appends each let-through step's usage event at its original time.
- An acquire retried under one ``id=``: consumed, recorded and delivered once.

The Redis scenarios run once per variant in a module-scoped fixture that takes a snapshot (the
ledger's rows, the hook messages, what the receiver got, the exit status of ``tollway
reconcile``); tests assert on the snapshot, so the ledger's checks and the hooks' are reported
apart. Waits are bounded polls with deadlines; the only real waits are the circuit breaker's
0.2 s cooldown and the worker processes themselves.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
import standardwebhooks

import metering_e2e_support as support
from metering_e2e_support import SECRET_ENV, run_worker, start_worker, stop_worker, write_policy
from model import day_safe_timezone
from servers import RedisServer, parse_cluster_url
from stream_support import pg_schema, subjects_on_distinct_slots, wait_for
from test_webhooks import Received, Receiver
from tollway import Tollway
from tollway.cli.main import main as cli_main
from tollway.metering.entries import EXCEEDED, REGISTRY, THRESHOLD, USAGE
from tollway.metering.ledger import Ledger, open_ledger
from tollway.metering.ledger.outbox import HookMessage
from tollway.metering.ledger.queries import Totals
from tollway.metering.webhooks import generate_secret
from tollway.testing import FakeClock

US = 1_000_000
SECRET = generate_secret()
PRICE = Decimal("0.005")  # USD per geocode unit
QUOTA = 10
ACQUIRES = 13  # per subject: QUOTA allowed, then 3 denied
ALL_TYPES = [USAGE, THRESHOLD, EXCEEDED]


# =========================================================================== helpers


def policy_doc(
    store: str,
    ledger: str,
    hooks: list[dict[str, Any]],
    *,
    tz: str,
    quota: int = QUOTA,
    on_error: str = "closed",
    **store_options: Any,
) -> dict[str, Any]:
    """One plan: a rate, a daily quota with thresholds at 50/80/100 %, a daily budget."""
    return {
        "store": {"url": store, **store_options},
        "defaults": {"plan": "free"},
        "operations": {
            "geocode": {"cost": 1, "price": f"{PRICE} USD"},
            "search": {"cost": 2, "price": "0.002 USD"},
        },
        "plans": {
            "free": {
                "limits": [
                    {"name": "burst", "rate": "1000/s", "burst": 1000, "on_error": on_error},
                    {
                        "name": "daily",
                        "quota": f"{quota}/day",
                        "timezone": tz,
                        "thresholds": ["50%", "80%", "100%"],
                        "on_error": on_error,
                    },
                    {
                        "name": "spend",
                        "budget": "100.00 USD/day",
                        "timezone": tz,
                        "on_error": on_error,
                    },
                ]
            }
        },
        "ledger": {"url": ledger, "flush_ms": 60_000},
        "hooks": hooks,
    }


def webhook(name: str, url: str, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": url,
        "secret_env": SECRET_ENV,
        "events": [USAGE],
        "timeout_ms": 5000,
        **options,
    }


def verified(requests: list[Received]) -> list[dict[str, Any]]:
    """Every request verifies under SECRET with `standardwebhooks`; their payloads."""
    out = []
    for request in requests:
        payload = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
        assert payload == json.loads(request.body)
        assert request.headers["content-type"] == "application/cloudevents+json"
        assert payload["id"] == request.headers["webhook-id"]
        assert payload["specversion"] == "1.0" and payload["source"] == "tollway"
        out.append(payload)
    return out


def ledger_ids(ledger: Ledger) -> list[str]:
    return sorted(str(row[0]) for row in ledger._fetch("SELECT id FROM usage_events", []))


def reconcile(config: Path) -> tuple[int, str]:
    """``tollway reconcile --config F`` in-process: exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["reconcile", "--config", str(config)])
    return code, out.getvalue() + err.getvalue()


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(list(argv))
    return code, out.getvalue()


def flush_cluster(url: str) -> None:
    nodes = [redis.cluster.ClusterNode(h, p) for h, p in parse_cluster_url(url)]
    client = redis.cluster.RedisCluster(startup_nodes=nodes)
    try:
        client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    finally:
        client.close()


@pytest.fixture
def http() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


# =========================================================================== 1. Redis to webhook


@dataclass
class Pipeline:
    """What one run of the pipeline left behind."""

    subjects: list[str]
    allowed: dict[tuple[str, int], bool]
    """(subject, n) → whether acquire n of the subject was allowed."""
    caller_ids: dict[tuple[str, int], str]
    used: dict[str, int]
    spent: dict[str, Decimal]
    ids: list[str]
    totals: dict[str, Totals]
    worker_err: str
    reconciled: tuple[int, str]
    requests: list[Received]
    messages: list[HookMessage]


def _pipeline(tmp: Path, store: str, ledger_url: str, prefix: str) -> Pipeline:
    http = Receiver().start()
    try:
        hook = webhook("billing", http.url, events=ALL_TYPES)
        doc = policy_doc(store, ledger_url, [hook], tz=day_safe_timezone())
        config = write_policy(tmp / "tollway.toml", doc)
        subjects = subjects_on_distinct_slots(2, prefix=prefix)
        allowed: dict[tuple[str, int], bool] = {}
        caller_ids: dict[tuple[str, int], str] = {}
        with Tollway(config) as tw:
            for n in range(ACQUIRES):
                for subject in subjects:
                    ident = f"{subject}-r{n}" if n % 2 else None
                    if ident:
                        caller_ids[subject, n] = ident
                    allowed[subject, n] = tw.acquire(subject, "geocode", id=ident).allowed
            used = {s: tw.usage(s).limit("daily").used for s in subjects}
            spent = {s: tw.usage(s).limit("spend").used for s in subjects}
        worker_err = run_worker(config, secret=SECRET)
        with open_ledger(ledger_url) as ledger:
            ids = ledger_ids(ledger)
            totals = {s: ledger.totals(s, 0, 2**62)["geocode"] for s in subjects}
            messages = ledger.hook_messages(limit=10_000)
        return Pipeline(
            subjects, allowed, caller_ids, used, spent, ids, totals, worker_err,
            reconcile(config), list(http.requests), messages,
        )  # fmt: skip
    finally:
        http.stop()


@pytest.fixture(
    scope="module",
    params=[
        "standalone-sqlite",
        pytest.param("cluster-sqlite", marks=pytest.mark.cluster),
        pytest.param("standalone-postgres", marks=pytest.mark.postgres),
    ],
)
def pipeline(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    kind = str(request.param)
    tmp = tmp_path_factory.mktemp(kind)
    if kind.startswith("cluster"):
        store = str(request.getfixturevalue("redis_cluster_url"))
        flush_cluster(store)
    else:
        store = str(request.getfixturevalue("redis_url"))
        with redis.Redis.from_url(store) as client:
            client.flushall()
    if kind.endswith("postgres"):
        with pg_schema(str(request.getfixturevalue("postgres_url"))) as url:
            yield _pipeline(tmp, store, url, "pg")
    else:
        yield _pipeline(tmp, store, f"sqlite:///{tmp / 'ledger.db'}", kind[:2])


def test_pipeline_ledger_holds_exactly_the_allowed_steps(pipeline: Pipeline) -> None:
    p = pipeline
    for subject in p.subjects:
        got = [p.allowed[subject, n] for n in range(ACQUIRES)]
        assert got == [True] * QUOTA + [False] * (ACQUIRES - QUOTA)
    allowed = sum(p.allowed.values())
    assert allowed == 2 * QUOTA
    assert "20 events (20 new), 8 notices, 0 bad" in p.worker_err, p.worker_err
    assert len(p.ids) == allowed
    # the caller's id where given, else one made from the stream entry
    given = sorted(ident for key, ident in p.caller_ids.items() if p.allowed[key])
    assert [i for i in p.ids if not i.startswith("tw-")] == given
    assert len([i for i in p.ids if i.startswith("tw-")]) == allowed - len(given)
    for subject in p.subjects:
        totals = p.totals[subject]
        assert (totals.events, totals.quantity) == (QUOTA, QUOTA)
        assert totals.quantity == p.used[subject]
        assert totals.amount == p.spent[subject] == PRICE * QUOTA
        assert totals.currency == "USD"
    code, out = p.reconciled
    assert code == 0, out
    assert "0 drifts" in out, out


def test_pipeline_webhook_gets_each_event_and_notice_once(pipeline: Pipeline) -> None:
    p = pipeline
    payloads = verified(p.requests)
    allowed = sum(p.allowed.values())
    notices = 2 * (3 + 1)  # per subject: 3 thresholds, 1 exceeded
    assert len(payloads) == allowed + notices
    counts = Counter(r.headers["webhook-id"] for r in p.requests)
    assert set(counts.values()) == {1}  # nothing sent twice
    usage = [e for e in payloads if e["type"] == USAGE]
    assert sorted(e["id"] for e in usage) == p.ids
    for event in usage:
        data = event["data"]
        assert data["event_id"] == event["id"]
        assert event["subject"] == data["subject"] in p.subjects
        assert (data["meter"], data["quantity"]) == ("geocode", 1)
        assert data["amount"] == "0.005" and data["currency"] == "USD"  # money as strings
        assert data["limits"] == ["burst", "daily", "spend"]
    for subject in p.subjects:
        thresholds = [e for e in payloads if e["type"] == THRESHOLD and e["subject"] == subject]
        assert sorted(e["data"]["threshold"] for e in thresholds) == ["0.5", "0.8", "1"]
        assert sorted(e["data"]["used"] for e in thresholds) == [5, 8, 10]
        exceeded = [e for e in payloads if e["type"] == EXCEEDED and e["subject"] == subject]
        assert len(exceeded) == 1
        (x,) = exceeded
        assert (x["data"]["limit"], x["data"]["kind"], x["data"]["used"]) == ("daily", "quota", 10)
        for event in [*thresholds, *exceeded]:
            assert event["data"]["event_id"] == event["id"]
    assert len(p.messages) == allowed + notices
    assert {m.status for m in p.messages} == {"delivered"}


# =========================================================================== 2. embedded mode


def _acquire(tw: Tollway, clock: FakeClock, plan: list[tuple[str, str, int]]) -> None:
    for subject, operation, cost in plan:
        assert tw.acquire(subject, operation, cost).allowed
        clock.advance(0.25)


def _sums(plan: list[tuple[str, str, int]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(subject, meter) → (quantity, events)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for subject, operation, cost in plan:
        quantity, events = out.get((subject, operation), (0, 0))
        out[subject, operation] = (quantity + cost, events + 1)
    return out


def _buckets(payloads: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for event in payloads:
        assert event["type"] == USAGE
        data = event["data"]
        assert data["aggregate"] == "minute"
        assert (data["subject"], data["meter"]) not in out
        out[data["subject"], data["meter"]] = data
    return out


PRICES = {"geocode": PRICE, "search": Decimal("0.002")}


def _check_buckets(
    payloads: list[dict[str, Any]], plan: list[tuple[str, str, int]], minute_us: int
) -> None:
    buckets = _buckets(payloads)
    sums = _sums(plan)
    assert set(buckets) == set(sums)
    for (subject, meter), (quantity, events) in sums.items():
        data = buckets[subject, meter]
        assert (data["quantity"], data["events"]) == (quantity, events)
        assert isinstance(data["amount"], str)
        assert Decimal(data["amount"]) == PRICES[meter] * quantity
        assert data["currency"] == "USD"
        start = FakeClock(minute_us / US).now.strftime("%Y-%m-%dT%H:%M:%S")
        assert data["window_start"].startswith(start)


def test_embedded_mode_delivers_to_a_callable_and_a_minute_aggregate(
    tmp_path: Path, http: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    support.take_calls()
    minute = int(time.time()) // 60 * 60
    clock = FakeClock(minute + 1)  # 1 s into a minute: every step below stays in it
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    hooks = [
        {"name": "calls", "callable": support.CALLABLE, "events": [USAGE], "schedule": [0, 0]},
        webhook("minutes", http.url, aggregate="minute", schedule=[0, 0]),
    ]
    doc = policy_doc("memory://", ledger_url, hooks, tz=day_safe_timezone(clock()), quota=1000)
    config = write_policy(tmp_path / "tollway.toml", doc)
    a, b = "acct_a", "acct_b"
    first = [(a, "geocode", 1), (a, "geocode", 3), (b, "geocode", 2), (a, "search", 2),
             (b, "search", 5), (b, "geocode", 1), (a, "geocode", 2), (b, "search", 1)]  # fmt: skip
    tw = Tollway(config, clock=clock)
    try:
        _acquire(tw, clock, first)
        assert tw.flush() == len(first)
        with open_ledger(ledger_url) as ledger:
            ids = ledger_ids(ledger)
        assert len(ids) == len(first)
        calls = support.take_calls()
        assert sorted(m.id for m in calls) == ids  # each usage event once
        for message in calls:
            (event,) = message.events()
            assert event["type"] == USAGE and event["id"] == message.id
        assert http.requests == []  # the minute is open: nothing aggregated yet

        # past the minute and the dispatcher's 5 s grace: one message per subject and meter
        clock.set(minute + 60 + 6)
        assert tw.flush() == 0
        assert support.take_calls() == []
        _check_buckets(verified(http.requests), first, minute * US)
        assert len(http.requests) == 4

        # usage in the next minute, then close(): it writes and delivers what is left
        second = [(a, "geocode", 2), (b, "search", 3), (a, "geocode", 1)]
        _acquire(tw, clock, second)
        clock.set(minute + 120 + 6)
    finally:
        tw.close()
    with open_ledger(ledger_url) as ledger:
        assert ledger.count() == len(first) + len(second)
        later = sorted(set(ledger_ids(ledger)) - set(ids))
        statuses = Counter((m.hook, m.status) for m in ledger.hook_messages(limit=1000))
    assert sorted(m.id for m in support.take_calls()) == later
    _check_buckets(verified(http.requests[4:]), second, (minute + 60) * US)
    assert len(set(http.ids())) == len(http.requests) == 6
    assert statuses == Counter({("calls", "delivered"): 11, ("minutes", "delivered"): 6})


# =========================================================================== 3. failing receivers


def test_a_failing_receiver_gets_everything_and_a_dead_one_is_replayed(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    flaky, down = Receiver().start(), Receiver().start()
    try:
        failures = 3
        flaky.answer(*[("status", 500)] * failures)  # then 200s
        down.answer(default=("status", 500))
        hooks = [
            webhook("flaky", flaky.url, schedule=[0, 0, 0, 0]),
            webhook("down", down.url, schedule=[0, 0]),
        ]
        ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
        doc = policy_doc(redis_url, ledger_url, hooks, tz=day_safe_timezone(), quota=1000)
        config = write_policy(tmp_path / "tollway.toml", doc)
        count = 5
        with Tollway(config) as tw:
            for n in range(count):
                assert tw.acquire("acct_f", "geocode", id=f"f-{n}").allowed
        ids = [f"f-{n}" for n in range(count)]

        def statuses(ledger: Ledger) -> Counter[tuple[str, str]]:
            return Counter((m.hook, m.status) for m in ledger.hook_messages(limit=1000))

        def attempted(ledger: Ledger) -> bool:
            return any(m.attempts for m in ledger.hook_messages(limit=1000))

        expected = Counter({("flaky", "delivered"): count, ("down", "dead"): count})
        proc = start_worker(config, "--consumer", "w1", secret=SECRET)
        try:
            with open_ledger(ledger_url) as ledger:
                # a first attempt soon (bounded short: nothing else is worth waiting for), then
                # every retry on the [0, ...] schedules, one per worker cycle
                wait_for(lambda: attempted(ledger), "a first attempt", 5)
                wait_for(lambda: statuses(ledger) == expected, "flaky delivered, down dead", 15)
        finally:
            stop_worker(proc)

        # the flaky receiver: each message delivered once, after `failures` 500s in all
        verified(flaky.requests)
        assert len(flaky.requests) == count + failures
        assert sorted(set(flaky.ids())) == ids
        with open_ledger(ledger_url) as ledger:
            for message in ledger.hook_messages(hook="flaky", limit=1000):
                outcomes = [a.outcome for a in message.attempts]
                assert outcomes.count("delivered") == 1 and outcomes[-1] == "delivered"
            assert (
                sum(len(m.attempts) for m in ledger.hook_messages(hook="flaky", limit=1000))
                == count + failures
            )
        # the dead one: two attempts each (schedule = [0, 0]), then dead
        assert Counter(down.ids()) == Counter(dict.fromkeys(ids, 2))
        assert cli("hooks", "list", "--config", str(config), "--status", "pending") == (
            0,
            "no hook messages\n",
        )
        code, listed = cli("hooks", "list", "--config", str(config), "--status", "dead")
        assert code == 0
        rows = [line for line in listed.splitlines() if line.startswith("f-")]
        assert sorted(line.split()[0] for line in rows) == ids
        assert all(line.split()[1] == "down" for line in rows)

        # the receiver recovers; replay --dead, and a worker pass delivers each once more
        down.answer()
        before = list(down.requests)
        code, out = cli("hooks", "replay", "--config", str(config), "--dead")
        assert code == 0 and f"replaying {count} messages" in out, out
        run_worker(config, "--consumer", "w2", secret=SECRET)
        again = down.requests[len(before) :]
        verified(again)
        assert sorted(r.headers["webhook-id"] for r in again) == ids
        bodies = {r.headers["webhook-id"]: r.body for r in before}
        assert all(bodies[r.headers["webhook-id"]] == r.body for r in again)  # same bytes
        assert cli("hooks", "list", "--config", str(config), "--status", "dead") == (
            0,
            "no hook messages\n",
        )
        with open_ledger(ledger_url) as ledger:
            assert statuses(ledger) == Counter(
                {("flaky", "delivered"): count, ("down", "delivered"): count}
            )
    finally:
        flaky.stop()
        down.stop()


# =========================================================================== 4. fail-open journal


def _journal_lines(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(
        1
        for path in folder.glob("*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    )


def _stream_entries(client: redis.Redis) -> list[tuple[int, dict[str, str]]]:
    """(append time in us, fields) of every entry of every registered event stream."""
    out = []
    for key in sorted(k.decode() for k in client.smembers(REGISTRY)):
        for entry_id, fields in client.xrange(key):
            ms = int(entry_id.decode().split("-")[0])
            out.append((ms * 1000, {k.decode(): v.decode() for k, v in fields.items()}))
    return out


def _now_us() -> int:
    return time.time_ns() // 1000


def test_fail_open_journal_replay_appends_the_events_at_their_time(
    tmp_path: Path, make_redis_server: Callable[[], RedisServer]
) -> None:
    server = make_redis_server()
    journal = tmp_path / "journal"
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    doc = policy_doc(
        server.url, ledger_url, [], tz=day_safe_timezone(), quota=100_000, on_error="open",
        timeout_ms=50, breaker_failures=2, breaker_cooldown_ms=200, journal=str(journal),
    )  # fmt: skip
    del doc["hooks"]
    config = write_policy(tmp_path / "tollway.toml", doc)
    subject = "acct_open"
    journaled: list[tuple[str | None, int, int]] = []  # (caller id, before, after)
    with Tollway(config) as tw:
        for n in range(4):
            decision = tw.acquire(subject, "geocode", id=f"b-{n}" if n % 2 else None)
            assert decision.allowed and not decision.degraded
        with redis.Redis.from_url(server.url) as client:
            client.save()  # the restarted server starts from this
        server.kill()

        for n in range(6):
            ident = f"o-{n}" if n % 2 == 0 else None
            before = _now_us()
            decision = tw.acquire(subject, "geocode", id=ident)
            journaled.append((ident, before, _now_us()))
            assert decision.allowed and decision.degraded
        assert _journal_lines(journal) == 6
        restarted_us = _now_us()
        server.start()

        # acquire until the store decides again (its breaker's cooldown is 0.2 s)
        deadline = time.monotonic() + 5
        for n in range(1000):
            ident = f"p-{n}"
            before = _now_us()
            decision = tw.acquire(subject, "geocode", id=ident)
            assert decision.allowed
            if not decision.degraded:
                recovered = ident
                break
            journaled.append((ident, before, _now_us()))
            assert time.monotonic() < deadline, "the store was not used again within 5 s"
            time.sleep(0.02)
        assert tw.store.wait_replayed(10)  # in the background, after that call
        assert _journal_lines(journal) == 0  # replayed, then emptied
        total = 4 + len(journaled) + 1

        with redis.Redis.from_url(server.url) as client:
            entries = [(at, f) for at, f in _stream_entries(client) if f["k"] == "u"]
        assert len(entries) == total
        by_id = {f.get("i"): (at, f) for at, f in entries}
        assert {"b-1", "b-3", recovered} <= set(by_id)
        replayed = [(at, f) for at, f in entries if f.get("i") in {i for i, _, _ in journaled if i}]
        made = sorted((int(f["t"]), at, f) for at, f in entries if f.get("i", "").startswith("jr_"))
        assert len(replayed) == sum(1 for i, _, _ in journaled if i)
        assert len(made) == sum(1 for i, _, _ in journaled if i is None)
        for ident, before, after in journaled:
            if ident is not None:
                at, fields = by_id[ident]
                assert before <= int(fields["t"]) <= after  # when it happened
                if ident.startswith("o-"):
                    assert int(fields["t"]) < restarted_us <= at  # appended at the replay
        brackets = sorted((b, a) for i, b, a in journaled if i is None)
        for (occurred, at, _), (before, after) in zip(made, brackets, strict=True):
            assert before <= occurred <= after < restarted_us <= at

        run_worker(config, secret=None)
        with open_ledger(ledger_url) as ledger:
            assert ledger.count() == total
            ids = set(ledger_ids(ledger))
            totals = ledger.totals(subject, 0, 2**62)["geocode"]
            occurred = dict(ledger._fetch("SELECT id, occurred_at_us FROM usage_events", []))
        for ident, before, after in journaled:
            if ident is not None:
                assert before <= int(occurred[ident]) <= after  # the ledger keeps that time
        assert {i for i, _, _ in journaled if i} <= ids
        assert len([i for i in ids if i.startswith("jr_")]) == len(made)
        usage = tw.usage(subject)
        assert totals.events == totals.quantity == usage.limit("daily").used == total
        assert totals.amount == usage.limit("spend").used == PRICE * total
        # A retry of a request let through while Redis was away is a duplicate now.
        assert tw.acquire(subject, "geocode", id="o-0").duplicate
        assert tw.usage(subject).limit("daily").used == total
    code, out = reconcile(config)
    assert code == 0, out
    assert "0 drifts" in out, out


# =========================================================================== 5. idempotent retries


@dataclass
class Retried:
    decisions: list[Any]
    used: int
    ids: list[str]
    reconciled: tuple[int, str]
    requests: list[Received]


@pytest.fixture(scope="module")
def retried(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Retried:
    tmp = tmp_path_factory.mktemp("retried")
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    http = Receiver().start()
    try:
        ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
        doc = policy_doc(
            redis_url, ledger_url, [webhook("billing", http.url)], tz=day_safe_timezone()
        )
        config = write_policy(tmp / "tollway.toml", doc)
        with Tollway(config) as tw:
            decisions = [tw.acquire("acct_retry", "geocode", id="req-1") for _ in range(3)]
            used = tw.usage("acct_retry").limit("daily").used
        run_worker(config, secret=SECRET)
        with open_ledger(ledger_url) as ledger:
            ids = ledger_ids(ledger)
        return Retried(decisions, used, ids, reconcile(config), list(http.requests))
    finally:
        http.stop()


def test_a_retried_acquire_is_consumed_and_recorded_once(retried: Retried) -> None:
    first, *again = retried.decisions
    assert first.allowed and not first.duplicate
    assert [d.duplicate for d in again] == [True, True]
    assert retried.used == 1
    assert retried.ids == ["req-1"]
    code, out = retried.reconciled
    assert code == 0, out


def test_a_retried_acquire_is_delivered_once(retried: Retried) -> None:
    (payload,) = verified(retried.requests)
    assert payload["id"] == payload["data"]["event_id"] == "req-1"
    assert payload["data"]["amount"] == "0.005"


def test_embedded_flush_delivers_every_due_message_not_one_batch(tmp_path: Path) -> None:
    """More hook messages than one dispatcher pass takes (100): one flush sends them all."""
    support.take_calls()
    doc = {
        "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}", "flush_ms": 60_000},
        "operations": {"geocode": {"cost": 1}},
        "defaults": {"plan": "free"},
        "plans": {"free": {"limits": [{"name": "daily", "quota": "1000/day"}]}},
        "hooks": [{"name": "calls", "callable": support.CALLABLE, "schedule": [0]}],
    }
    clock = FakeClock()
    with Tollway(doc, clock=clock) as tw:
        for i in range(250):
            assert tw.acquire(f"acct_{i % 3}", "geocode").allowed
        assert tw.flush() == 250
        delivered = support.take_calls()
        assert len(delivered) == 250
        assert len({message.id for message in delivered}) == 250
