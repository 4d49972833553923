"""Routes: a provider with headroom is held on every limit at once, health gates skip the rest.

The memory store on a fake clock for the logic (no sleeping: time is advanced), then the same
scenarios on a real Redis (standalone and a 3-master cluster), where only Redis's clock runs.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tollway import AsyncTollway, NoProviderAvailable, Tollway, TollwayError, UnknownNameError
from tollway.outbound.flows import report
from tollway.outbound.signals import ProviderCallError, Signal
from tollway.testing import FakeClock

US = 1_000_000
LA = ZoneInfo("America/Los_Angeles")


def policy(**overrides: Any) -> dict[str, Any]:
    providers: dict[str, Any] = {
        "opencage": {"price": "0 USD", "limits": [{"name": "daily", "quota": "3/day"}]},
        "google": {
            "price": "0.005 USD",
            "timezone": "America/Los_Angeles",
            "breaker_errors": 2,
            "breaker_open_ms": 30_000,
            "probe_ms": 5_000,
            "limits": [
                {"name": "qps", "rate": "50/s"},
                {"name": "daily", "quota": "100/day"},
                {"name": "budget", "budget": "0.02 USD/day", "thresholds": [0.5, 1.0]},
            ],
        },
        "here": {"price": "0.001 USD", "limits": [{"name": "daily", "quota": "2/day"}]},
    }
    routes: dict[str, Any] = {"geocoding": {"providers": ["opencage", "google", "here"]}}
    doc: dict[str, Any] = {
        "store": {"timeout_ms": 2000, "on_error": "closed"},
        "providers": providers,
        "routes": routes,
    }
    for key, value in overrides.items():
        doc[key] = value
    return doc


def at(text: str) -> FakeClock:
    return FakeClock(datetime.fromisoformat(text))


@pytest.fixture
def clock() -> FakeClock:
    return at("2026-06-10T12:00:00+00:00")


@pytest.fixture
def tw(clock: FakeClock) -> Tollway:
    return Tollway(policy(), clock=clock)


def served(route: Any, n: int) -> list[str]:
    out = []
    for _ in range(n):
        with route.call() as call:
            out.append(call.provider)
    return out


# -- choosing and failing over -----------------------------------------------------------------


def test_priority_order_fails_over_when_a_quota_is_used_up(tw: Tollway) -> None:
    route = tw.route("geocoding")
    assert served(route, 3) == ["opencage"] * 3
    with route.call() as call:
        assert call.provider == "google"
        assert [(s.provider, s.reason) for s in call.skipped] == [("opencage", "daily")]
        # the skip says when opencage takes calls again: its UTC midnight, 12 h away
        assert call.skipped[0].retry_after == pytest.approx(12 * 3600)


def test_budget_is_never_overshot_and_money_is_exact(tw: Tollway) -> None:
    route = tw.route("geocoding", on_threshold=None)
    providers = served(route, 3 + 4 + 2)  # opencage's 3, google's $0.02 / $0.005, here's 2
    assert Counter(providers) == {"opencage": 3, "google": 4, "here": 2}
    with pytest.raises(NoProviderAvailable) as caught:
        route.call()
    reasons = {s.provider: s.reason for s in caught.value.skipped}
    assert reasons == {"opencage": "daily", "google": "budget", "here": "daily"}
    google = route.status()["google"]
    assert google.limit("budget").used == Decimal("0.020")
    assert google.limit("budget").remaining == Decimal("0")
    assert google.limit("daily").used == 4
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert "google: budget" in str(caught.value)


def test_commit_takes_the_actual_cost_and_release_gives_all_back(tw: Tollway) -> None:
    route = tw.route("geocoding")
    served(route, 3)  # opencage is full: google is next
    with route.call(cost=2) as call:
        assert call.provider == "google"
        assert call.decision.limit("budget").used == Decimal("0.010")
        committed = call.commit(cost=1)
    assert committed.limit("budget").used == Decimal("0.005")
    with route.call() as call:
        call.release()
    assert route.status()["google"].limit("daily").used == 1


def test_an_exception_in_the_block_releases_and_records_the_signal(tw: Tollway) -> None:
    route = tw.route("geocoding")
    with pytest.raises(ProviderCallError), route.call() as call:
        raise ProviderCallError(call.provider, Signal.throttled(7.0, "HTTP 429"))
    status = route.status()["opencage"]
    assert status.limit("daily").used == 0  # released
    assert status.limit("cooldown").reset_after == pytest.approx(7.0)
    with route.call() as call:
        assert call.provider == "google"
        assert call.skipped[0].reason == "cooldown"


def test_cheapest_strategy_prefers_the_lowest_price_with_headroom(clock: FakeClock) -> None:
    doc = policy()
    doc["routes"]["geocoding"]["strategy"] = "cheapest"
    doc["routes"]["geocoding"]["providers"] = ["google", "here", "opencage"]
    route = Tollway(doc, clock=clock).route("geocoding")
    assert served(route, 6) == ["opencage"] * 3 + ["here"] * 2 + ["google"]


def test_weighted_strategy_follows_the_weights(clock: FakeClock) -> None:
    doc = policy()
    big = [{"name": "daily", "quota": "100000/day"}]
    doc["providers"] = {
        "a": {"price": "0 USD", "weight": 3, "limits": big},
        "b": {"price": "0 USD", "weight": 1, "limits": big},
        "c": {"price": "0 USD", "weight": 0, "limits": big},
    }
    doc["routes"] = {"mix": {"providers": ["a", "b", "c"], "strategy": "weighted"}}
    route = Tollway(doc, clock=clock).route("mix", rng=random.Random(7))
    counts = Counter(served(route, 4000))
    assert counts["c"] == 0  # weight 0: only when every weighted provider is out
    assert 2.6 < counts["a"] / counts["b"] < 3.4


# -- health: cooldown, exhaustion, blocking, the breaker ---------------------------------------


def test_cooldown_can_be_extended_never_shortened(tw: Tollway, clock: FakeClock) -> None:
    route = tw.route("geocoding")
    with route.call() as call:
        call.release(Signal.throttled(10.0))
    with route.call() as call:
        assert call.provider == "google"
        call.commit()
    clock.advance(2)
    opencage = route.status()["opencage"]
    tw.driver.run(report(route.core, "opencage", Signal.throttled(3.0), opencage, False))
    assert route.status()["opencage"].limit("cooldown").reset_after == pytest.approx(8.0)
    opencage = route.status()["opencage"]
    tw.driver.run(report(route.core, "opencage", Signal.throttled(20.0), opencage, False))
    assert route.status()["opencage"].limit("cooldown").reset_after == pytest.approx(20.0)
    clock.advance(20)
    assert served(route, 1) == ["opencage"]


def test_throttle_without_retry_after_cools_down_one_second(tw: Tollway) -> None:
    route = tw.route("geocoding")
    with route.call() as call:
        call.release(Signal.throttled())
    assert route.status()["opencage"].limit("cooldown").reset_after == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("now", "reset"),
    [
        # the day before the fall-back change: midnight PDT (UTC-7)
        ("2026-10-31T10:00:00-07:00", "2026-11-01T00:00:00-07:00"),
        # the 25-hour day of the change: the next midnight is PST (UTC-8)
        ("2026-11-01T12:00:00-08:00", "2026-11-02T00:00:00-08:00"),
        # the 23-hour day of the spring-forward change
        ("2026-03-08T01:30:00-08:00", "2026-03-09T00:00:00-07:00"),
    ],
)
def test_exhausted_until_the_providers_own_midnight_across_dst(now: str, reset: str) -> None:
    clock = at(now)
    tw = Tollway(policy(), clock=clock)
    route = tw.route("geocoding")
    served(route, 3)
    with route.call() as call:
        assert call.provider == "google"
        call.release(Signal.exhausted("OVER_DAILY_LIMIT"))
    until = datetime.fromisoformat(reset).timestamp()
    wait = route.status()["google"].limit("exhausted").reset_after
    assert wait == pytest.approx(until - datetime.fromisoformat(now).timestamp())
    clock.advance(wait - 1)
    with route.call(exclude=["opencage"]) as call:  # opencage's UTC day may have turned
        assert call.provider == "here"
        assert [(s.provider, s.reason) for s in call.skipped] == [("google", "exhausted")]
        call.release()
    clock.advance(1)
    with route.call(exclude=["opencage"]) as call:
        assert call.provider == "google"  # its own midnight: back


def test_exhausted_until_the_reset_the_provider_names(tw: Tollway, clock: FakeClock) -> None:
    route = tw.route("geocoding")
    reset = clock() / US + 600
    with route.call() as call:
        call.release(Signal.exhausted("HTTP 402", reset_at=reset))
    assert route.status()["opencage"].limit("exhausted").reset_after == pytest.approx(600)


def test_a_provider_without_windows_is_exhausted_until_its_local_midnight(
    clock: FakeClock,
) -> None:
    doc = policy()
    doc["providers"] = {"free": {"timezone": "America/Los_Angeles", "limits": []}}
    doc["routes"] = {"r": {"providers": ["free"]}}
    route = Tollway(doc, clock=clock).route("r")
    with route.call() as call:
        call.release(Signal.exhausted())
    now = datetime.fromtimestamp(clock() / US, tz=LA)
    midnight = datetime(now.year, now.month, now.day, tzinfo=LA).timestamp() + 86400
    wait = route.status()["free"].limit("exhausted").reset_after
    assert wait == pytest.approx(midnight - clock() / US)


def test_blocked_stays_skipped_until_cleared(tw: Tollway, clock: FakeClock) -> None:
    route = tw.route("geocoding")
    with route.call() as call:
        call.release(Signal.blocked("HTTP 403"))
    clock.advance(30 * 86400)
    assert served(route, 1) == ["google"]
    route.clear("opencage")
    assert served(route, 1) == ["opencage"]
    with pytest.raises(UnknownNameError, match="not on route 'geocoding'"):
        route.clear("mapbox")


def _fail_google(route: Any) -> None:
    with route.call(exclude=["opencage"]) as call:
        assert call.provider == "google"
        call.release(Signal.error("HTTP 500"))


def test_breaker_opens_then_lets_one_probe_through(tw: Tollway, clock: FakeClock) -> None:
    route = tw.route("geocoding")
    _fail_google(route)
    _fail_google(route)  # 2 errors: open for 30 s
    with route.call(exclude=["opencage"]) as call:
        assert call.provider == "here"
        assert call.skipped[0].reason == "breaker"
        assert call.skipped[0].retry_after == pytest.approx(30)
        call.release()
    clock.advance(30)
    probe = route.call(exclude=["opencage"])
    assert (probe.provider, probe.probe) == ("google", True)
    # while the probe is out, nobody else gets google
    with route.call(exclude=["opencage"]) as other:
        assert other.provider == "here"
        other.release()
    probe.commit()  # it worked: closed
    with route.call(exclude=["opencage"]) as call:
        assert (call.provider, call.probe) == ("google", False)


def test_a_failed_probe_opens_the_breaker_again(tw: Tollway, clock: FakeClock) -> None:
    route = tw.route("geocoding")
    _fail_google(route)
    _fail_google(route)
    clock.advance(30)
    with route.call(exclude=["opencage"]) as probe:
        assert probe.probe
        probe.release(Signal.error("timeout"))
    wait = route.status()["google"].limit("breaker").reset_after
    assert wait == pytest.approx(30)


def test_a_probe_that_never_reports_frees_the_next_after_probe_ms(
    tw: Tollway, clock: FakeClock
) -> None:
    route = tw.route("geocoding")
    _fail_google(route)
    _fail_google(route)
    clock.advance(30)
    route.call(exclude=["opencage"])  # the probe's process died: never settled
    clock.advance(5)
    with route.call(exclude=["opencage"]) as call:
        assert (call.provider, call.probe) == ("google", True)


def test_errors_outside_the_window_do_not_add_up(tw: Tollway, clock: FakeClock) -> None:
    route = tw.route("geocoding")
    _fail_google(route)
    clock.advance(61)
    _fail_google(route)  # a new window: 1 error, still closed
    with route.call(exclude=["opencage"]) as call:
        assert call.provider == "google"


def test_provider_remaining_corrects_the_local_count(tw: Tollway) -> None:
    route = tw.route("geocoding")
    with route.call() as call:
        call.commit(signal=Signal.ok(remaining=1))  # the provider says: 1 left of 3
    assert route.status()["opencage"].limit("daily").used == 2
    with route.call() as call:
        call.commit(signal=Signal.ok(remaining=2))  # never lowers the count
    assert route.status()["opencage"].limit("daily").used == 3
    assert served(route, 1) == ["google"]


def test_threshold_alerts_fire_once_per_window(tw: Tollway, clock: FakeClock) -> None:
    alerts: list[Any] = []
    route = tw.route("geocoding", on_threshold=alerts.append)
    served(route, 3 + 4)
    assert [(a.provider, a.limit, a.threshold) for a in alerts] == [
        ("google", "budget", Decimal("0.5")),
        ("google", "budget", Decimal("1.0")),
    ]
    assert alerts[0].used == Decimal("0.010")
    clock.advance(86400)
    served(route, 3 + 2)
    assert len(alerts) == 3  # the next day's 50 %


def test_a_failing_alert_sink_does_not_break_the_call(tw: Tollway) -> None:
    def sink(alert: Any) -> None:
        raise RuntimeError("pager down")

    route = tw.route("geocoding", on_threshold=sink)
    assert len(served(route, 3 + 4)) == 7


# -- run: fallback on failure ------------------------------------------------------------------


def test_run_fails_over_on_provider_errors_and_says_why(tw: Tollway) -> None:
    route = tw.route("geocoding")
    seen: list[str] = []

    def geocode(provider: str) -> str:
        seen.append(provider)
        if provider == "opencage":
            raise ProviderCallError(provider, Signal.exhausted("HTTP 402"))
        return f"{provider}:ok"

    outcome = route.run(geocode)
    assert (outcome.value, outcome.provider) == ("google:ok", "google")
    assert [(s.provider, s.reason) for s in outcome.skipped] == [("opencage", "failed")]
    assert "exhausted" in outcome.skipped[0].detail
    assert outcome.decision.limit("budget").used == Decimal("0.005")
    again = route.run(geocode)
    assert [(s.provider, s.reason) for s in again.skipped] == [("opencage", "exhausted")]
    assert seen == ["opencage", "google", "google"]


def test_run_gives_up_after_the_retries(tw: Tollway) -> None:
    route = tw.route("geocoding")

    def broken(provider: str) -> None:
        raise ProviderCallError(provider, Signal.error("HTTP 500"))

    with pytest.raises(NoProviderAvailable) as caught:
        route.run(broken, retries=1)
    assert [s.provider for s in caught.value.skipped] == ["opencage", "google"]
    with pytest.raises(NoProviderAvailable) as caught:
        route.run(broken)
    assert [s.provider for s in caught.value.skipped] == ["opencage", "google", "here"]
    status = route.status()
    assert all(int(status[p].limit("daily").used) == 0 for p in status)  # all released


def test_run_lets_a_non_provider_error_through_and_releases(tw: Tollway) -> None:
    route = tw.route("geocoding")

    def bug(provider: str) -> None:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        route.run(bug)
    assert route.status()["opencage"].limit("daily").used == 0


def test_run_with_a_classifier(tw: Tollway) -> None:
    route = tw.route("geocoding")

    def classify(exc: BaseException) -> Signal | None:
        return Signal.throttled(5) if isinstance(exc, TimeoutError) else None

    def slow(provider: str) -> str:
        if provider == "opencage":
            raise TimeoutError
        return provider

    assert route.run(slow, classify=classify).provider == "google"
    assert route.status()["opencage"].limit("cooldown").reset_after == pytest.approx(5)


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_route_and_bad_costs(tw: Tollway) -> None:
    with pytest.raises(UnknownNameError, match="route: 'maps' is not declared"):
        tw.route("maps")
    route = tw.route("geocoding")
    with pytest.raises(TollwayError, match="cost"):
        route.call(cost=0)
    with pytest.raises(NoProviderAvailable) as caught:
        route.call(cost=500)  # more than any provider allows in all
    assert all(s.retry_after is None for s in caught.value.skipped)


def test_provider_subjects_are_reserved(tw: Tollway) -> None:
    with pytest.raises(TollwayError, match="reserved for the providers"):
        tw.acquire("@provider:google", "call")


def test_provider_settings_are_checked_with_their_key_path() -> None:
    doc = policy()
    doc["providers"]["google"]["breaker_errors"] = 0
    doc["providers"]["google"]["scheme"] = "ftp"
    doc["providers"]["here"]["api_key_env"] = "9KEY"
    with pytest.raises(TollwayError) as caught:
        Tollway(doc)
    text = str(caught.value)
    assert "providers.google.breaker_errors: expected an integer >= 1, got 0" in text
    assert 'providers.google.scheme: expected "https" or "http", got "ftp"' in text
    assert "providers.here.api_key_env" in text


# -- the asyncio face ---------------------------------------------------------------------------


async def test_async_route_fails_over_and_records_health(clock: FakeClock) -> None:
    atw = AsyncTollway(policy(), clock=clock)
    route = atw.route("geocoding")
    async with await route.call() as call:
        assert call.provider == "opencage"
        await call.release(Signal.throttled(4))
    async with await route.call() as call:
        assert call.provider == "google"
        assert call.skipped[0].reason == "cooldown"

    async def geocode(provider: str) -> str:
        await asyncio.sleep(0)
        if provider == "google":
            raise ProviderCallError(provider, Signal.error("HTTP 503"))
        return provider

    outcome = await route.run(geocode)
    assert outcome.provider == "here"
    assert [s.reason for s in outcome.skipped] == ["cooldown", "failed"]
    status = await route.status()
    assert status["here"].limit("daily").used == 1
    await route.clear("opencage")
    assert (await route.status())["opencage"].limit("cooldown").reset_after == 0


# -- the same on a real Redis --------------------------------------------------------------------


@pytest.fixture(params=["standalone", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "standalone":
        request.getfixturevalue("redis_client")
        return str(request.getfixturevalue("redis_url"))
    request.getfixturevalue("redis_cluster_client")
    return str(request.getfixturevalue("redis_cluster_url"))


def test_redis_route_fails_over_and_keeps_health(store_url: str) -> None:
    with Tollway(policy(), store_url) as tw:
        route = tw.route("geocoding")
        assert served(route, 3) == ["opencage"] * 3
        with route.call() as call:
            assert call.provider == "google"
            call.release(Signal.throttled(120))
        with route.call() as call:
            assert call.provider == "here"
            assert [(s.provider, s.reason) for s in call.skipped] == [
                ("opencage", "daily"),
                ("google", "cooldown"),
            ]
            assert 119 < (call.skipped[1].retry_after or 0) <= 120
        _fail_google_after_clear(route)
        status = route.status()
        assert status["google"].limit("breaker").reset_after == pytest.approx(30, abs=1)
        assert status["opencage"].limit("daily").used == 3
        route.clear("google")
        with route.call() as call:
            assert call.provider == "google"
            committed = call.commit(signal=Signal.ok(remaining=90))
        assert committed.limit("budget").used == Decimal("0.005")
        assert route.status()["google"].limit("daily").used == 10


def _fail_google_after_clear(route: Any) -> None:
    route.clear("google")
    for _ in range(2):
        with route.call(exclude=["opencage", "here"]) as call:
            call.release(Signal.error("HTTP 500"))


async def test_async_redis_route(redis_client: Any, redis_url: str) -> None:
    async with AsyncTollway(policy(), redis_url) as atw:
        route = atw.route("geocoding")
        providers = []
        for _ in range(3 + 4 + 2):
            async with await route.call() as call:
                providers.append(call.provider)
        assert Counter(providers) == {"opencage": 3, "google": 4, "here": 2}
        with pytest.raises(NoProviderAvailable):
            await route.call()
        status = await route.status()
        assert status["google"].limit("budget").used == Decimal("0.020")


# -- a call left unsettled (its process died) stays counted ------------------------------------


def test_an_unsettled_provider_hold_stays_counted_when_it_expires(
    tw: Tollway, clock: FakeClock
) -> None:
    route = tw.route("geocoding")
    served(route, 3)
    lost = route.call()  # google, never settled: the call may have been billed
    assert lost.provider == "google"
    clock.advance(61)  # past hold_ttl_ms (60 s)
    status = route.status()["google"]
    assert status.limit("daily").used == 1
    assert status.limit("budget").used == Decimal("0.005")
    lost.commit()  # a late commit does not count it twice
    assert route.status()["google"].limit("daily").used == 1
    late = route.call()
    clock.advance(61)
    late.release()  # a late release gives it back
    assert route.status()["google"].limit("daily").used == 1


def test_redis_a_call_is_one_round_trip_and_counted_at_once(store_url: str) -> None:
    import redis as redis_py
    import redis.cluster

    client: Any = (
        redis.cluster.RedisCluster.from_url(store_url.replace("redis+cluster", "redis"))
        if "cluster" in store_url
        else redis_py.Redis.from_url(store_url)
    )

    def scripts_run() -> int:
        if "cluster" in store_url:  # one answer per primary
            info = client.info("commandstats", target_nodes=client.PRIMARIES)
            return sum(int(v.get("cmdstat_evalsha", {}).get("calls", 0)) for v in info.values())
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    with Tollway(policy(), store_url) as tw:
        route = tw.route("geocoding")
        served(route, 1)  # scripts loaded, connections made
        before = scripts_run()
        with route.call() as call:
            call.commit()
        assert scripts_run() - before == 1  # one step per call, no settle
        lost = route.call()  # its process dies here: the call is counted already
        assert lost.provider == "opencage"
        assert route.status()["opencage"].limit("daily").used == 3
        assert client.exists("tw:{@provider:opencage}:holds") == 0  # nothing left to expire
        lost.commit()  # a late commit does not count it twice
        assert route.status()["opencage"].limit("daily").used == 3
        with route.call() as call:
            call.release()  # a release gives it back: one more step
        assert route.status()["google"].limit("daily").used == 0
    client.close()


def test_a_provider_call_without_the_store_follows_on_error(clock: FakeClock) -> None:
    doc = policy()
    doc["store"] = {"url": "redis://127.0.0.1:1/0", "timeout_ms": 50, "on_error": "closed"}
    with Tollway(doc, clock=clock) as tw, pytest.raises(NoProviderAvailable) as caught:
        tw.route("geocoding").call()
    assert {s.reason for s in caught.value.skipped} == {"unavailable"}
