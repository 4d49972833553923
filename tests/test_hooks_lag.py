"""Slow, hanging and trickling webhook receivers never delay the ledger (`tollway worker`).

Real parts: a redis-server, 8 processes acquiring at once, `tollway worker` as a real process
(SIGTERM and all), a SQLite ledger, the raw-socket receivers of `hostile_http`. The ledger's
lag is each event's ``recorded_at_us - occurred_at_us`` (the store's time of the step to the
drain's time of its commit), read from the ledger itself. Hostile hooks subscribe to the
quota's ``exceeded`` notice (two subjects exceed early), so they hold few messages and retry
them within the test; the normal hook takes every usage event.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hostile_http import HostileReceiver
from metering_e2e_support import SECRET_ENV, run_worker, start_worker, stop_worker, write_policy
from model import day_safe_timezone
from processes import run_together
from test_hook_deadline import wait_for
from tollway import Tollway
from tollway.metering.entries import EXCEEDED, USAGE
from tollway.metering.ledger import open_ledger
from tollway.metering.webhooks import generate_secret

SECRET = generate_secret()
PROCESSES = 8
SECONDS = 2.0  # each process acquires for this long
HOSTILE_TIMEOUT_MS = 500
RETRY_S = 1.0


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def receivers() -> Iterator[dict[str, HostileReceiver]]:
    made = {
        "trickle": HostileReceiver("trickle", interval=0.5),
        "hang": HostileReceiver("hang"),
        "slow": HostileReceiver("slow", delay=0.2),
        "normal": HostileReceiver("ok"),
    }
    for receiver in made.values():
        receiver.start()
    yield made
    for receiver in made.values():
        receiver.stop()


def _hook(name: str, url: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret_env": SECRET_ENV, **options}


def _policy(store: str, ledger: str, hooks: list[dict[str, Any]]) -> dict[str, Any]:
    tz = day_safe_timezone()
    return {
        "store": {"url": store, "timeout_ms": 2000, "on_error": "closed"},
        "defaults": {"plan": "free"},
        "operations": {"geocode": {"cost": 1}, "search": {"cost": 1}},
        "plans": {
            "free": {
                "limits": [
                    {"name": "daily", "quota": "100000/day", "timezone": tz},
                    {
                        "name": "searches",
                        "quota": "3/day",
                        "timezone": tz,
                        "operations": ["search"],
                    },
                ]
            }
        },
        "ledger": {"url": ledger},
        "hooks": hooks,
    }


def _acquirer(url: str, policy: dict[str, Any], index: int, barrier: Any, results: Any) -> None:
    try:
        subject = f"acct_{index}"
        with Tollway(policy, url) as tw:
            tw.usage(subject)  # connected, scripts loaded: the load starts at the barrier
            barrier.wait()
            allowed: list[str] = []
            end = time.monotonic() + SECONDS
            n = 0
            while time.monotonic() < end:
                # two subjects exceed their search quota at once: the hostile hooks' notices
                operation = "search" if index < 2 and n < 5 else "geocode"
                ident = f"p{index}-{n}"
                if tw.acquire(subject, operation, id=ident).allowed:
                    allowed.append(ident)
                n += 1
                time.sleep(0.01)  # a steady load, not a flood of one CPU
            results.put(allowed)
    except BaseException as exc:
        results.put(exc)
        raise


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path, timeout=5) as conn:
        return list(conn.execute(sql))


def test_hostile_receivers_never_delay_the_ledger(
    tmp_path: Path, redis_url: str, receivers: dict[str, HostileReceiver]
) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    db = tmp_path / "ledger.db"
    hostile = {
        "events": [EXCEEDED],
        "timeout_ms": HOSTILE_TIMEOUT_MS,
        "schedule": [0] + [RETRY_S] * 9,
    }
    hooks = [
        _hook("normal", receivers["normal"].url, events=[USAGE]),
        *(_hook(name, receivers[name].url, **hostile) for name in ("trickle", "hang", "slow")),
    ]
    doc = _policy(redis_url, f"sqlite:///{db}", hooks)
    config = write_policy(tmp_path / "tollway.toml", doc)
    proc = start_worker(config, secret=SECRET)
    try:
        with open_ledger(f"sqlite:///{db}"):
            pass  # the schema exists before the first poll below
        plain = {**doc, "hooks": []}
        allowed = [
            ident
            for got in run_together(_acquirer, [(redis_url, plain, i) for i in range(PROCESSES)])
            for ident in got
        ]
        assert len(allowed) > PROCESSES * 50  # a real load went through

        wait_for(
            lambda: _rows(db, "SELECT count(*) FROM usage_events")[0][0] == len(allowed),
            "every allowed event in the ledger",
            10,
        )
        lag_sql = "SELECT recorded_at_us - occurred_at_us FROM usage_events"
        lags = [row[0] / 1e6 for row in _rows(db, lag_sql)]
        assert max(lags) < 1.0, sorted(lags)[-5:]
        assert {r[0] for r in _rows(db, "SELECT id FROM usage_events")} == set(allowed)

        # the normal receiver: every usage event, once each
        def normal_done() -> bool:
            return _rows(
                db, "SELECT count(*) FROM hook_messages WHERE hook = 'normal' AND "
                "status = 'delivered'"
            )[0][0] == len(allowed)  # fmt: skip

        wait_for(normal_done, "every usage event delivered to the normal receiver", 15)
        counts = Counter(receivers["normal"].ids())
        assert len(counts) == len(allowed) and set(counts.values()) == {1}

        # the trickling receiver: each attempt cut at its deadline, then retried later
        def trickle_retried() -> bool:
            with open_ledger(f"sqlite:///{db}") as ledger:
                messages = ledger.hook_messages(hook="trickle")
            return len(messages) == 2 and all(len(m.attempts) >= 2 for m in messages)

        wait_for(trickle_retried, "both trickled messages tried twice", 10)
        with open_ledger(f"sqlite:///{db}") as ledger:
            for name in ("trickle", "hang"):
                for message in ledger.hook_messages(hook=name):
                    assert message.status == "pending"
                    for attempt in message.attempts:
                        assert attempt.outcome == "failed"
                        assert attempt.error == (
                            "timed out after 0.5 s (connect, send and answer in all)"
                        )
                        assert 0.45 < attempt.duration < 0.5 + 0.5, attempt
                    first, second = message.attempts[:2]
                    assert second.at - first.at >= RETRY_S * 0.9 + 0.45  # the schedule's delay
            slow = ledger.hook_messages(hook="slow")
            assert [m.status for m in slow] == ["delivered"] * 2
    finally:
        started = time.monotonic()
        err = stop_worker(proc)
        assert time.monotonic() - started < 2.0, err


def test_sigterm_during_a_trickle_stops_at_once_and_the_event_goes_out_after_restart(
    tmp_path: Path, redis_url: str
) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    receiver = HostileReceiver("trickle", interval=0.5).start()
    try:
        db = tmp_path / "ledger.db"
        hooks = [_hook("billing", receiver.url, events=[USAGE], timeout_ms=30_000)]
        doc = _policy(redis_url, f"sqlite:///{db}", hooks)
        config = write_policy(tmp_path / "tollway.toml", doc)
        with Tollway({**doc, "hooks": []}, redis_url) as tw:
            assert tw.acquire("acct_t", "geocode", id="t-1").allowed
        proc = start_worker(config, secret=SECRET)
        try:
            wait_for(lambda: len(receiver.seen) == 1, "the attempt under way", 10)
            time.sleep(0.3)  # well into the trickle (not a wait for a window)
        finally:
            started = time.monotonic()
            stop_worker(proc)  # SIGTERM
            took = time.monotonic() - started
        assert took < 2.0
        with open_ledger(f"sqlite:///{db}") as ledger:
            (message,) = ledger.hook_messages()
            assert (message.status, message.attempts, message.lease_owner) == (
                "pending", (), None,
            )  # fmt: skip
        receiver.mode = "ok"
        run_worker(config, secret=SECRET, timeout=20)
        with open_ledger(f"sqlite:///{db}") as ledger:
            (message,) = ledger.hook_messages()
        assert message.status == "delivered"
        assert [a.outcome for a in message.attempts] == ["delivered"]
        assert receiver.ids() == [message.id, message.id]  # the same webhook-id again
    finally:
        receiver.stop()
