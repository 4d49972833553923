"""tollway.metrics: a real Tollway (memory and Redis) with the observer, the top-N bound,
the scrape through a real uvicorn on loopback, promtool's checks, one registry per object."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from servers import RedisServer
from tollway import AsyncTollway, Tollway
from tollway.errors import InvalidArgumentError
from tollway.metering.hooks import Dispatcher
from tollway.metering.ledger import UsageEvent, open_ledger
from tollway.metering.sinks import CallableSink, Message
from tollway.metrics import DecisionObserver, Metrics, metrics_app, render
from tollway.metrics.topn import TopN
from tollway.policy import load
from tollway.policy.model import HookConfig
from tollway.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 1, 15, 10, 0, 0, tzinfo=timezone.utc)
T0 = int(START.timestamp()) * 1_000_000

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1}, "search": {"cost": 2}},
    "plans": {
        "free": {
            "limits": [
                {"name": "burst", "rate": "5/s", "burst": 10},
                {"name": "hourly", "quota": "12/hour"},
            ]
        },
        "pro": {"limits": [{"name": "hourly", "quota": "1000/hour"}]},
    },
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def series(text: str, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples(text) if n == name]


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("promtool")
    assert exe, "promtool is installed by scripts/test.sh (Debian's prometheus package)"
    return subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=60, check=False)


def drive(tw: Tollway, clock: FakeClock) -> dict[tuple[str, str, str], int]:
    """A scripted mix of decisions; returns what was decided, counted as the metric counts."""
    made: dict[tuple[str, str, str], int] = {}
    tw.assign("acct-pro", "pro")
    for n in range(40):
        subject = ("acct-a", "acct-b", "acct-pro")[n % 3]
        operation = "search" if n % 4 == 0 else "geocode"
        decision = tw.acquire(subject, operation)
        outcome = "allowed" if decision.allowed else "denied"
        key = (decision.plan or "", operation, outcome)
        made[key] = made.get(key, 0) + 1
        clock.advance(0.05)
    return made


# -- the observer with a real Tollway ------------------------------------------------------


def check_counts(tw: Tollway, metrics: Metrics, clock: FakeClock) -> None:
    made = drive(tw, clock)
    text = render(metrics).decode()
    assert any(outcome == "denied" for _, _, outcome in made)  # the script reaches the limits
    for (plan, operation, outcome), n in made.items():
        got = value(
            text, "tollway_decisions_total", plan=plan, operation=operation, outcome=outcome
        )
        assert got == n, (plan, operation, outcome)
    total = sum(v for (name, _), v in samples(text).items() if name == "tollway_decisions_total")
    assert total == 40
    assert value(text, "tollway_acquire_duration_seconds_count") == 40
    denied = sum(n for (_, _, o), n in made.items() if o == "denied")
    denials = sum(v for (name, _), v in samples(text).items() if name == "tollway_denials_total")
    assert denials >= denied > 0
    # the busiest subjects have their standing: acct-pro's hourly quota as of its last decision
    pro = tw.usage("acct-pro").limit("hourly")
    labels = {"subject": "acct-pro", "limit": "hourly", "kind": "quota", "operation": ""}
    assert value(text, "tollway_subject_remaining", **labels) == pro.remaining
    assert value(text, "tollway_subject_used_ratio", **labels) == pytest.approx(pro.used / 1000)
    assert value(text, "tollway_top_subject_decisions", subject="acct-a") == 14


def test_counts_match_the_decisions_on_memory() -> None:
    metrics = Metrics()
    clock = FakeClock(START)
    with Tollway(POLICY, clock=clock, observer=metrics.observer) as tw:
        metrics.add_tollway(tw)
        check_counts(tw, metrics, clock)


def test_counts_match_the_decisions_on_redis(redis_url: str, tmp_path: Path) -> None:
    metrics = Metrics()
    clock = FakeClock(START)  # the limits run on Redis's clock; the fake one drives nothing
    policy = {**POLICY, "store": {"url": redis_url, "journal": str(tmp_path / "journal")}}
    with Tollway(policy, observer=metrics.observer) as tw:
        tw.store.client.flushdb()
        metrics.add_tollway(tw)
        made = drive(tw, clock)
        text = render(metrics).decode()
        for (plan, operation, outcome), n in made.items():
            labels = {"plan": plan, "operation": operation, "outcome": outcome}
            assert value(text, "tollway_decisions_total", **labels) == n
        assert value(text, "tollway_store_breaker_state", store="default", state="closed") == 1
        assert value(text, "tollway_store_breaker_state", store="default", state="open") == 0
        assert value(text, "tollway_journal_bytes", store="default") == 0
        assert value(text, "tollway_metrics_source_up", source="store:default") == 1


def test_async_face_observes_too() -> None:
    metrics = Metrics()

    async def main() -> None:
        async with AsyncTollway(POLICY, clock=FakeClock(START), observer=metrics.observer) as tw:
            metrics.add_tollway(tw)  # a memory store: no breaker, no journal; no routes
            for _ in range(12):
                await tw.acquire("acct", "geocode")

    asyncio.run(main())
    text = render(metrics).decode()
    allowed = {"plan": "free", "operation": "geocode"}
    assert value(text, "tollway_decisions_total", **allowed, outcome="allowed") == 10
    assert value(text, "tollway_decisions_total", **allowed, outcome="denied") == 2
    assert value(text, "tollway_denials_total", **allowed, limit="burst") == 2


def test_degraded_decisions_breaker_and_journal(make_redis_server: Any, tmp_path: Path) -> None:
    server: RedisServer = make_redis_server()
    journal = tmp_path / "journal"
    policy = {
        "store": {
            "url": server.url,
            "timeout_ms": 50,
            "breaker_failures": 2,
            "breaker_cooldown_ms": 60_000,
            "journal": str(journal),
        },
        "defaults": {"plan": "lenient"},
        "operations": {"call": {"cost": 1}},
        "plans": {
            "lenient": {"limits": [{"name": "calls", "quota": "1000/day", "on_error": "open"}]},
            "strict": {"limits": [{"name": "guarded", "quota": "1000/day", "on_error": "closed"}]},
        },
    }
    metrics = Metrics()
    with Tollway(policy, observer=metrics.observer) as tw:
        metrics.add_tollway(tw)
        tw.assign("acct-strict", "strict")
        assert tw.acquire("acct-open", "call").allowed
        server.stop()
        opened = [tw.acquire("acct-open", "call") for _ in range(3)]
        closed = [tw.acquire("acct-strict", "call") for _ in range(2)]
        assert all(d.degraded and d.allowed for d in opened)
        assert all(d.degraded and not d.allowed for d in closed)
        text = render(metrics).decode()
    lenient = {"plan": "lenient", "operation": "call"}
    strict = {"plan": "strict", "operation": "call"}
    assert value(text, "tollway_decisions_total", **lenient, outcome="allowed") == 1
    assert value(text, "tollway_decisions_total", **lenient, outcome="degraded") == 3
    assert value(text, "tollway_degraded_decisions_total", **lenient, verdict="allowed") == 3
    assert value(text, "tollway_degraded_decisions_total", **strict, verdict="denied") == 2
    assert value(text, "tollway_store_breaker_state", store="default", state="open") == 1
    on_disk = sum(p.stat().st_size for p in journal.glob("*.jsonl"))
    assert value(text, "tollway_journal_bytes", store="default") == on_disk > 0
    # a degraded decision has no figures: the subject's gauges stay out
    assert not [s for s in series(text, "tollway_subject_remaining") if s["subject"] == "acct-open"]


# -- bounded cardinality -------------------------------------------------------------------


def test_top_n_bound_holds_with_1000_subjects() -> None:
    metrics = Metrics(top=5)
    heavy = [f"heavy-{n}" for n in range(5)]
    with Tollway(POLICY, clock=FakeClock(START), observer=metrics.observer) as tw:
        for n in range(1000):
            tw.acquire(f"light-{n}", "geocode")
            if n % 10 == 0:
                for subject in heavy:  # 100 decisions each, spread among the light ones
                    tw.acquire(subject, "geocode")
        text = render(metrics).decode()
    subjects = {s["subject"] for s in series(text, "tollway_top_subject_decisions")}
    assert subjects == set(heavy)
    for name in ("tollway_subject_remaining", "tollway_subject_used_ratio"):
        assert {s["subject"] for s in series(text, name)} <= set(heavy)
        assert len(series(text, name)) == 5 * 2  # burst and hourly of each
    labelled = [s for (name, labels) in samples(text) for s in [dict(labels)] if "subject" in s]
    assert len(labelled) == 5 + 10 + 10
    free = {"plan": "free", "operation": "geocode"}
    made = [
        value(text, "tollway_decisions_total", **free, outcome=o) for o in ("allowed", "denied")
    ]
    assert sum(made) == 1500


def test_space_saving_keeps_frequent_keys_and_its_capacity() -> None:
    top: TopN[int] = TopN(8)
    for n in range(10_000):
        top.hit(f"rare-{n}", n)
        top.hit("hot", n)
        if n % 3 == 0:
            top.hit("warm", n)
    assert 8 <= len(top) <= 16  # counted between two evictions
    best = top.top(2)
    assert [t.key for t in best] == ["hot", "warm"]
    assert best[0].count >= 10_000 and best[0].value == 9_999
    assert best[0].count - best[0].error <= 10_000
    assert top.total == 10_000 * 2 + 3334


def test_observer_refuses_bad_options() -> None:
    with pytest.raises(InvalidArgumentError, match="top: -1"):
        DecisionObserver(top=-1)
    with pytest.raises(InvalidArgumentError, match="buckets"):
        DecisionObserver(buckets=[0.1, 0.01])
    with pytest.raises(InvalidArgumentError, match="timeout_s"):
        Metrics(timeout_s=0)
    metrics = Metrics()
    metrics.add_store(object(), name="x")
    with pytest.raises(InvalidArgumentError, match="store:x: added to these metrics already"):
        metrics.add_store(object(), name="x")


def test_each_metrics_object_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    assert one.registry is not two.registry
    with Tollway(POLICY, clock=FakeClock(START), observer=one.observer) as tw:
        tw.acquire("acct", "geocode")
    labels = {"plan": "free", "operation": "geocode", "outcome": "allowed"}
    assert value(render(one).decode(), "tollway_decisions_total", **labels) == 1
    assert value(render(two).decode(), "tollway_decisions_total", **labels) == 0
    from prometheus_client import REGISTRY, generate_latest

    assert b"tollway_" not in generate_latest(REGISTRY)


# -- scrape-time sources: providers, drain, hooks ------------------------------------------

PROVIDERS: dict[str, Any] = {
    "store": {"timeout_ms": 2000, "on_error": "closed"},
    "providers": {
        "cheap": {
            "price": "0.005 USD",
            "limits": [
                {"name": "daily", "quota": "100/day"},
                {"name": "budget", "budget": "0.02 USD/day"},
            ],
        },
        "spare": {"price": "0 USD", "limits": [{"name": "daily", "quota": "3/day"}]},
    },
    "routes": {"geocoding": {"providers": ["cheap", "spare"]}},
}


def test_provider_spend_and_remaining() -> None:
    metrics = Metrics()
    with Tollway(PROVIDERS, clock=FakeClock(START)) as tw:
        metrics.add_tollway(tw)
        route = tw.route("geocoding")
        for _ in range(3):
            with route.call() as call:
                assert call.provider == "cheap"
        text = render(metrics).decode()
    budget = {"provider": "cheap", "limit": "budget", "currency": "USD"}
    assert value(text, "tollway_provider_spend", **budget) == pytest.approx(0.015)
    assert value(text, "tollway_provider_budget", **budget) == pytest.approx(0.02)
    assert value(text, "tollway_provider_remaining", **budget, kind="budget") == pytest.approx(
        0.005
    )
    daily = {"limit": "daily", "kind": "quota", "currency": ""}
    assert value(text, "tollway_provider_remaining", provider="cheap", **daily) == 97
    assert value(text, "tollway_provider_remaining", provider="spare", **daily) == 3
    assert value(text, "tollway_provider_cooldown_seconds", provider="cheap") == 0
    assert value(text, "tollway_metrics_source_up", source="providers") == 1


def test_a_slow_source_is_bounded_and_reported_down() -> None:
    metrics = Metrics(timeout_s=0.2)
    release = threading.Event()
    from prometheus_client.core import GaugeMetricFamily

    def slow() -> list[Any]:
        release.wait(10)
        gauge = GaugeMetricFamily("tollway_test_slow", "A slow read.")
        gauge.add_metric([], 1)
        return [gauge]

    metrics.add_source("slow", slow)
    started = time.perf_counter()
    text = render(metrics).decode()
    assert time.perf_counter() - started < 2
    assert value(text, "tollway_metrics_source_up", source="slow") == 0
    assert "tollway_test_slow" not in text
    release.set()
    deadline = time.monotonic() + 5
    while "tollway_test_slow 1.0" not in text and time.monotonic() < deadline:
        text = render(metrics).decode()  # the read still running is taken, not started anew
    assert value(text, "tollway_metrics_source_up", source="slow") == 1
    metrics.close()


def event(n: int) -> UsageEvent:
    return UsageEvent(
        id=f"evt-{n}",
        subject="acct",
        operation="op",
        meter="op",
        quantity=1,
        occurred_at_us=T0,
        recorded_at_us=T0,
    )


def hook_config(tmp_path: Path) -> Path:
    path = tmp_path / "tollway.toml"
    path.write_text(
        f"""
[ledger]
url = "sqlite:///{tmp_path / "ledger.db"}"

[[hooks]]
name = "ok"
callable = "x.y:z"
schedule = [0]

[[hooks]]
name = "broken"
callable = "x.y:z"
schedule = [0]
"""
    )
    return path


def test_hook_deliveries_and_dead_letters(tmp_path: Path) -> None:
    policy = load(hook_config(tmp_path))
    assert policy.ledger.url is not None
    events = [event(n) for n in range(3)]

    def take(message: Message) -> None:
        pass

    def fail(message: Message) -> None:
        raise ConnectionError("receiver down")

    def sinks(hook: HookConfig, secrets: object) -> CallableSink:
        return CallableSink(fail if hook.name == "broken" else take)

    metrics = Metrics()
    with open_ledger(policy.ledger.url) as ledger:
        metrics.add_ledger(ledger)
        ledger.commit(events, hooks=list(policy.hooks))
        text = render(metrics).decode()
        assert value(text, "tollway_hook_messages", hook="ok", status="pending") == 3
        assert value(text, "tollway_hook_messages", hook="broken", status="pending") == 3
        with Dispatcher(ledger, policy.hooks, sink_factory=sinks) as dispatcher:
            dispatcher.run_once()
        text = render(metrics).decode()
    assert value(text, "tollway_hook_messages", hook="ok", status="delivered") == 3
    assert value(text, "tollway_hook_messages", hook="ok", status="pending") == 0
    assert value(text, "tollway_hook_messages", hook="broken", status="dead") == 3
    assert value(text, "tollway_hook_dead_letters", hook="broken") == 3
    assert value(text, "tollway_hook_dead_letters", hook="ok") == 0
    assert value(text, "tollway_metrics_source_up", source="hooks") == 1


# -- the HTTP face and promtool ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served() -> Iterator[tuple[str, Metrics]]:
    """`metrics_app` on a real uvicorn on loopback, in a thread; stopped at the end."""
    metrics = Metrics()
    port = free_port()
    config = uvicorn.Config(metrics_app(metrics), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/metrics", metrics
    finally:
        server.should_exit = True
        thread.join(10)


def test_scrape_through_uvicorn_passes_promtool(served: tuple[str, Metrics]) -> None:
    url, metrics = served
    clock = FakeClock(START)
    with Tollway(POLICY, clock=clock, observer=metrics.observer) as tw:
        metrics.add_tollway(tw)
        drive(tw, clock)
    with Tollway(PROVIDERS, clock=FakeClock(START)) as outbound:
        metrics.add_routes(outbound)
        with outbound.route("geocoding").call():
            pass
        response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    budget = {"provider": "cheap", "limit": "budget", "currency": "USD"}
    assert value(response.text, "tollway_provider_spend", **budget) == pytest.approx(0.005)
    assert value(response.text, "tollway_acquire_duration_seconds_count") == 40
    checked = promtool("check", "metrics", stdin=response.content)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert httpx.post(url, timeout=10).status_code == 405
    head = httpx.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b""


def test_every_family_passes_promtool(tmp_path: Path, redis_url: str) -> None:
    """Every family at once (decisions, store, providers, hooks, and an empty drain's)."""
    from redis import Redis

    from tollway.metering.drain import Drain

    metrics = Metrics()
    policy = load(hook_config(tmp_path))
    assert policy.ledger.url is not None
    on_redis = {**POLICY, "store": {"url": redis_url, "journal": str(tmp_path / "j")}}
    with (
        Tollway(on_redis, observer=metrics.observer) as tw,
        open_ledger(policy.ledger.url) as ledger,
        Redis.from_url(redis_url) as client,
    ):
        metrics.add_tollway(tw)
        metrics.add_ledger(ledger)
        metrics.add_drain(Drain(client, ledger, block_ms=0))
        tw.acquire('acct "quoted"\\back', "geocode")  # label values are escaped
        ledger.commit([event(0)], hooks=list(policy.hooks))
        body = render(metrics)
    text = body.decode()
    [drained] = series(text, "tollway_drain_events_total")
    assert value(text, "tollway_drain_events_total", **drained) == 0
    assert value(text, "tollway_top_subject_decisions", subject='acct "quoted"\\back') == 1
    checked = promtool("check", "metrics", stdin=body)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_example_alert_rules_pass_promtool() -> None:
    rules = ROOT / "examples" / "alerts.yml"
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    text = rules.read_text()
    for metric in (
        "tollway_provider_spend",
        "tollway_subject_used_ratio",
        "tollway_degraded_decisions_total",
        "tollway_drain_lag_seconds",
        "tollway_hook_dead_letters",
    ):
        assert metric in text


def test_tollway_imports_without_prometheus_client() -> None:
    """The extra is optional: tollway and tollway.metrics import without it; `Metrics()`
    says which extra to install."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import tollway, tollway.metrics\n"
        "from tollway.errors import ConfigurationError\n"
        "try:\n"
        "    tollway.metrics.Metrics()\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'tollway[metrics]'" in done.stdout


def test_without_an_observer_acquire_is_the_plain_method() -> None:
    seen: list[tuple[str, float]] = []
    with (
        Tollway(POLICY, clock=FakeClock(START)) as plain,
        Tollway(
            POLICY, clock=FakeClock(START), observer=lambda d, s: seen.append((d.subject, s))
        ) as observed,
    ):
        assert plain.acquire.__func__ is Tollway.acquire  # type: ignore[attr-defined]
        assert observed.acquire.__doc__ == Tollway.acquire.__doc__
        decision = observed.acquire("acct", "geocode", 2, id="req-1", attributes={"k": "v"})
        assert decision.allowed and decision.cost == 2
    assert [subject for subject, _ in seen] == ["acct"]
    assert 0 <= seen[0][1] < 5
