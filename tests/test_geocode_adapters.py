"""The adapters drive the real geopy classes against the stub providers: results and signals."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest

from tollway.errors import ConfigurationError, InvalidArgumentError
from tollway.outbound.geocode.adapters import (
    ADAPTER_KINDS,
    Answer,
    GeocodeAdapter,
    make_adapter,
    read_rate_headers,
)
from tollway.outbound.geocode.result import GeocodeResult
from tollway.outbound.geocode.stubs import (
    EMPTY_QUERY,
    KINDS,
    OPENCAGE_KEY_402,
    OPENCAGE_KEY_403,
    StubServer,
    next_midnight_utc,
    running_stubs,
    stub_place,
    stub_result,
)
from tollway.outbound.signals import ProviderCallError, Signal

QUERY = "1600 Amphitheatre Parkway"


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubServer]]:
    with running_stubs() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(stubs: dict[str, StubServer]) -> None:
    for stub in stubs.values():
        stub.reset()


def adapter_for(stub: StubServer, **options: Any) -> GeocodeAdapter:
    options.setdefault("api_key", None if stub.kind == "nominatim" else "test-key")
    options.setdefault("timeout", 2.0)
    return make_adapter(stub.kind, domain=stub.domain, scheme=stub.scheme, **options)


def failure(adapter: GeocodeAdapter, query: str = QUERY) -> Signal:
    with pytest.raises(ProviderCallError) as caught:
        adapter.lookup(query)
    assert caught.value.provider == adapter.provider
    return caught.value.signal


# What each provider's result says about confidence and accuracy, by stub precision.
def expected_scores(kind: str, query: str) -> tuple[float | None, str]:
    place = stub_place(query)
    level = place.level
    if kind == "google":
        return None, ("ROOFTOP", "RANGE_INTERPOLATED", "APPROXIMATE", "APPROXIMATE")[level]
    if kind == "here":
        return place.score, ("houseNumber", "street", "locality", "administrativeArea")[level]
    if kind == "opencage":
        return float((10, 8, 5, 2)[level]), ("building", "road", "city", "state")[level]
    if kind == "nominatim":
        return place.score, ("place", "road", "city", "state")[level]
    return place.score, ("address", "address", "place", "region")[level]


def test_adapter_kinds_match_stub_kinds() -> None:
    assert sorted(ADAPTER_KINDS) == sorted(KINDS)


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("query", [QUERY, "Käthe-Kollwitz-Straße 3/5, Zürich", "Main St"])
def test_normal_query_gives_the_normalized_result(
    kind: str, query: str, stubs: dict[str, StubServer]
) -> None:
    adapter = adapter_for(stubs[kind], provider="geo-main")
    answer = adapter.lookup(query)
    place = stub_place(query)
    confidence, accuracy = expected_scores(kind, query)
    assert answer.result == GeocodeResult(
        query=query,
        provider="geo-main",
        formatted_address=place.formatted_address,
        lat=place.lat,
        lon=place.lon,
        confidence=confidence,
        accuracy=accuracy,
        raw=stub_result(kind, query) or {},
    )
    assert answer.signal.kind == "ok"
    assert stubs[kind].queries == [query]


@pytest.mark.parametrize("kind", KINDS)
def test_nowhere_interesting_is_none_with_an_ok_signal(
    kind: str, stubs: dict[str, StubServer]
) -> None:
    adapter = adapter_for(stubs[kind])
    answer = adapter.lookup(EMPTY_QUERY)
    assert answer.result is None and answer.signal.kind == "ok"
    assert adapter.geocode(EMPTY_QUERY) is None
    assert stubs[kind].served == 2  # nothing found, still billed


@pytest.mark.parametrize("kind", KINDS)
def test_geocode_is_lookups_result(kind: str, stubs: dict[str, StubServer]) -> None:
    adapter = adapter_for(stubs[kind])
    assert adapter.geocode(QUERY) == adapter.lookup(QUERY).result


def test_adapter_serves_again_after_a_failure(stubs: dict[str, StubServer]) -> None:
    adapter = adapter_for(stubs["opencage"])
    stubs["opencage"].throttle(1, "3")
    assert failure(adapter).kind == "throttled"
    answer = adapter.lookup(QUERY)  # nothing left over from the failed call
    assert answer.signal == Signal.ok(remaining=2499, reset_at=float(next_midnight_utc()))


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize("kind", KINDS)
def test_quota_used_up(kind: str, stubs: dict[str, StubServer]) -> None:
    adapter = adapter_for(stubs[kind])
    stubs[kind].quota(2)
    assert [adapter.lookup(f"street {i}").signal.kind for i in range(2)] == ["ok", "ok"]
    signal = failure(adapter)
    if kind in ("nominatim", "mapbox"):
        # Neither has a quota answer, only 429s: throttled until the window's end (midnight).
        assert signal.kind == "throttled"
        assert signal.retry_after is not None
        assert abs(signal.retry_after - (next_midnight_utc() - time.time())) <= 2
    else:
        assert signal.kind == "exhausted" and signal.remaining == 0
        assert signal.detail  # says what the provider said
    if kind == "opencage":
        assert signal.reset_at == next_midnight_utc()
        assert "402" in signal.detail
    if kind == "google":
        assert signal.detail.startswith("OVER_DAILY_LIMIT")
    assert stubs[kind].served == 2


@pytest.mark.parametrize("kind", KINDS)
def test_throttle_with_retry_after_seconds(kind: str, stubs: dict[str, StubServer]) -> None:
    stubs[kind].throttle(1, retry_after="7")
    signal = failure(adapter_for(stubs[kind]))
    assert signal.kind == "throttled"
    assert signal.retry_after == 7.0


@pytest.mark.parametrize("kind", KINDS)
def test_throttle_with_retry_after_http_date(kind: str, stubs: dict[str, StubServer]) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=40)
    stubs[kind].throttle(1, retry_after=format_datetime(when, usegmt=True))
    signal = failure(adapter_for(stubs[kind]))
    assert signal.kind == "throttled"
    assert signal.retry_after is not None
    expected = (when - datetime.now(timezone.utc)).total_seconds()
    assert abs(signal.retry_after - expected) <= 1.0  # an HTTP-date has whole seconds


@pytest.mark.parametrize("kind", KINDS)
def test_block_is_blocked(kind: str, stubs: dict[str, StubServer]) -> None:
    adapter = adapter_for(stubs[kind])
    stubs[kind].block()
    signal = failure(adapter)
    assert signal.kind == "blocked"
    assert failure(adapter).kind == "blocked"  # every call
    if kind == "google":
        assert signal.detail.startswith("REQUEST_DENIED")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [500, 503])
def test_server_failure_is_an_error(kind: str, status: int, stubs: dict[str, StubServer]) -> None:
    stubs[kind].fail(1, status=status)
    signal = failure(adapter_for(stubs[kind]))
    assert signal.kind == "error"
    assert f"HTTP {status}" in signal.detail


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_is_an_error(kind: str, stubs: dict[str, StubServer]) -> None:
    stubs[kind].garbage()
    signal = failure(adapter_for(stubs[kind]))
    assert signal.kind == "error"
    assert len(signal.detail) <= 200


@pytest.mark.parametrize("kind", KINDS)
def test_slow_past_the_timeout_is_an_error(kind: str, stubs: dict[str, StubServer]) -> None:
    stubs[kind].slow(0.6)
    adapter = adapter_for(stubs[kind], timeout=0.15)
    started = time.monotonic()
    signal = failure(adapter)
    assert time.monotonic() - started < 0.55  # gave up, did not wait for the answer
    assert signal.kind == "error"
    assert signal.detail.startswith("timeout")


def test_opencage_test_keys(stubs: dict[str, StubServer]) -> None:
    assert failure(adapter_for(stubs["opencage"], api_key=OPENCAGE_KEY_402)).kind == "exhausted"
    assert failure(adapter_for(stubs["opencage"], api_key=OPENCAGE_KEY_403)).kind == "blocked"


def test_opencage_rate_counts_down(stubs: dict[str, StubServer]) -> None:
    stubs["opencage"].quota(5)
    adapter = adapter_for(stubs["opencage"])
    signals = [adapter.lookup(f"street {i}").signal for i in range(3)]
    reset = float(next_midnight_utc())
    assert signals == [Signal.ok(remaining=n, reset_at=reset) for n in (4, 3, 2)]


@pytest.mark.parametrize("kind", ["google", "here", "nominatim", "mapbox"])
def test_no_rate_figures_when_the_provider_sends_none(
    kind: str, stubs: dict[str, StubServer]
) -> None:
    # Mapbox sends X-Rate-Limit-Reset but no count: a reset time alone is not reported.
    assert adapter_for(stubs[kind]).lookup(QUERY).signal == Signal.ok()


def test_read_rate_headers() -> None:
    assert read_rate_headers({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "1700000000"}) == (
        3,
        1_700_000_000.0,
    )
    assert read_rate_headers({"x-rate-limit-remaining": "0"}) == (0, None)
    assert read_rate_headers({"RateLimit-Remaining": "9", "RateLimit-Reset": "30"}, now=1000.0) == (
        9,
        1030.0,
    )
    assert read_rate_headers({"X-RateLimit-Remaining": "lots", "X-RateLimit-Reset": "-5"}) == (
        None,
        None,
    )
    assert read_rate_headers({}) == (None, None)


# ------------------------------------------------------------------ threads and asyncio


def test_one_adapter_from_many_threads(stubs: dict[str, StubServer]) -> None:
    stub = stubs["opencage"]
    stub.quota(1000)
    adapter = adapter_for(stub)
    threads, each = 8, 10
    answers: dict[str, Answer] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(each):
                query = f"thread {n} street {i}"
                answer = adapter.lookup(query)
                with lock:
                    answers[query] = answer
        except BaseException as error:  # surfaced below
            errors.append(error)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    total = threads * each
    assert stub.calls == stub.served == total
    assert sorted(stub.queries) == sorted(answers)
    for query, answer in answers.items():
        assert answer.result is not None and answer.result.lat == stub_place(query).lat
    # Each answer got its own response's count: no thread read another's headers.
    remaining = sorted(a.signal.remaining or -1 for a in answers.values())
    assert remaining == list(range(1000 - total, 1000))


async def test_async_face(stubs: dict[str, StubServer]) -> None:
    adapter = adapter_for(stubs["here"])
    queries = [f"async street {i}" for i in range(6)]
    results = await asyncio.gather(*(adapter.ageocode(q) for q in queries))
    assert [r.lat if r else None for r in results] == [stub_place(q).lat for q in queries]
    answer = await adapter.alookup(EMPTY_QUERY)
    assert answer == Answer(None, Signal.ok())
    stubs["here"].throttle(1, "4")
    with pytest.raises(ProviderCallError) as caught:
        await adapter.alookup(QUERY)
    assert caught.value.signal == Signal.throttled(4.0, caught.value.signal.detail)
    assert stubs["here"].calls == 8


# ------------------------------------------------------------------ configuration


def test_stores_results_defaults_and_override(stubs: dict[str, StubServer]) -> None:
    assert {k: adapter_for(stubs[k]).stores_results for k in KINDS} == {
        "nominatim": True,
        "opencage": True,
        "google": True,
        "here": True,
        "mapbox": False,
    }
    assert adapter_for(stubs["mapbox"], stores_results=True).stores_results is True
    assert adapter_for(stubs["google"], stores_results=False).stores_results is False


def test_provider_defaults_to_kind(stubs: dict[str, StubServer]) -> None:
    adapter = adapter_for(stubs["mapbox"])
    assert adapter.provider == "mapbox" and adapter.kind == "mapbox"
    assert adapter.geocode(QUERY) is not None
    assert adapter.lookup(QUERY).result.provider == "mapbox"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"kind": "bing", "api_key": "k"}, "kind: 'bing'; expected one of google, here"),
        ({"kind": "google"}, "api_key: None; expected the google API key"),
        ({"kind": "here", "api_key": "  "}, "api_key: '  '"),
        ({"kind": "opencage", "api_key": "k", "scheme": "ftp"}, "scheme: 'ftp'"),
        ({"kind": "opencage", "api_key": "k", "timeout": 0}, "timeout: 0; expected seconds"),
        ({"kind": "opencage", "api_key": "k", "timeout": True}, "timeout: True"),
        ({"kind": "mapbox", "api_key": "k", "domain": "https://x.org"}, "domain: 'https://x.org'"),
        ({"kind": "nominatim", "provider": ""}, "provider: ''"),
        ({"kind": "nominatim", "user_agent": ""}, "user_agent: ''"),
        ({"kind": "nominatim", "stores_results": "yes"}, "stores_results: 'yes'"),
    ],
)
def test_configuration_mistakes_are_named(options: dict[str, Any], words: str) -> None:
    kind = options.pop("kind")
    with pytest.raises(ConfigurationError) as caught:
        make_adapter(kind, **options)
    assert words in str(caught.value)


@pytest.mark.parametrize("query", ["", "   ", 42, None, b"bytes"])
async def test_bad_queries_are_named(query: Any, stubs: dict[str, StubServer]) -> None:
    adapter = adapter_for(stubs["google"])
    with pytest.raises(InvalidArgumentError, match=r"query: .*expected a non-empty string"):
        adapter.lookup(query)
    with pytest.raises(InvalidArgumentError, match="query"):
        await adapter.alookup(query)
    assert stubs["google"].calls == 0  # refused before any billed call


def test_default_domains_need_no_stub() -> None:
    # Building an adapter for the real providers sends nothing.
    adapter = make_adapter("here", api_key="k")
    assert adapter.kind == "here" and adapter.stores_results
    assert make_adapter("nominatim").provider == "nominatim"


def test_unreachable_provider_is_an_error() -> None:
    with StubServer("opencage") as gone:
        adapter = adapter_for(gone)
    signal = failure(adapter)  # nobody listens on that port any more
    assert signal.kind == "error" and signal.detail


def test_loopback_stubs_bypass_a_configured_proxy(
    stubs: dict[str, StubServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy cannot reach this machine's loopback; port 9 (discard) refuses connections.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert adapter_for(stubs["google"]).lookup(QUERY).signal.kind == "ok"


# -- adapters from a policy: every missing key at once ---------------------------------------------


def test_every_missing_key_is_reported_at_once_with_its_key_path() -> None:
    from tollway.outbound.geocode.from_policy import STUBS_HINT, adapters_from_policy
    from tollway.policy import load

    policy = load(
        {
            "providers": {
                "a": {"kind": "opencage", "api_key_env": "TW_TEST_A", "price": "0 USD"},
                "b": {"kind": "google", "api_key_env": "TW_TEST_B", "price": "0 USD"},
                "c": {"kind": "nominatim", "price": "0 USD"},
                "d": {"kind": "here", "price": "0 USD"},
                "e": {"kind": "mapbox", "api_key_env": "TW_TEST_E", "price": "0 USD"},
            },
        }
    )
    with pytest.raises(ConfigurationError) as caught:
        adapters_from_policy(policy, ["a", "b", "c", "d", "e"], env={"TW_TEST_E": "k"})
    text = str(caught.value)
    assert text.startswith("3 providers cannot be called: ")
    for part in (
        "providers.a.api_key_env: the environment variable TW_TEST_A is not set",
        "providers.b.api_key_env: the environment variable TW_TEST_B is not set",
        "providers.d.api_key_env: missing (expected the name of the environment variable that "
        "holds the here API key)",
    ):
        assert part in text
    assert "providers.c" not in text and "providers.e" not in text
    assert text.endswith(f"({STUBS_HINT})")
    # one missing key: the message it always was, plus where stub keys come from
    with pytest.raises(ConfigurationError) as caught:
        adapters_from_policy(policy, ["a", "c"], env={})
    assert str(caught.value) == (
        "providers.a.api_key_env: the environment variable TW_TEST_A is not set; expected it "
        f"to hold the provider's API key ({STUBS_HINT})"
    )
    built = adapters_from_policy(policy, ["a", "c"], env={"TW_TEST_A": "k"})
    assert {name: adapter.kind for name, adapter in built.items()} == {
        "a": "opencage",
        "c": "nominatim",
    }
