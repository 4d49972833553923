"""`Geocoder`: addresses through a route of real stub providers over real HTTP and real geopy.

The memory store runs on a `FakeClock` set to the real time (the stubs put real times in their
answers: rate resets, HTTP-dates), in a timezone where it is about noon, so no daily window
ends during a test; time that must pass (a cooldown, an open breaker, an exhausted day) is
advanced on the clock, never slept.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from geocode_support import ENV, KEY_ENV, adapters, policy, provider
from model import day_safe_timezone
from tollway import Tollway
from tollway.errors import ConfigurationError
from tollway.money import micros_to_decimal
from tollway.outbound.geocode.cache import ResultCache
from tollway.outbound.geocode.geocoder import GeocodeOutcome, Geocoder, adapters_from_policy
from tollway.outbound.geocode.stubs import (
    EMPTY_QUERY,
    StubServer,
    next_midnight_utc,
    running_stubs,
    stub_place,
)
from tollway.outbound.routing import Skip
from tollway.testing import FakeClock

US = 1_000_000
KINDS = ("opencage", "google", "here", "nominatim", "mapbox")


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubServer]]:
    with running_stubs(KINDS) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(stubs: dict[str, StubServer]) -> None:
    for stub in stubs.values():
        stub.reset()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def tz(clock: FakeClock) -> str:
    return day_safe_timezone(clock())


def to_midnight(clock: FakeClock, tz: str) -> float:
    """Seconds from the clock's now to the next midnight in ``tz``."""
    now = datetime.fromtimestamp(clock() / US, ZoneInfo(tz))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
    return (midnight - now).total_seconds()


def geocoder(doc: dict[str, Any], clock: FakeClock, **options: Any) -> Geocoder:
    tw = Tollway(doc, clock=clock)
    return Geocoder(tw, adapters=adapters(tw), **options)


def reasons(outcome: GeocodeOutcome) -> list[tuple[str, str]]:
    return [(skip.provider, skip.reason) for skip in outcome.skipped]


def used(g: Geocoder, provider: str, limit: str) -> int | Decimal:
    return g.route.status()[provider].limit(limit).used


# ------------------------------------------------------------------------------ failing over


def test_a_batch_fails_over_as_quotas_and_budgets_run_out(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    doc = policy(
        {
            "opencage": provider(
                stubs["opencage"], price="0 USD", limits=[{"name": "daily", "quota": "3/day"}]
            ),
            "google": provider(
                stubs["google"],
                price="0.005 USD",
                limits=[{"name": "budget", "budget": "0.02 USD/day"}],
            ),
            "here": provider(
                stubs["here"], price="0.001 USD", limits=[{"name": "daily", "quota": "2/day"}]
            ),
        },
        timezone=tz,
    )
    g = geocoder(doc, clock)
    queries = [f"{n} Rue de Rivoli, Paris" for n in range(1, 11)]
    outcomes = [g.geocode(q) for q in queries]

    by = [o.provider for o in outcomes]
    assert by == ["opencage"] * 3 + ["google"] * 4 + ["here"] * 2 + [None]
    assert [o.status for o in outcomes] == ["ok"] * 9 + ["failed"]
    # each answer is the stub's place for that very address
    for query, outcome in zip(queries[:9], outcomes, strict=False):
        assert outcome.result is not None and not outcome.from_cache
        assert (outcome.result.lat, outcome.result.lon) == (
            stub_place(query).lat,
            stub_place(query).lon,
        )
        assert outcome.result.provider == outcome.provider
    # the reasons each provider was passed over, and when it takes calls again (its midnight)
    assert [reasons(o) for o in outcomes] == (
        [[]] * 3
        + [[("opencage", "daily")]] * 4
        + [[("opencage", "daily"), ("google", "budget")]] * 2
        + [[("opencage", "daily"), ("google", "budget"), ("here", "daily")]]
    )
    midnight = to_midnight(clock, tz)
    for skip in outcomes[-1].skipped:
        assert skip.retry_after == pytest.approx(midnight, abs=1)
    last = outcomes[-1]
    assert last.decision is None and last.result is None
    for name in ("opencage: daily", "google: budget", "here: daily"):
        assert name in last.error

    # money, exactly: google's four calls at $0.005 fill its $0.02 budget to the micro-dollar
    google = [o for o in outcomes if o.provider == "google"]
    assert [o.decision.amount for o in google if o.decision] == [5000] * 4
    spent = sum(
        (micros_to_decimal(o.decision.amount or 0) for o in google if o.decision), Decimal(0)
    )
    assert spent == Decimal("0.02")
    status = g.route.status()
    assert status["google"].limit("budget").used == Decimal("0.020")
    assert status["google"].limit("budget").remaining == Decimal("0")
    # what the route committed is what each stub served, and saw, in order
    assert status["opencage"].limit("daily").used == stubs["opencage"].served == 3
    assert status["google"].limit("budget").used == Decimal("0.005") * stubs["google"].served
    assert status["here"].limit("daily").used == stubs["here"].served == 2
    assert stubs["opencage"].queries == queries[0:3]
    assert stubs["google"].queries == queries[3:7]
    assert stubs["here"].queries == queries[7:9]
    assert {k: s.calls for k, s in stubs.items()} == {
        "opencage": 3,
        "google": 4,
        "here": 2,
        "nominatim": 0,
        "mapbox": 0,
    }


def test_the_providers_own_count_stops_the_route_before_its_quota_answer(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    # OpenCage's free trial says in each answer how many calls are left ("rate"): its count
    # wins over the policy's larger quota, so the route stops before any 402.
    stubs["opencage"].quota(4)
    doc = policy(
        {
            "opencage": provider(
                stubs["opencage"], price="0 USD", limits=[{"name": "daily", "quota": "100/day"}]
            ),
            "nominatim": provider(
                stubs["nominatim"], price="0 USD", limits=[{"name": "daily", "quota": "100/day"}]
            ),
        },
        timezone=tz,
    )
    g = geocoder(doc, clock)
    outcomes = [g.geocode(f"{n} Kurfürstendamm") for n in range(6)]
    assert [o.provider for o in outcomes] == ["opencage"] * 4 + ["nominatim"] * 2
    assert reasons(outcomes[4]) == [("opencage", "daily")]
    assert stubs["opencage"].calls == stubs["opencage"].served == 4  # no refused call was made
    assert used(g, "opencage", "daily") == 100


# ------------------------------------------------------------------------------ the cache


def test_the_same_address_is_paid_once_whatever_its_case_and_spacing(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    doc = policy(
        {
            "google": provider(
                stubs["google"],
                price="0.005 USD",
                limits=[{"name": "budget", "budget": "1 USD/day"}],
            )
        },
        timezone=tz,
    )
    g = geocoder(doc, clock)
    first = g.geocode("12 Rue de la Paix, Paris")
    again = [
        g.geocode(q)
        for q in (
            "12 Rue de la Paix, Paris",
            "  12 RUE DE LA   paix, paris ",
            "12\true de la paix,\u00a0PARIS",  # a tab and a non-breaking space
        )
    ]
    assert first.status == "ok" and not first.from_cache and first.decision is not None
    assert first.result is not None
    for outcome in again:
        assert outcome.status == "ok" and outcome.from_cache
        assert outcome.provider == "google" and outcome.decision is None
        assert outcome.result == first.result
    assert stubs["google"].calls == 1
    assert used(g, "google", "budget") == Decimal("0.005")
    # punctuation is part of the address: another key, another (paid) call
    g.geocode("12 Rue de la Paix Paris")
    assert stubs["google"].calls == 2
    assert used(g, "google", "budget") == Decimal("0.010")


def test_nothing_found_is_cached_too(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    doc = policy(
        {
            "here": provider(
                stubs["here"], price="0.001 USD", limits=[{"name": "daily", "quota": "10/day"}]
            )
        },
        timezone=tz,
    )
    g = geocoder(doc, clock)
    first = g.geocode(EMPTY_QUERY)
    assert (first.status, first.result, first.provider, first.from_cache) == (
        "no_match",
        None,
        "here",
        False,
    )
    assert first.decision is not None  # billed all the same
    second = g.geocode(EMPTY_QUERY.lower())
    assert (second.status, second.result, second.provider, second.from_cache) == (
        "no_match",
        None,
        "here",
        True,
    )
    assert stubs["here"].calls == stubs["here"].served == 1
    assert used(g, "here", "daily") == 1


def test_a_provider_that_forbids_storing_is_called_every_time(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    limits = [{"name": "daily", "quota": "10/day"}]
    doc = policy({"mapbox": provider(stubs["mapbox"], price="0.00075 USD", limits=limits)})
    doc["defaults"] = {"timezone": tz}
    cache = ResultCache(":memory:")
    g = geocoder(doc, clock, cache=cache)
    outcomes = [g.geocode("1 Market St, San Francisco") for _ in range(3)]
    assert [(o.status, o.provider, o.from_cache) for o in outcomes] == [("ok", "mapbox", False)] * 3
    assert stubs["mapbox"].calls == 3
    assert used(g, "mapbox", "daily") == 3
    assert len(cache) == 0
    assert cache.stats().not_stored == 3

    # the policy may say its results may be stored (a permanent-geocoding account)
    doc["providers"]["mapbox"]["stores_results"] = True
    g = geocoder(doc, clock)
    assert not g.geocode("2 Market St, San Francisco").from_cache
    assert g.geocode("2 Market St, San Francisco").from_cache
    assert stubs["mapbox"].calls == 4


def test_a_cache_file_is_shared_by_geocoders_and_kept_apart_by_route(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str, tmp_path: Path
) -> None:
    limits = [{"name": "daily", "quota": "10/day"}]
    doc = policy(
        {"opencage": provider(stubs["opencage"], price="0 USD", limits=limits)}, timezone=tz
    )
    doc["routes"]["other"] = {"providers": ["opencage"]}
    path = tmp_path / "answers.sqlite"
    with geocoder(doc, clock, cache=path) as g:
        assert not g.geocode("5 Avenue Anatole France").from_cache
    with geocoder(doc, clock, cache=path) as g:  # a later run
        hit = g.geocode("5 avenue anatole france")
        assert hit.from_cache and hit.provider == "opencage"
    tw = Tollway(doc, clock=clock)
    with Geocoder(tw, "other", adapters=adapters(tw, "other"), cache=path) as g:
        assert not g.geocode("5 Avenue Anatole France").from_cache  # another route: its own
    assert stubs["opencage"].calls == 2


# ------------------------------------------------------------------------------ single flight


def test_eight_threads_asking_for_one_address_make_one_call(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    doc = policy(
        {
            "here": provider(
                stubs["here"], price="0.001 USD", limits=[{"name": "daily", "quota": "50/day"}]
            )
        },
        timezone=tz,
    )
    g = geocoder(doc, clock)
    stubs["here"].slow(0.4)  # the first call is still out when the other seven ask
    barrier = threading.Barrier(8, timeout=10)
    outcomes: list[GeocodeOutcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def ask(n: int) -> None:
        try:
            barrier.wait()
            outcome = g.geocode("Domkloster 4, Köln" if n % 2 else " domkloster 4, KÖLN")
            with lock:
                outcomes.append(outcome)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(outcomes) == 8
    assert stubs["here"].calls == 1
    assert used(g, "here", "daily") == 1
    assert {(o.status, o.provider) for o in outcomes} == {("ok", "here")}
    first = outcomes[0].result
    assert first is not None and all(o.result == first for o in outcomes)


def test_single_flight_waiters_are_not_reported_as_paid_calls(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    doc = policy(
        {
            "here": provider(
                stubs["here"], price="0.001 USD", limits=[{"name": "daily", "quota": "50/day"}]
            )
        },
        timezone=tz,
    )
    g = geocoder(doc, clock)
    stubs["here"].slow(0.4)
    barrier = threading.Barrier(8, timeout=10)
    outcomes: list[GeocodeOutcome] = []

    def ask() -> None:
        barrier.wait()
        outcomes.append(g.geocode("Domkloster 4, Köln"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert stubs["here"].calls == 1
    assert len(outcomes) == 8
    # one call was paid: one outcome carries the paid decision, the others did not pay
    assert sum(o.decision is not None for o in outcomes) == 1
    assert sum(not o.from_cache for o in outcomes) == 1


# ------------------------------------------------------------------------------ failures


def failover_policy(stubs: dict[str, StubServer], kind: str, tz: str) -> dict[str, Any]:
    """``primary`` (a paid stub of ``kind``, a breaker after 3 errors, a 250 ms timeout),
    then ``backup`` (nominatim)."""
    return policy(
        {
            "primary": provider(
                stubs[kind],
                price="0.005 USD",
                limits=[
                    {"name": "daily", "quota": "100/day"},
                    {"name": "budget", "budget": "1.00 USD/day"},
                ],
                breaker_errors=3,
                breaker_open_ms=30_000,
                timeout_ms=250,
            ),
            "backup": provider(
                stubs["nominatim"], price="0 USD", limits=[{"name": "daily", "quota": "100/day"}]
            ),
        },
        timezone=tz,
    )


def assert_released(g: Geocoder, stub: StubServer, calls: int, served: int = 0) -> None:
    """``primary`` was called ``calls`` times, ``served`` answered normally, none counted."""
    assert stub.calls == calls
    assert stub.served == served
    status = g.route.status()["primary"]
    assert status.limit("daily").used == 0
    assert status.limit("budget").used == Decimal(0)


def failed_skip(outcome: GeocodeOutcome, signal: str) -> Skip:
    assert outcome.status == "ok" and outcome.provider == "backup"
    assert reasons(outcome) == [("primary", "failed")]
    skip = outcome.skipped[0]
    assert skip.detail.startswith(f"{signal}: ")
    return skip


PRIMARY_KINDS = ("google", "here", "opencage", "mapbox")


@pytest.mark.parametrize("kind", PRIMARY_KINDS)
def test_throttle_with_retry_after_seconds_cools_down_then_fails_over(
    kind: str, stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    g = geocoder(failover_policy(stubs, kind, tz), clock)
    stubs[kind].throttle(1, retry_after="30")
    skip = failed_skip(g.geocode("1 Throttle Lane"), "throttled")
    assert skip.retry_after == 30.0
    assert_released(g, stubs[kind], calls=1)
    assert g.route.status()["primary"].limit("cooldown").reset_after == pytest.approx(30)

    second = g.geocode("2 Throttle Lane")
    assert second.provider == "backup"
    assert reasons(second) == [("primary", "cooldown")]
    assert second.skipped[0].retry_after == pytest.approx(30)
    assert stubs[kind].calls == 1  # skipped, not called

    clock.advance(30.5)
    third = g.geocode("3 Throttle Lane")
    assert (third.provider, reasons(third)) == ("primary", [])
    assert g.route.status()["primary"].limit("budget").used == Decimal("0.005")
    assert stubs["nominatim"].served == 2


@pytest.mark.parametrize("kind", PRIMARY_KINDS)
def test_throttle_with_retry_after_as_an_http_date(
    kind: str, stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    g = geocoder(failover_policy(stubs, kind, tz), clock)
    when = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=45)
    stubs[kind].throttle(1, retry_after=format_datetime(when, usegmt=True))
    skip = failed_skip(g.geocode("1 Date Street"), "throttled")
    assert skip.retry_after is not None and 42 <= skip.retry_after <= 45
    assert_released(g, stubs[kind], calls=1)
    cooldown = g.route.status()["primary"].limit("cooldown").reset_after
    assert cooldown == pytest.approx(skip.retry_after, abs=0.01)
    assert reasons(g.geocode("2 Date Street")) == [("primary", "cooldown")]
    clock.advance(46)
    assert g.geocode("3 Date Street").provider == "primary"


@pytest.mark.parametrize(
    ("kind", "allowance"),
    # OpenCage's answers count down what is left, which stops the route before its 402
    # (test above): here it is out of quota from the first call.
    [("google", 1), ("here", 1), ("opencage", 0)],
)
def test_a_quota_answer_marks_the_provider_exhausted_until_its_reset(
    kind: str, allowance: int, stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    g = geocoder(failover_policy(stubs, kind, tz), clock)
    stubs[kind].quota(allowance)  # the provider's own quota is smaller than the policy's
    for n in range(allowance):
        assert g.geocode(f"{n} Quota Road").provider == "primary"
    skip = failed_skip(g.geocode("2 Quota Road"), "exhausted")
    assert skip.retry_after is None
    # the calls within its quota billed, the refused one given back
    assert stubs[kind].calls == allowance + 1 and stubs[kind].served == allowance
    status = g.route.status()["primary"]
    assert status.limit("daily").used == allowance
    assert status.limit("budget").used == Decimal("0.005") * allowance
    # until when: OpenCage says (its midnight UTC); the others at the end of the policy's day
    if kind == "opencage":
        expected = next_midnight_utc(clock() / US) - clock() / US
    else:
        expected = to_midnight(clock, tz)
    assert status.limit("exhausted").reset_after == pytest.approx(expected, abs=1)

    third = g.geocode("3 Quota Road")
    assert third.provider == "backup"
    assert reasons(third) == [("primary", "exhausted")]
    assert stubs[kind].calls == allowance + 1

    clock.advance(expected + 1)  # the next day: the provider has a fresh quota
    stubs[kind].quota(None)
    fourth = g.geocode("4 Quota Road")
    assert (fourth.provider, reasons(fourth)) == ("primary", [])


@pytest.mark.parametrize("kind", PRIMARY_KINDS)
def test_a_refused_key_blocks_the_provider_until_it_is_cleared(
    kind: str, stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    g = geocoder(failover_policy(stubs, kind, tz), clock)
    stubs[kind].block()
    skip = failed_skip(g.geocode("1 Denied Drive"), "blocked")
    assert skip.retry_after is None
    assert_released(g, stubs[kind], calls=1)
    blocked = g.route.status()["primary"].limit("blocked").reset_after
    assert blocked == pytest.approx(365 * 86400, rel=1e-3)
    clock.advance(7 * 86400)  # a week later: still blocked, still not called
    later = g.geocode("2 Denied Drive")
    assert (later.provider, reasons(later)) == ("backup", [("primary", "blocked")])
    assert stubs[kind].calls == 1

    stubs[kind].reset()  # the key is fixed
    g.route.clear("primary")
    assert g.geocode("3 Denied Drive").provider == "primary"


def test_errors_open_the_breaker_after_breaker_errors(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    stub = stubs["google"]
    g = geocoder(failover_policy(stubs, "google", tz), clock)

    stub.fail(1, status=500)
    assert "HTTP 500" in failed_skip(g.geocode("1 Error Avenue"), "error").detail
    assert_released(g, stub, calls=1)

    stub.garbage(1)
    failed_skip(g.geocode("2 Error Avenue"), "error")
    assert_released(g, stub, calls=2)

    stub.slow(1.0)  # past the 250 ms timeout
    started = time.monotonic()
    skip = failed_skip(g.geocode("3 Error Avenue"), "error")
    assert time.monotonic() - started < 0.9  # gave up on it, did not wait for the answer
    assert "timeout" in skip.detail
    # The stub did answer (too late), so the provider billed it: a timed-out call may have
    # been billed, and is committed, not released; the address goes to the backup all the same.
    assert (stub.calls, stub.served) == (3, 1)
    status = g.route.status()["primary"]
    assert status.limit("daily").used == 1
    assert status.limit("budget").used == Decimal("0.005")

    # three errors within the window: the breaker is open, the provider is not called
    fourth = g.geocode("4 Error Avenue")
    assert (fourth.provider, reasons(fourth)) == ("backup", [("primary", "breaker")])
    assert fourth.skipped[0].retry_after == pytest.approx(30)
    assert stub.calls == 3
    assert stubs["nominatim"].served == 4
    assert stubs["nominatim"].queries == [f"{n} Error Avenue" for n in range(1, 5)]

    clock.advance(31)  # half open: one probe goes through, it answers, the breaker closes
    probe = g.geocode("5 Error Avenue")
    assert (probe.provider, reasons(probe)) == ("primary", [])
    after = g.geocode("6 Error Avenue")
    assert (after.provider, reasons(after)) == ("primary", [])
    assert g.route.status()["primary"].limit("budget").used == Decimal("0.015")  # timeout too
    assert stub.served == 3


def test_two_errors_do_not_open_a_breaker_of_three(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    g = geocoder(failover_policy(stubs, "here", tz), clock)
    stubs["here"].fail(2, status=503)
    assert [g.geocode(f"{n} Patience Row").provider for n in range(3)] == [
        "backup",
        "backup",
        "primary",
    ]
    assert stubs["here"].calls == 3 and stubs["here"].served == 1


def test_every_provider_failing_is_a_failed_outcome_with_nothing_spent(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    g = geocoder(failover_policy(stubs, "opencage", tz), clock)
    stubs["opencage"].garbage(1)
    stubs["nominatim"].fail(1, status=502)
    outcome = g.geocode("1 Nowhere Reachable")
    assert outcome.status == "failed" and outcome.result is None and outcome.decision is None
    assert reasons(outcome) == [("primary", "failed"), ("backup", "failed")]
    assert "HTTP 502" in outcome.skipped[1].detail
    assert "no provider can take the call" in outcome.error
    assert_released(g, stubs["opencage"], calls=1)
    assert stubs["nominatim"].calls == 1 and stubs["nominatim"].served == 0
    assert g.route.status()["backup"].limit("daily").used == 0
    # a failure is not cached: the next try is a fresh (and this time paid) call
    again = g.geocode("1 Nowhere Reachable")
    assert (again.status, again.provider, again.from_cache) == ("ok", "primary", False)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("query", ["", "   ", "\t\n", "\u00a0"])
def test_a_query_with_nothing_in_it_is_invalid_and_calls_nobody(
    query: str, stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    g = geocoder(failover_policy(stubs, "google", tz), clock)
    outcome = g.geocode(query)
    assert outcome.status == "invalid"
    assert "expected an address" in outcome.error
    assert stubs["google"].calls == stubs["nominatim"].calls == 0


def test_a_non_string_query_is_invalid(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    g = geocoder(failover_policy(stubs, "google", tz), clock)
    outcome = g.geocode(42)  # type: ignore[arg-type]
    assert outcome.status == "invalid" and "expected a str" in outcome.error
    assert stubs["google"].calls == 0


# ------------------------------------------------------------------------------ configuration


def config(**primary: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"price": "0.005 USD", "limits": [{"name": "d", "quota": "9/day"}]}
    table.update(primary)
    return policy({"geo": table})


@pytest.mark.parametrize(
    ("table", "env", "message"),
    [
        (
            {},
            ENV,
            "providers.geo.kind: missing; expected the adapter to call it with, one of google, "
            "here, opencage, nominatim, mapbox",
        ),
        (
            {"kind": "bing", "api_key_env": "BING_KEY"},
            {"BING_KEY": "k"},
            "providers.geo.kind: 'bing' is not a geocoder; expected one of google, here, "
            "opencage, nominatim, mapbox",
        ),
        (
            {"kind": "google", "api_key_env": "TOLLWAY_TEST_UNSET_KEY"},
            {},
            "providers.geo.api_key_env: the environment variable TOLLWAY_TEST_UNSET_KEY is not "
            "set; expected it to hold the provider's API key",
        ),
        (
            {"kind": "here", "api_key_env": "EMPTY_KEY"},
            {"EMPTY_KEY": ""},
            "providers.geo.api_key_env: the environment variable EMPTY_KEY is not set",
        ),
        (
            {"kind": "opencage"},
            ENV,
            "providers.geo.api_key_env: missing; expected the name of the environment variable "
            "that holds the opencage API key",
        ),
    ],
)
def test_adapters_from_policy_names_the_key_at_fault(
    table: dict[str, Any], env: dict[str, str], message: str
) -> None:
    tw = Tollway(config(**table))
    with pytest.raises(ConfigurationError) as caught:
        adapters_from_policy(tw.policy, ["geo"], env=env)
    assert str(caught.value).startswith(message)


def test_adapters_from_policy_builds_each_kind_and_takes_overrides(
    stubs: dict[str, StubServer], clock: FakeClock
) -> None:
    tw = Tollway(
        policy(
            {
                kind: {"price": "0 USD", "kind": kind}
                | ({} if kind == "nominatim" else {"api_key_env": KEY_ENV[kind]})
                for kind in KINDS
            }
        ),
        clock=clock,
    )
    built = adapters_from_policy(
        tw.policy,
        list(KINDS),
        env=ENV,
        domains={k: s.domain for k, s in stubs.items()},
        scheme="http",
    )
    assert {name: a.kind for name, a in built.items()} == {k: k for k in KINDS}
    assert {name: a.stores_results for name, a in built.items()} == {
        k: k != "mapbox" for k in KINDS
    }
    # pointed at the stubs by the overrides: every one answers
    for kind, adapter in built.items():
        assert adapter.geocode("Plaza Mayor 1, Madrid") is not None
        assert stubs[kind].calls == 1


def test_the_geocoder_reads_the_keys_from_the_environment(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = failover_policy(stubs, "google", tz)
    monkeypatch.delenv(KEY_ENV["google"], raising=False)
    with pytest.raises(ConfigurationError, match=r"^providers\.primary\.api_key_env: "):
        Geocoder(Tollway(doc, clock=clock))
    monkeypatch.setenv(KEY_ENV["google"], "from-the-environment")
    with Geocoder(Tollway(doc, clock=clock)) as g:
        assert g.geocode("Karlsplatz 1, Wien").provider == "primary"
    assert stubs["google"].calls == 1


def test_an_adapter_missing_for_a_provider_of_the_route_is_named(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    tw = Tollway(failover_policy(stubs, "google", tz), clock=clock)
    only = {"primary": adapters(tw)["primary"]}
    with pytest.raises(ConfigurationError) as caught:
        Geocoder(tw, adapters=only)
    assert str(caught.value).startswith("adapters: no adapter for backup of route 'geocoding'")


def test_outcomes_tally_with_what_the_stubs_saw(
    stubs: dict[str, StubServer], clock: FakeClock, tz: str
) -> None:
    # A mixed run: every paid outcome is one stub query, nothing else reached a stub.
    g = geocoder(failover_policy(stubs, "here", tz), clock)
    stubs["here"].fail(1)
    queries = [f"{n % 7} Tally Street" for n in range(20)] + [EMPTY_QUERY, "", EMPTY_QUERY]
    outcomes = [g.geocode(q) for q in queries]
    paid = Counter(o.provider for o in outcomes if o.decision is not None)
    assert paid == {"primary": stubs["here"].served, "backup": stubs["nominatim"].served}
    assert sorted(stubs["here"].queries + stubs["nominatim"].queries) == sorted(
        [f"{n} Tally Street" for n in range(7)] + ["0 Tally Street", EMPTY_QUERY]
    )
    assert Counter(o.status for o in outcomes) == {"ok": 20, "no_match": 2, "invalid": 1}
