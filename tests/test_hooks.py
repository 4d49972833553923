"""Billing hooks end to end: `Ledger.commit` enqueues, `Dispatcher` delivers.

Real parts: an HTTP receiver on 127.0.0.1 (`test_webhooks.Receiver`, scripted per request),
SQLite files and a real PostgreSQL (a schema of its own per test), a real redis-server for the
stream sink. Every webhook received is verified with the `standardwebhooks` package. Schedules
run on a fake clock that only moves when a test moves it; the http's hangs against a 0.2 s
attempt timeout are the only real waits.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import standardwebhooks

from test_ledger import _with_search_path
from test_webhooks import Receiver
from tollway.errors import ConfigurationError, InvalidArgumentError, InvalidUsageEventError
from tollway.metering.cloudevents import BATCH_CONTENT_TYPE, CONTENT_TYPE, decode, decode_batch
from tollway.metering.entries import EXCEEDED, THRESHOLD, USAGE, Notice
from tollway.metering.hooks import Dispatcher
from tollway.metering.ledger import Ledger, PostgresLedger, UsageEvent, open_ledger
from tollway.metering.ledger.events import ATTRIBUTES_MAX_BYTES
from tollway.metering.sinks import CallableSink, Message
from tollway.metering.webhooks import generate_secret
from tollway.policy import load
from tollway.policy.model import HookConfig

US = 1_000_000
T0 = int(time.time()) // 3600 * 3600 * US  # an hour boundary near now (webhook timestamps
# are real time and receivers check them within 5 minutes)
SECRET = generate_secret()
ENV = {"HOOK_SECRET": SECRET}


class Clock:
    """Microseconds since the epoch that move only when told to."""

    def __init__(self, start_us: int = T0) -> None:
        self.now_us = start_us

    def __call__(self) -> int:
        return self.now_us

    def to_us(self, at_us: int) -> None:
        assert at_us >= self.now_us
        self.now_us = at_us


def ev(
    n: int, *, subject: str = "acct_1", meter: str = "geocode", at: int = 0, **kw: Any
) -> UsageEvent:
    values: dict[str, Any] = {
        "id": f"evt-{n}",
        "subject": subject,
        "operation": meter,
        "meter": meter,
        "quantity": 3,
        "occurred_at_us": T0 + at,
        "recorded_at_us": T0 + at + 10,
        "amount_micros": 15_000,
        "currency": "USD",
        "plan": "pro",
        "policy_version": "v1",
        "limits": ("burst", "daily"),
        "attributes": {"region": "eu"},
    }
    values.update(kw)
    return UsageEvent(**values)


def webhook(url: str, **kw: Any) -> HookConfig:
    values: dict[str, Any] = {
        "name": "billing",
        "kind": "url",
        "path": "hooks[0]",
        "url": url,
        "secret_env": "HOOK_SECRET",
        # The whole attempt: room for a loaded machine (the hang tests set 200 ms).
        "timeout_ms": 1000,
        "schedule": (0.0, 5.0, 60.0, 300.0, 3600.0),
    }
    values.update(kw)
    return HookConfig(**values)


def dispatcher(ledger: Ledger, hooks: list[HookConfig], clock: Clock, **kw: Any) -> Dispatcher:
    return Dispatcher(ledger, hooks, clock=clock, env=ENV, rng=lambda: 0.0, jitter=0.0, **kw)


def drain(d: Dispatcher, clock: Clock, *, rounds: int = 50) -> int:
    """Run the dispatcher, moving the clock to each next due time, until nothing is pending."""
    attempts = 0
    for _ in range(rounds):
        attempts += d.run_once()
        due = d.next_due_us()
        if due is None:
            return attempts
        clock.to_us(max(due, clock()))
    raise AssertionError("still pending after every round")


def verify_all(http: Receiver) -> list[dict[str, Any]]:
    """Every request verifies under SECRET with standardwebhooks; their JSON payloads."""
    payloads = []
    for request in http.requests:
        payload = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
        assert payload == json.loads(request.body)
        payloads.append(payload)
    return payloads


@pytest.fixture
def http() -> Iterator[Receiver]:
    """A scripted webhook receiver on 127.0.0.1 (see `test_webhooks.Receiver`)."""
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A schema of its own in the session's PostgreSQL, dropped afterwards."""
    schema = f"h_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield _with_search_path(postgres_url, schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with open_ledger(ledger_url) as opened:
        yield opened


# =========================================================================== delivery


def test_a_receiver_that_fails_then_recovers_gets_each_message_once(
    ledger: Ledger, http: Receiver
) -> None:
    clock = Clock()
    hook = webhook(http.url, timeout_ms=200)
    result = ledger.commit([ev(i) for i in range(4)], hooks=[hook], now_us=T0)
    assert (result.inserted, result.enqueued) == (4, 4)
    # 500, a hang past the 0.2 s timeout, a 503 with Retry-After, a slow 200, then 200s.
    http.answer(("status", 500), ("hang",), ("status", 503, {"Retry-After": "30"}), ("slow", 0.05))
    with dispatcher(ledger, [hook], clock) as d:
        assert d.run_once() == 4
        # the slow answer delivered evt-3 at once; the other three wait for their retry
        assert {m.id: m.status for m in ledger.hook_messages()} == {
            "evt-0": "pending", "evt-1": "pending", "evt-2": "pending", "evt-3": "delivered",
        }  # fmt: skip
        retry_after = next(m for m in ledger.hook_messages() if m.id == "evt-2")
        assert retry_after.next_at_us == T0 + 30 * US  # Retry-After beat the 5 s of the schedule
        assert d.run_once() == 0  # nothing due yet: no sleeping, no sending
        drain(d, clock)
    messages = {m.id: m for m in ledger.hook_messages()}
    assert all(m.status == "delivered" for m in messages.values())
    ids = Counter(http.ids())
    for ident, message in messages.items():
        assert [a.outcome for a in message.attempts].count("delivered") == 1
        assert ids[ident] == len(message.attempts)  # one request per attempt, none more
    assert ids == Counter({"evt-0": 2, "evt-1": 2, "evt-2": 2, "evt-3": 1})
    errors = [a.error for a in messages["evt-1"].attempts]
    assert errors[0] is not None and "timed out" in errors[0]
    payloads = verify_all(http)
    first = payloads[0]
    assert first["type"] == USAGE and first["source"] == "tollway" and first["specversion"] == "1.0"
    assert first["data"]["amount"] == "0.015" and first["data"]["currency"] == "USD"
    assert first["data"]["quantity"] == 3 and first["data"]["limits"] == ["burst", "daily"]
    assert first["data"]["attributes"] == {"region": "eu"}
    assert http.requests[0].headers["content-type"] == CONTENT_TYPE


def test_a_permanently_failing_receiver_ends_dead_then_replay_delivers_it(
    ledger: Ledger, http: Receiver
) -> None:
    clock = Clock()
    hook = webhook(http.url, schedule=(0.0, 1.0, 2.0))
    ledger.commit([ev(1)], hooks=[hook], now_us=T0)
    http.answer(default=("status", 500))
    with dispatcher(ledger, [hook], clock) as d:
        assert drain(d, clock) == 3
        (dead,) = ledger.hook_messages()
        assert (dead.status, dead.dead_reason, len(dead.attempts)) == ("dead", "exhausted", 3)
        assert dead.last_error is not None and dead.last_error.startswith("HTTP 500")
        assert d.next_due_us() is None
        http.answer(default=("status", 200))
        assert d.run_once() == 0  # dead stays dead until replayed
        replayed = ledger.replay_hook_messages(clock(), dead=True)
        assert [m.id for m in replayed] == ["evt-1"]
        assert d.run_once() == 1
    (done,) = ledger.hook_messages()
    assert (done.status, done.replays, len(done.attempts), done.round_start) == (
        "delivered", 1, 4, 3,
    )  # fmt: skip
    assert http.ids() == ["evt-1"] * 4
    bodies = {request.body for request in http.requests}
    assert len(bodies) == 1  # the replay sent the very same bytes under the same webhook-id
    verify_all(http)


def test_410_gone_dead_letters_at_once(ledger: Ledger, http: Receiver) -> None:
    clock = Clock()
    hook = webhook(http.url)
    ledger.commit([ev(1), ev(2)], hooks=[hook], now_us=T0)
    http.answer(("status", 410))
    with dispatcher(ledger, [hook], clock) as d:
        assert d.run_once() == 2
    reasons = sorted((m.id, m.dead_reason) for m in ledger.hook_messages())
    assert reasons == [("evt-1", "gone"), ("evt-2", "disabled")]  # the sink was disabled
    assert http.ids() == ["evt-1"]


def test_a_new_dispatcher_resumes_the_schedule(ledger_url: str, http: Receiver) -> None:
    clock = Clock()
    hook = webhook(http.url)
    http.answer(("status", 500), ("status", 500))
    with open_ledger(ledger_url) as first:
        first.commit([ev(1)], hooks=[hook], now_us=T0)
        with dispatcher(first, [hook], clock) as d:
            assert d.run_once() == 1
    clock.to_us(T0 + 4 * US)  # the second attempt is due at +5 s
    with open_ledger(ledger_url) as second, dispatcher(second, [hook], clock) as d:
        assert d.run_once() == 0
        assert d.next_due_us() == T0 + 5 * US
        clock.to_us(T0 + 5 * US)
        assert d.run_once() == 1  # attempt 2 fails: next at +5 +60 s
        (message,) = second.hook_messages()
        assert [a.number for a in message.attempts] == [1, 2]
        assert message.next_at_us == T0 + 65 * US
        clock.to_us(T0 + 65 * US)
        assert d.run_once() == 1
        (message,) = second.hook_messages()
    assert message.status == "delivered" and len(message.attempts) == 3
    assert http.ids() == ["evt-1"] * 3


@pytest.mark.postgres
def test_two_dispatchers_on_one_postgres_ledger_never_send_a_message_twice(pg_url: str) -> None:
    sent: list[tuple[str, str]] = []
    lock = threading.Lock()

    def factory(name: str) -> Any:
        def send(message: Message) -> None:
            time.sleep(0.001)  # long enough for the two to overlap
            with lock:
                sent.append((message.id, name))

        return lambda hook, secrets: CallableSink(send, name=name)

    hook = HookConfig("calls", "callable", callable="unused:unused")
    clock = Clock()
    with PostgresLedger(pg_url) as ledger:
        for at in range(0, 400, 100):
            ledger.commit([ev(i) for i in range(at, at + 100)], hooks=[hook], now_us=T0)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with (
                PostgresLedger(pg_url) as own,
                Dispatcher(own, [hook], clock=clock, sink_factory=factory(name)) as d,
            ):
                while d.run_once(max_messages=7):
                    pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"d{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    counts = Counter(ident for ident, _ in sent)
    assert len(counts) == 400 and set(counts.values()) == {1}
    by = Counter(name for _, name in sent)
    assert set(by) == {"d0", "d1"}  # both took part
    with PostgresLedger(pg_url) as ledger:
        assert {m.status for m in ledger.hook_messages(limit=1000)} == {"delivered"}


def test_a_lease_keeps_a_message_from_a_second_dispatcher(ledger: Ledger) -> None:
    clock = Clock()
    hook = HookConfig("calls", "callable", callable="unused:unused")
    ledger.commit([ev(1)], hooks=[hook], now_us=T0)
    leased = ledger.lease_hook_messages(
        ["calls"], now_us=T0, until_us=T0 + 60 * US, owner="other", limit=10
    )
    assert [m.id for m in leased] == ["evt-1"]
    got: list[str] = []
    sink = CallableSink(lambda m: got.append(m.id))
    with Dispatcher(ledger, [hook], clock=clock, sink_factory=lambda h, s: sink) as d:
        assert d.run_once() == 0  # leased by "other": not sent
        clock.to_us(T0 + 61 * US)  # "other" died: its lease ran out
        assert d.run_once() == 1
    assert got == ["evt-1"]


# =========================================================================== commit


def test_a_redelivered_commit_enqueues_nothing_twice(ledger: Ledger, http: Receiver) -> None:
    clock = Clock()
    hook = webhook(http.url, events=(USAGE, THRESHOLD))
    batch = [ev(i) for i in range(10)]
    notice = Notice("thr-acct_1-q:monthly-0-0", THRESHOLD, "acct_1", T0, {"limit": "monthly"})
    first = ledger.commit(batch, [notice], [hook], now_us=T0)
    assert (first.inserted, first.notices, first.enqueued) == (10, 1, 11)
    again = ledger.commit([*batch, ev(10)], [notice], [hook], now_us=T0)
    assert (again.inserted, again.duplicates, again.notices, again.enqueued) == (1, 10, 0, 1)
    assert len(ledger.hook_messages()) == 12
    with dispatcher(ledger, [hook], clock) as d:
        drain(d, clock)
        ledger.commit(batch, [notice], [hook], now_us=T0)  # once more, after delivery
        assert d.run_once() == 0
    assert sorted(Counter(http.ids()).values()) == [1] * 12
    types = Counter(payload["type"] for payload in verify_all(http))
    assert types == Counter({USAGE: 11, THRESHOLD: 1})


def test_commit_without_hooks_is_write_and_hooks_see_only_their_types(ledger: Ledger) -> None:
    plain = ledger.commit([ev(1)])
    assert (plain.inserted, plain.enqueued) == (1, 0)
    assert ledger.hook_messages() == []
    only_exceeded = HookConfig("alerts", "callable", callable="x:y", events=(EXCEEDED,))
    notices = [
        Notice("exc-1", EXCEEDED, "acct_1", T0, {"limit": "daily"}),
        Notice("thr-1", THRESHOLD, "acct_1", T0, {"limit": "daily"}),
    ]
    result = ledger.commit([ev(2)], notices, [only_exceeded], now_us=T0)
    assert (result.inserted, result.notices, result.enqueued) == (1, 2, 1)
    (message,) = ledger.hook_messages()
    assert (message.hook, message.id, message.type) == ("alerts", "exc-1", EXCEEDED)
    assert decode(message.body)["data"]["limit"] == "daily"
    assert ledger.count() == 2


def test_a_commit_that_fails_enqueues_nothing(ledger: Ledger) -> None:
    hook = HookConfig("calls", "callable", callable="x:y")
    broken = ev(99)
    object.__setattr__(broken, "currency", None)  # past validation: the database refuses it
    with pytest.raises(Exception, match="ledger"):
        ledger.commit([ev(1), broken], [Notice("n", THRESHOLD, "s", T0)], [hook], now_us=T0)
    assert ledger.count() == 0
    assert ledger.hook_messages() == []


def test_batches_are_cloudevents_batches_with_a_stable_id(ledger: Ledger, http: Receiver) -> None:
    clock = Clock()
    hook = webhook(http.url, batch=3)
    ledger.commit([ev(i) for i in range(7)], hooks=[hook], now_us=T0)
    messages = ledger.hook_messages()
    assert [len(m.event_ids) for m in messages] == [3, 3, 1]
    with dispatcher(ledger, [hook], clock) as d:
        drain(d, clock)
    assert {r.headers["content-type"] for r in http.requests} == {BATCH_CONTENT_TYPE}
    events = [e for r in http.requests for e in decode_batch(r.body)]
    assert [e["id"] for e in events] == [f"evt-{i}" for i in range(7)]
    assert all(i.startswith("batch_") for i in http.ids())
    verify_all(http)


def test_negative_corrections_are_recorded_and_delivered(ledger: Ledger) -> None:
    hook = HookConfig("calls", "callable", callable="x:y")
    refund = ev(2, quantity=-3, amount_micros=-15_000, attributes={"refund_of": "evt-1"})
    ledger.commit([ev(1), refund], hooks=[hook], now_us=T0)
    totals = ledger.totals("acct_1", T0, T0 + US)["geocode"]
    assert (totals.quantity, totals.amount, totals.events) == (0, Decimal("0"), 2)
    body = decode(next(m for m in ledger.hook_messages() if m.id == "evt-2").body)
    assert body["data"]["quantity"] == -3 and body["data"]["amount"] == "-0.015"


def test_async_commit_on_postgres_enqueues_like_the_sync_one(pg_url: str) -> None:
    import asyncio

    from tollway.metering.ledger import open_async_ledger

    hook = HookConfig("calls", "callable", callable="x:y")

    async def go() -> tuple[int, int, list[str]]:
        ledger = await open_async_ledger(pg_url)
        async with ledger:
            first = await ledger.commit([ev(1), ev(2)], hooks=[hook], now_us=T0)
            again = await ledger.commit([ev(1), ev(2), ev(3)], hooks=[hook], now_us=T0)
            messages = await ledger.hook_messages()
        return first.enqueued, again.enqueued, [m.id for m in messages]

    assert asyncio.run(go()) == (2, 1, ["evt-1", "evt-2", "evt-3"])


# =========================================================================== aggregation


def test_aggregation_sends_one_event_per_subject_meter_and_minute(
    ledger: Ledger, http: Receiver
) -> None:
    clock = Clock()
    hook = webhook(http.url, aggregate="minute")
    events = [
        ev(i, subject=f"acct_{i % 2}", meter=("geocode", "search")[i // 2 % 2],
           at=(i % 3) * 30 * US, quantity=i, amount_micros=1_000 * i)
        for i in range(120)
    ]  # fmt: skip
    for at in range(0, 120, 40):  # three commits feed the same buckets
        assert ledger.commit(events[at : at + 40], hooks=[hook], now_us=T0).inserted == 40
    assert ledger.commit(events[:40], hooks=[hook], now_us=T0).enqueued == 0  # a redelivery
    with dispatcher(ledger, [hook], clock, grace_s=5.0) as d:
        clock.to_us(T0 + 60 * US)
        assert d.run_once() == 0  # the first minute has closed, but the grace is not over
        assert d.next_due_us() == T0 + 65 * US
        clock.to_us(T0 + 65 * US)
        assert d.run_once() == 4  # 2 subjects x 2 meters in minute 0
        clock.to_us(T0 + 125 * US)
        assert d.run_once() == 4  # and in minute 1
        assert d.next_due_us() is None
    expected: dict[tuple[str, str, str], list[int]] = {}
    for event in events:
        minute = (event.occurred_at_us - T0) // (60 * US)
        key = (event.subject, event.meter, f"m{minute}")
        expected.setdefault(key, []).append(event.quantity)
    got = {}
    for payload in verify_all(http):
        data = payload["data"]
        minute = "m0" if data["window_start"].endswith(":00:00Z") else "m1"
        got[(data["subject"], data["meter"], minute)] = (
            data["quantity"],
            data["amount"],
            data["events"],
        )
    assert got == {
        key: (sum(q), str(Decimal(sum(q)) / 1000 + Decimal("0.00")), len(q))
        for key, q in expected.items()
    }
    assert len(http.requests) == 8 == len(set(http.ids()))


def test_a_late_event_after_its_bucket_was_sent_goes_out_in_a_message_of_its_own(
    ledger: Ledger,
) -> None:
    clock = Clock()
    hook = HookConfig("agg", "callable", callable="x:y", aggregate="hour")
    got: list[dict[str, Any]] = []
    sink = CallableSink(lambda m: got.extend(m.events()))
    ledger.commit([ev(1), ev(2)], hooks=[hook], now_us=T0)
    with Dispatcher(ledger, [hook], clock=clock, sink_factory=lambda h, s: sink) as d:
        clock.to_us(T0 + 3605 * US)
        assert d.run_once() == 1
        ledger.commit([ev(3, at=10 * US)], hooks=[hook], now_us=T0 + 3605 * US)  # late
        clock.to_us(T0 + 3606 * US)
        assert d.run_once() == 1
    assert [(e["data"]["quantity"], e["data"]["events"]) for e in got] == [(6, 2), (3, 1)]
    assert got[0]["id"] != got[1]["id"]  # another webhook-id: not deduped away


# =========================================================================== sinks


def collected(message: Message) -> None:
    COLLECTED.append(message.id)


COLLECTED: list[str] = []


def test_a_callable_hook_is_imported_when_the_dispatcher_starts(ledger: Ledger) -> None:
    COLLECTED.clear()
    hook = HookConfig("py", "callable", path="hooks[2]", callable="test_hooks:collected")
    ledger.commit([ev(1)], hooks=[hook], now_us=T0)
    with Dispatcher(ledger, [hook], clock=Clock()) as d:
        assert d.run_once() == 1
    assert COLLECTED == ["evt-1"]
    bad = HookConfig("py", "callable", path="hooks[2]", callable="test_hooks:nothing_here")
    with pytest.raises(ConfigurationError, match=r"^hooks\[2\]\.callable: .*no attribute"):
        Dispatcher(ledger, [bad])
    missing = HookConfig("py", "callable", path="hooks[2]", callable="no_such_module_x:f")
    with pytest.raises(ConfigurationError, match=r"hooks\[2\]\.callable: .*cannot import"):
        Dispatcher(ledger, [missing])


def test_a_stream_hook_xadds_id_content_type_and_body(
    ledger: Ledger, redis_client: redis.Redis, redis_url: str
) -> None:
    hook = HookConfig("events", "stream", stream="billing:events", stream_url=redis_url)
    ledger.commit([ev(1), ev(2)], hooks=[hook], now_us=T0)
    with Dispatcher(ledger, [hook], clock=Clock()) as d:
        assert d.run_once() == 2
    entries = redis_client.xrange("billing:events")
    assert [fields[b"id"] for _, fields in entries] == [b"evt-1", b"evt-2"]
    assert {fields[b"content_type"] for _, fields in entries} == {CONTENT_TYPE.encode()}
    assert decode(entries[0][1][b"body"])["data"]["subject"] == "acct_1"
    assert {m.status for m in ledger.hook_messages()} == {"delivered"}


def test_a_stream_hook_with_redis_down_is_retried(ledger: Ledger) -> None:
    clock = Clock()
    hook = HookConfig(
        "events", "stream", stream="s", stream_url="redis://127.0.0.1:9/0", timeout_ms=200
    )
    ledger.commit([ev(1)], hooks=[hook], now_us=T0)
    with dispatcher(ledger, [hook], clock) as d:
        assert d.run_once() == 1
    (message,) = ledger.hook_messages()
    assert message.status == "pending" and message.last_error is not None
    assert "onnection" in message.last_error


# =========================================================================== bad input


def test_a_missing_or_bad_secret_names_the_key(ledger: Ledger) -> None:
    hook = webhook("https://hooks.example.com/x", path="hooks[1]")
    with pytest.raises(ConfigurationError) as caught:
        Dispatcher(ledger, [hook], env={})
    assert str(caught.value).startswith("hooks[1].secret_env: the environment variable HOOK_SECRET")
    assert "not set" in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"hooks\[1\]\.secret_env: HOOK_SECRET: .*whsec_"):
        Dispatcher(ledger, [hook], env={"HOOK_SECRET": "hunter2"})
    rotated = Dispatcher(ledger, [hook], env={"HOOK_SECRET": f"{generate_secret()} {SECRET}"})
    assert len(rotated.sink("billing").secrets) == 2  # type: ignore[attr-defined]


def test_huge_attributes_are_refused_before_they_reach_a_hook(ledger: Ledger) -> None:
    with pytest.raises(InvalidUsageEventError) as caught:
        ev(1, attributes={"blob": "x" * ATTRIBUTES_MAX_BYTES})
    assert caught.value.field == "attributes" and "at most 4096 bytes" in str(caught.value)
    with pytest.raises(InvalidArgumentError, match=r"hooks\[0\]: a dict; expected a HookConfig"):
        ledger.commit([ev(1)], hooks=[{"name": "x"}])  # type: ignore[list-item]
    assert ledger.count() == 0


def test_a_policy_with_hooks_drives_a_dispatcher(
    ledger: Ledger, http: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "tollway.toml"
    path.write_text(
        f"""
[[hooks]]
name = "billing"
url = "{http.url}"
secret_env = "HOOK_SECRET"
events = ["tollway.usage.recorded", "tollway.limit.threshold"]
timeout_ms = 500
schedule = [0, 10]
batch = 2
"""
    )
    policy = load(path)
    ledger.commit([ev(1), ev(2), ev(3)], hooks=policy.hooks, now_us=T0)
    with dispatcher(ledger, list(policy.hooks), Clock()) as d:
        assert d.run_once() == 2
    assert len(verify_all(http)) == 2


@pytest.mark.parametrize(
    "module",
    ["tollway.metering.hookevents", "tollway.metering.entries", "tollway.metering.hooks",
     "tollway.metering.ledger.outbox", "tollway.cli.hooks"],
)  # fmt: skip
def test_every_hook_module_imports_first_in_a_fresh_process(module: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr  # no import cycle through the ledger package


def test_the_fast_usage_envelope_is_what_make_event_builds() -> None:
    from datetime import datetime, timedelta, timezone

    from tollway.metering.cloudevents import check_event, encode, make_event
    from tollway.metering.hookevents import message_of, usage_event

    event = ev(1, id="req.42", subject="compte_é", amount_micros=-1_500, quantity=-1)
    fast = usage_event(event)
    when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=T0)
    data = {
        **fast["data"],
        "amount": Decimal("-0.0015"),
        "occurred_at": when,
        "recorded_at": when + timedelta(microseconds=10),
    }
    slow = make_event(USAGE, data, source="tollway", id=fast["id"], time=when, subject="compte_é")
    assert fast == slow
    check_event(fast)
    assert fast["id"].startswith("evt_") and fast["data"]["event_id"] == "req.42"  # no "." id
    assert message_of("h", [fast], batch=False, checked=True).body == encode(slow).decode()
