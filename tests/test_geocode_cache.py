"""The geocoding result cache (SQLite) and in-flight de-duplication: real files, no mocks."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tollway.errors import InvalidArgumentError, TollwayError
from tollway.outbound.geocode.cache import (
    SCHEMA_VERSION,
    CacheError,
    ResultCache,
    normalize_query,
)
from tollway.outbound.geocode.inflight import (
    AsyncSingleFlight,
    ReentrantCallError,
    SingleFlight,
)
from tollway.outbound.geocode.lookup import CachedLookup, Fetched
from tollway.outbound.geocode.result import GeocodeResult

T = TypeVar("T")

WAIT_S = 10.0  # upper bound for a condition that should hold almost at once


def make_result(query: str = "1600 Amphitheatre Parkway", **kw: Any) -> GeocodeResult:
    fields: dict[str, Any] = {
        "query": query,
        "provider": "opencage",
        "formatted_address": "1600 Amphitheatre Parkway, Mountain View, CA 94043, USA",
        "lat": 37.4224764,
        "lon": -122.0842499,
        "confidence": 9.0,
        "accuracy": "ROOFTOP",
        "raw": {"components": {"city": "Mountain View", "note": "café ☕"}, "list": [1, 2.5]},
    }
    fields.update(kw)
    return GeocodeResult(**fields)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def file_bytes(directory: Path) -> bytes:
    """Everything SQLite wrote in ``directory`` (the database, its WAL and shm files)."""
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


# ====================================================================== normalization

FULL_WIDTH_MAIN_STREET_1 = "".join(chr(ord(c) + 0xFEE0) if c != " " else c for c in "Main Street 1")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("10 Downing Street, London", "  10   DOWNING street,\tlondon\n"),
        (FULL_WIDTH_MAIN_STREET_1, "main street 1"),  # full-width forms (NFKC)
        ("ﬁfth avenue", "Fifth Avenue"),  # ligature (NFKC)
        ("Hauptstraße 5", "HAUPTSTRASSE 5"),  # casefold, not lower
        ("rue\u00a0de\u2003la paix", "Rue de la Paix"),  # non-breaking and em spaces
        ("Cafe\u0301 de Flore", "Caf\u00e9 de Flore"),  # combining accent vs precomposed
    ],
)
def test_normalization_makes_equal_keys(a: str, b: str) -> None:
    assert normalize_query(a) == normalize_query(b)
    assert ResultCache.key(a) == ResultCache.key(b)


def test_normalization_keeps_what_matters_and_is_idempotent() -> None:
    assert normalize_query("  A  b ") == "a b"
    assert normalize_query("1 Main St, Paris") != normalize_query("1 Main St Paris")
    for text in ["\uff2d\uff41\uff49\uff4e  \ufb01", "\u01f0 Straße", "İstanbul"]:
        once = normalize_query(text)
        assert normalize_query(once) == once


def test_normalized_spellings_share_one_entry(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        cache.put("  HAUPTSTRASSE   5 ", make_result(), provider="here")
        hit = cache.get("hauptstraße 5")
        assert hit is not None and hit.matched
        assert len(cache) == 1


# ====================================================================== round trips


def test_put_get_round_trip(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "c.sqlite"
    result = make_result()
    with ResultCache(path, clock=clock) as cache:
        assert cache.get("1600 Amphitheatre Parkway") is None
        assert cache.put("1600 Amphitheatre Parkway", result, provider="opencage") is True
    # A fresh open reads what the first one wrote.
    with ResultCache(path, clock=clock) as cache:
        hit = cache.get("1600 amphitheatre parkway")
        assert hit is not None
        assert hit.matched
        assert hit.result == result
        assert hit.provider == "opencage"
        assert hit.stored_at == clock.now
        assert hit.expires_at is None


def test_no_match_is_cached(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        assert cache.put("nowhere 99", None, provider="nominatim") is True
        hit = cache.get("Nowhere 99")
        assert hit is not None
        assert not hit.matched
        assert hit.result is None
        assert hit.provider == "nominatim"
        assert cache.get("somewhere else") is None


def test_newer_answer_replaces_older(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        cache.put("a street", None, provider="nominatim")
        cache.put("A Street", make_result("A Street"), provider="google")
        hit = cache.get("a street")
        assert hit is not None and hit.provider == "google" and hit.matched
        assert len(cache) == 1


def test_namespaces_are_separate(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        cache.put("1 main st", make_result(lat=1.0), provider="a", namespace="route-a")
        cache.put("1 main st", make_result(lat=2.0), provider="b", namespace="route-b")
        assert cache.get("1 main st") is None  # the default namespace "" is another one
        hit_a = cache.get("1 main st", namespace="route-a")
        hit_b = cache.get("1 main st", namespace="route-b")
        assert hit_a is not None and hit_a.result is not None and hit_a.result.lat == 1.0
        assert hit_b is not None and hit_b.result is not None and hit_b.result.lat == 2.0
        assert len(cache) == 2
        assert cache.clear("route-a") == 1
        assert cache.get("1 main st", namespace="route-a") is None
        assert cache.get("1 main st", namespace="route-b") is not None


def test_delete_clear_len_stats(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        for i in range(5):
            cache.put(f"{i} elm street", None, provider="p", namespace=f"n{i % 2}")
        assert len(cache) == 5
        assert cache.delete("0 ELM STREET", namespace="n0") is True
        assert cache.delete("0 elm street", namespace="n0") is False
        assert len(cache) == 4
        cache.get("1 elm street", namespace="n1")
        cache.get("1 elm street", namespace="n0")
        cache.put("x", make_result(), provider="mapbox", stores_results=False)
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.writes, stats.not_stored) == (1, 1, 5, 1)
        assert cache.clear() == 4
        assert len(cache) == 0


def test_read_takes_a_normalized_key_and_counts_neither_hit_nor_miss(tmp_path: Path) -> None:
    clock = [1000.0]
    with ResultCache(tmp_path / "c.sqlite", clock=lambda: clock[0]) as cache:
        cache.put("1 Elm  Street", make_result(), provider="p", namespace="n", ttl_s=10)
        key = ResultCache.key("1 ELM STREET")
        hit = cache.read(key, "n")
        assert hit is not None and hit.provider == "p" and hit.result == make_result()
        assert cache.read(key) is None  # another namespace
        assert cache.read("1 Elm  Street", "n") is None  # a query, not a key: no match
        assert (cache.stats().hits, cache.stats().misses) == (0, 0)
        clock[0] += 11
        assert cache.read(key, "n") is None  # expired
        with pytest.raises(InvalidArgumentError):
            cache.read(key, namespace=7)  # type: ignore[arg-type]


def test_memory_cache_is_shared_by_threads() -> None:
    with ResultCache(":memory:") as cache:

        def write(i: int) -> None:
            for j in range(50):
                cache.put(f"{i} {j}", None, provider="p")

        threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(cache) == 200
        assert cache.get("3 49") is not None


def test_file_is_in_wal_mode_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    ResultCache(path).close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


# ====================================================================== terms of use


def test_stores_results_false_writes_nothing(tmp_path: Path) -> None:
    forbidden_dir = tmp_path / "forbidden"
    forbidden_dir.mkdir()
    result = make_result()
    with ResultCache(forbidden_dir / "c.sqlite") as cache:
        stored = cache.put(
            "1600 Amphitheatre Parkway", result, provider="mapbox", stores_results=False
        )
        assert stored is False
        assert cache.put("nowhere", None, provider="mapbox", stores_results=False) is False
        assert cache.get("1600 Amphitheatre Parkway") is None
        assert len(cache) == 0
        assert cache  # empty, yet truthy
        written = file_bytes(forbidden_dir)  # while open: the WAL file is there too
    written += file_bytes(forbidden_dir)
    for secret in [b"Amphitheatre", b"Mountain View", b"37.4224764", b"-122.0842499", b"mapbox"]:
        assert secret not in written

    # The control: the same answer, allowed to be stored, is in the files.
    allowed_dir = tmp_path / "allowed"
    allowed_dir.mkdir()
    with ResultCache(allowed_dir / "c.sqlite") as cache:
        assert cache.put("1600 Amphitheatre Parkway", result, provider="opencage") is True
    allowed = file_bytes(allowed_dir)
    assert b"Mountain View" in allowed and b"37.4224764" in allowed


# ====================================================================== TTL


def test_ttl_expiry_with_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    with ResultCache(tmp_path / "c.sqlite", clock=clock) as cache:
        cache.put("short", make_result(), provider="p", ttl_s=10)
        cache.put("forever", None, provider="p")
        hit = cache.get("short")
        assert hit is not None and hit.expires_at == 1010.0
        clock.now = 1009.999
        assert cache.get("short") is not None
        assert len(cache) == 2
        clock.now = 1010.0
        assert cache.get("short") is None
        assert cache.get("forever") is not None
        assert len(cache) == 1
        assert cache.purge_expired() == 1
        # A new answer after expiry is stored and served again.
        cache.put("short", None, provider="p", ttl_s=5)
        assert cache.get("short") is not None
        clock.now = 1_000_000.0
        assert cache.get("short") is None
        assert cache.get("forever") is not None


# ====================================================================== several processes

N_PER_PROCESS = 150


def _process_worker(path: str, barrier: Any, index: int, reports: Any) -> None:
    """Opens the file at the same moment as the other process, then writes and reads."""
    problems: list[str] = []
    try:
        barrier.wait(timeout=60)
        with ResultCache(path) as cache:
            for i in range(N_PER_PROCESS):
                shared = f"{i} shared road"
                cache.put(shared, make_result(shared, lat=float(i)), provider=f"p{index}")
                cache.put(f"{i} own road {index}", None, provider=f"p{index}")
                hit = cache.get(shared)
                if hit is None or hit.result is None or hit.result.lat != float(i):
                    problems.append(f"{index}: {shared!r} read back as {hit!r}")
                if cache.get(f"{i} own road {index}") is None:
                    problems.append(f"{index}: own entry {i} missing")
    except BaseException as exc:
        problems.append(f"{index}: {type(exc).__name__}: {exc}")
    reports.put((index, problems[:5]))


def test_two_processes_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    reports = ctx.Queue()
    args = (path, barrier)
    procs = [ctx.Process(target=_process_worker, args=(*args, i, reports)) for i in range(2)]
    try:
        for proc in procs:
            proc.start()
        results = dict(reports.get(timeout=120) for _ in procs)
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    assert results == {0: [], 1: []}
    assert [proc.exitcode for proc in procs] == [0, 0]

    with ResultCache(path) as cache:
        assert len(cache) == N_PER_PROCESS * 3
        for i in range(N_PER_PROCESS):
            hit = cache.get(f"{i} shared road")
            assert hit is not None and hit.result is not None and hit.result.lat == float(i)
            assert hit.provider in {"p0", "p1"}
            for index in range(2):
                assert cache.get(f"{i} own road {index}") is not None
    raw = sqlite3.connect(path)
    try:
        duplicates = raw.execute(
            "SELECT namespace, key, COUNT(*) FROM geocode_results"
            " GROUP BY namespace, key HAVING COUNT(*) > 1"
        ).fetchall()
        total = raw.execute("SELECT COUNT(*) FROM geocode_results").fetchone()[0]
    finally:
        raw.close()
    assert duplicates == []
    assert total == N_PER_PROCESS * 3


# ====================================================================== SingleFlight


def test_single_flight_16_threads_one_run() -> None:
    flight = SingleFlight()
    release = threading.Event()
    runs = []
    start = threading.Barrier(16)
    results: list[object] = []
    lock = threading.Lock()

    def fn() -> object:
        runs.append(1)
        assert release.wait(WAIT_S)
        return object()  # a new object per run: equal identities prove sharing

    def worker() -> None:
        start.wait(WAIT_S)
        value = flight.do("key", fn)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    # The leader is blocked in fn until all 15 others are waiting on it: a real overlap.
    wait_until(lambda: flight.waiting("key") == 15, "15 waiters")
    release.set()
    for t in threads:
        t.join(WAIT_S)
    assert len(runs) == 1
    assert flight.runs == 1
    assert flight.shared == 15
    assert len(results) == 16 and len({id(r) for r in results}) == 1
    assert flight.in_flight == 0
    # Forgotten once done: the next call runs again.
    assert flight.do("key", lambda: "again") == "again"
    assert flight.runs == 2


def test_single_flight_different_keys_run_separately() -> None:
    flight = SingleFlight()
    # Passes only if the four leaders run at the same time: keys do not block each other.
    leaders = threading.Barrier(4)
    ran: Counter[str] = Counter()
    results: dict[str, list[str]] = {f"k{i}": [] for i in range(4)}
    lock = threading.Lock()
    release = threading.Event()

    def fn(key: str) -> str:
        with lock:
            ran[key] += 1
        leaders.wait(WAIT_S)
        assert release.wait(WAIT_S)
        return key.upper()

    def worker(key: str) -> None:
        value = flight.do(key, lambda: fn(key))
        with lock:
            results[key].append(value)

    threads = [threading.Thread(target=worker, args=(f"k{i % 4}",)) for i in range(12)]
    for t in threads:
        t.start()
    wait_until(lambda: all(flight.waiting(f"k{i}") == 2 for i in range(4)), "2 waiters on each key")
    release.set()
    for t in threads:
        t.join(WAIT_S)
    assert ran == Counter({"k0": 1, "k1": 1, "k2": 1, "k3": 1})
    assert flight.runs == 4 and flight.shared == 8
    assert results == {f"k{i}": [f"K{i}"] * 3 for i in range(4)}


def test_single_flight_exception_reaches_every_waiter() -> None:
    flight = SingleFlight()
    release = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def fn() -> str:
        assert release.wait(WAIT_S)
        raise LookupError("provider said 500")

    def worker() -> None:
        try:
            flight.do("key", fn)
        except LookupError as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: flight.waiting("key") == 7, "7 waiters")
    release.set()
    for t in threads:
        t.join(WAIT_S)
    assert len(errors) == 8
    assert len({id(e) for e in errors}) == 1
    assert str(errors[0]) == "provider said 500"
    assert flight.runs == 1 and flight.shared == 7
    assert flight.in_flight == 0


def test_single_flight_reentrant_call_raises() -> None:
    flight = SingleFlight()
    with pytest.raises(ReentrantCallError, match="'key'"):
        flight.do("key", lambda: flight.do("key", lambda: 1))
    assert flight.in_flight == 0
    assert flight.do("key", lambda: 2) == 2


# ====================================================================== AsyncSingleFlight


async def wait_for_async(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)


async def test_async_single_flight_50_tasks_one_run() -> None:
    flight = AsyncSingleFlight()
    release = asyncio.Event()
    runs = 0

    async def fn() -> object:
        nonlocal runs
        runs += 1
        await release.wait()
        return object()

    tasks = [asyncio.create_task(flight.do("key", fn)) for _ in range(50)]
    await wait_for_async(lambda: flight.waiting("key") == 49, "49 waiters")
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert runs == 1
    assert flight.runs == 1 and flight.shared == 49
    assert len({id(r) for r in results}) == 1
    assert flight.in_flight == 0


async def test_async_exception_reaches_every_waiter() -> None:
    flight = AsyncSingleFlight()
    release = asyncio.Event()

    async def fn() -> int:
        await release.wait()
        raise ValueError("bad answer")

    tasks = [asyncio.create_task(flight.do("key", fn)) for _ in range(10)]
    await wait_for_async(lambda: flight.waiting("key") == 9, "9 waiters")
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert flight.runs == 1 and flight.shared == 9


async def test_async_cancelled_leader_makes_waiters_rerun() -> None:
    """Documented: cancelling the leader cancels only the leader; a waiter re-runs."""
    flight = AsyncSingleFlight()
    calls = 0
    never = asyncio.Event()
    release = asyncio.Event()

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await never.wait()  # the first run hangs until cancelled
        await release.wait()
        return f"run {calls}"

    leader = asyncio.create_task(flight.do("key", fn))
    await wait_for_async(lambda: flight.in_flight == 1, "the leader to start")
    waiters = [asyncio.create_task(flight.do("key", fn)) for _ in range(5)]
    await wait_for_async(lambda: flight.waiting("key") == 5, "5 waiters")
    leader.cancel()
    # One waiter became the new leader; the other four wait for it.
    await wait_for_async(lambda: flight.runs == 2 and flight.waiting("key") == 4, "a re-run")
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters), WAIT_S)
    assert leader.cancelled()
    assert results == ["run 2"] * 5  # none saw CancelledError; one re-ran, four shared it
    assert calls == 2
    assert flight.runs == 2 and flight.shared == 4
    assert flight.in_flight == 0


async def test_async_cancelled_waiter_does_not_disturb_the_others() -> None:
    flight = AsyncSingleFlight()
    release = asyncio.Event()

    async def fn() -> str:
        await release.wait()
        return "done"

    tasks = [asyncio.create_task(flight.do("key", fn)) for _ in range(4)]
    await wait_for_async(lambda: flight.waiting("key") == 3, "3 waiters")
    tasks[2].cancel()
    await wait_for_async(lambda: flight.waiting("key") == 2, "the cancelled waiter to leave")
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert [outcomes[i] for i in (0, 1, 3)] == ["done"] * 3
    assert flight.runs == 1 and flight.shared == 2


# ====================================================================== CachedLookup

ADDRESSES = ["1 Infinite Loop, Cupertino", "10 Downing Street, London", "Champ de Mars, Paris"]


class CountingFetch:
    """A provider stand-in: counts calls per normalized address, slow enough to overlap."""

    def __init__(self, stores_results: bool = True, delay_s: float = 0.02) -> None:
        self.stores_results = stores_results
        self.delay_s = delay_s
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _answer(self, query: str) -> Fetched:
        with self._lock:
            self.calls[normalize_query(query)] += 1
        if "paris" in query.lower():
            return None, "nominatim", self.stores_results  # "nothing found"
        return make_result(query, formatted_address=query.upper()), "opencage", self.stores_results

    def __call__(self, query: str) -> Fetched:
        time.sleep(self.delay_s)
        return self._answer(query)

    async def afetch(self, query: str) -> Fetched:
        await asyncio.sleep(self.delay_s)
        return self._answer(query)


def spellings(address: str) -> list[str]:
    return [address, address.upper(), f"  {address.lower()}  ", address.replace(" ", "   ")]


def run_threads(lookup: CachedLookup, fetch: CountingFetch, n_threads: int = 8) -> list[Any]:
    start = threading.Barrier(n_threads)
    outcomes: list[Any] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            start.wait(WAIT_S)
            for round_ in range(3):
                for a, address in enumerate(ADDRESSES):
                    query = spellings(address)[(index + round_ + a) % 4]
                    outcome = lookup.lookup(query, fetch)
                    with lock:
                        outcomes.append((address, outcome))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 3)
    assert failures == []
    return outcomes


def test_cached_lookup_threads_fetch_each_address_once(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        lookup = CachedLookup(cache, namespace="route-1")
        fetch = CountingFetch()
        outcomes = run_threads(lookup, fetch)
        assert len(outcomes) == 8 * 3 * 3
        assert sorted(fetch.calls.values()) == [1, 1, 1]
        assert lookup.fetches == 3
        for address, (result, _from_cache) in outcomes:
            if "Paris" in address:
                assert result is None
            else:
                assert result is not None
                assert normalize_query(result.formatted_address) == normalize_query(address)
        assert sum(1 for _, (_, from_cache) in outcomes if not from_cache) >= 3

        second = CountingFetch()
        outcomes = run_threads(lookup, second)
        assert sum(second.calls.values()) == 0
        assert all(from_cache for _, (_, from_cache) in outcomes)
        assert lookup.fetches == 3
        assert len(cache) == 3
        assert cache.get(ADDRESSES[0], namespace="route-1") is not None


def test_cached_lookup_rechecks_before_fetching(tmp_path: Path) -> None:
    """An answer stored between our miss and our turn to fetch (say, by another process, or
    by a leader that finished just before we joined) is used, not fetched again."""
    path = tmp_path / "c.sqlite"
    with ResultCache(path) as cache, ResultCache(path) as other:
        lookup = CachedLookup(cache)

        class LateFlight(SingleFlight):
            # Forces the interleaving: the other writer lands right after our miss.
            def do(self, key: Hashable, fn: Callable[[], T]) -> T:
                other.put("9 late street", make_result("9 late street"), provider="elsewhere")
                return super().do(key, fn)

        lookup.flight = LateFlight()
        fetch = CountingFetch(delay_s=0)
        outcome = lookup.lookup("9 Late Street", fetch)
        assert outcome.from_cache
        assert outcome.result is not None and outcome.result.query == "9 late street"
        assert sum(fetch.calls.values()) == 0
        assert lookup.fetches == 0


def test_cached_lookup_without_storing_fetches_again(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        lookup = CachedLookup(cache)
        fetch = CountingFetch(stores_results=False, delay_s=0)
        first = lookup.lookup(ADDRESSES[0], fetch)
        second = lookup.lookup(ADDRESSES[0], fetch)
        assert first.result is not None and not first.from_cache
        assert not second.from_cache
        assert fetch.calls[normalize_query(ADDRESSES[0])] == 2
        assert len(cache) == 0


def test_cached_lookup_ttl_uses_the_cache_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    with ResultCache(tmp_path / "c.sqlite", clock=clock) as cache:
        lookup = CachedLookup(cache, ttl_s=60)
        fetch = CountingFetch(delay_s=0)
        assert not lookup.lookup("5 oak lane", fetch).from_cache
        assert lookup.lookup("5 Oak Lane", fetch).from_cache
        clock.now += 60
        assert not lookup.lookup("5 oak lane", fetch).from_cache
        assert lookup.fetches == 2


async def test_cached_alookup_tasks_fetch_each_address_once(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        lookup = CachedLookup(cache)
        fetch = CountingFetch(delay_s=0.05)
        queries = [spellings(a)[i % 4] for i in range(10) for a in ADDRESSES]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(lookup.alookup(q, fetch.afetch) for q in queries)), WAIT_S
        )
        assert sorted(fetch.calls.values()) == [1, 1, 1]
        assert lookup.fetches == 3
        assert lookup.async_flight.shared + sum(o.from_cache for o in outcomes) == 27
        again = await lookup.alookup(ADDRESSES[1].upper(), fetch.afetch)
        assert again.from_cache and again.result is not None
        assert lookup.fetches == 3


def test_cached_lookup_fetch_errors_are_not_cached(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        lookup = CachedLookup(cache)

        def failing(query: str) -> Fetched:
            raise TimeoutError("provider timed out")

        with pytest.raises(TimeoutError):
            lookup.lookup("7 birch road", failing)
        assert len(cache) == 0
        assert not lookup.lookup("7 birch road", CountingFetch(delay_s=0)).from_cache

        with pytest.raises(InvalidArgumentError, match="fetch returned"):
            lookup.lookup("8 birch road", lambda q: "not a tuple")  # type: ignore[arg-type,return-value]


# ====================================================================== bad input and bad files


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda c: c.get(123), ["query", "123", "expected a str"]),
        (lambda c: c.get(None), ["query", "None", "expected a str"]),
        (lambda c: c.get(" \t\u3000 "), ["query", "expected an address"]),
        (lambda c: c.get("x", namespace=7), ["namespace", "7", "expected a str"]),
        (lambda c: c.put("x", None, provider="p", ttl_s=-1), ["ttl_s", "-1", "expected"]),
        (lambda c: c.put("x", None, provider="p", ttl_s=0), ["ttl_s", "0", "> 0"]),
        (lambda c: c.put("x", None, provider="p", ttl_s=float("nan")), ["ttl_s", "nan"]),
        (lambda c: c.put("x", "Paris", provider="p"), ["result", "'Paris'", "GeocodeResult"]),
        (lambda c: c.put("x", None, provider=""), ["provider", "''", "non-empty"]),
        (lambda c: c.put("", None, provider="p"), ["query", "''", "expected an address"]),
        (
            lambda c: c.put("x", None, provider="p", stores_results="no"),
            ["stores_results", "'no'", "bool"],
        ),
        (
            lambda c: c.put("x", make_result(lat=float("nan")), provider="p"),
            ["result", "finite"],
        ),
        (lambda c: c.delete(b"x"), ["query", "b'x'", "expected a str"]),
    ],
)
def test_bad_input_is_named(tmp_path: Path, call: Callable[[Any], Any], words: list[str]) -> None:
    with ResultCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(InvalidArgumentError) as info:
            call(cache)
        assert len(cache) == 0
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, TollwayError)


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="path"):
        ResultCache(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="busy_timeout_s: -1"):
        ResultCache(tmp_path / "c.sqlite", busy_timeout_s=-1)
    with (
        ResultCache(tmp_path / "c.sqlite") as cache,
        pytest.raises(InvalidArgumentError, match="ttl_s: -5"),
    ):
        CachedLookup(cache, ttl_s=-5)


def test_corrupt_file_is_a_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"this is certainly not a SQLite database\n" * 200)
    with pytest.raises(CacheError) as info:
        ResultCache(path)
    assert str(path) in str(info.value)
    assert "not a SQLite database" in str(info.value)
    assert isinstance(info.value, TollwayError)
    assert not isinstance(info.value, sqlite3.Error)


def test_a_missing_folder_is_made_and_a_file_in_the_way_is_a_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "c.sqlite"
    with ResultCache(path) as cache:
        cache.put("x", None, provider="p")
    assert path.is_file()
    (tmp_path / "file").write_text("not a folder")
    blocked = tmp_path / "file" / "c.sqlite"
    with pytest.raises(CacheError, match="cannot create the folder") as info:
        ResultCache(blocked)
    assert str(blocked) in str(info.value)


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with ResultCache(path) as cache:
        cache.put("x", None, provider="p")
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 98}")
    raw.commit()
    raw.close()
    with pytest.raises(CacheError) as info:
        ResultCache(path)
    message = str(info.value)
    assert str(path) in message
    assert f"version {SCHEMA_VERSION + 98}" in message
    assert f"version {SCHEMA_VERSION}" in message
    # Refused without being changed.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 98
    finally:
        raw.close()


def test_damaged_entry_is_a_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with ResultCache(path) as cache:
        cache.put("x", make_result(), provider="p")
    raw = sqlite3.connect(path)
    raw.execute("UPDATE geocode_results SET result = '{not json'")
    raw.commit()
    raw.close()
    with ResultCache(path) as cache, pytest.raises(CacheError, match="damaged entry for 'x'"):
        cache.get("x")


def test_closed_cache_is_a_cache_error(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(CacheError, match="closed"):
        cache.get("x")
    with pytest.raises(CacheError, match="closed"):
        cache.put("x", None, provider="p")
    assert "closed" in repr(cache)
