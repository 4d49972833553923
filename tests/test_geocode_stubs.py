"""The stub providers speak each provider's wire format and follow their behaviour program.

Raw HTTP here (no geopy): what goes over the wire is what is checked.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tollway.errors import InvalidArgumentError
from tollway.outbound.geocode.stubs import (
    CITY,
    COUNTRY,
    DEFAULT_DAILY_LIMIT,
    EMPTY_QUERY,
    KINDS,
    OPENCAGE_KEY_402,
    OPENCAGE_KEY_403,
    PRECISIONS,
    StubServer,
    next_midnight_utc,
    running_stubs,
    stub_place,
    stub_result,
)

KEY = "test-key"


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubServer]]:
    with running_stubs() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(stubs: dict[str, StubServer]) -> None:
    for stub in stubs.values():
        stub.reset()


def target(kind: str, query: str, key: str | None = KEY, **extra: str) -> str:
    """The request geopy would send for ``query`` (``key=None``: no key)."""
    keyed = {} if key is None else {"key": key}
    if kind == "nominatim":
        return "/search?" + urlencode({"q": query, "format": "json", **extra})
    if kind == "opencage":
        return "/geocode/v1/json?" + urlencode({"q": query, **keyed, **extra})
    if kind == "google":
        return "/maps/api/geocode/json?" + urlencode({"address": query, **keyed, **extra})
    if kind == "here":
        apikey = {} if key is None else {"apiKey": key}
        return "/v1/geocode?" + urlencode({"q": query, **apikey, **extra})
    token = {} if key is None else {"access_token": key}
    return f"/geocoding/v5/mapbox.places/{quote(query)}.json?" + urlencode({**token, **extra})


def get(
    stub: StubServer, path: str, method: str = "GET", timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(stub.host, stub.port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def get_json(stub: StubServer, path: str) -> tuple[int, dict[str, str], Any]:
    status, headers, body = get(stub, path)
    assert headers["content-type"].startswith("application/json"), (status, body)
    return status, headers, json.loads(body)


def results_of(kind: str, page: Any) -> list[dict[str, Any]]:
    key = {"opencage": "results", "google": "results", "here": "items", "mapbox": "features"}
    return list(page) if kind == "nominatim" else list(page[key[kind]])


# ------------------------------------------------------------------ deterministic places


def test_places_are_stable_across_processes() -> None:
    code = (
        "from tollway.outbound.geocode.stubs import stub_place;"
        "p = stub_place('Rue de Rivoli 1, Paris'); print(repr((p.lat, p.lon, p.precision)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    place = stub_place("Rue de Rivoli 1, Paris")
    assert out == repr((place.lat, place.lon, place.precision))


def test_places_differ_by_query_and_stay_in_range() -> None:
    places = [stub_place(f"{n} Main Street") for n in range(200)]
    assert len({(p.lat, p.lon) for p in places}) == 200
    assert all(-80 <= p.lat <= 80 and -179 <= p.lon <= 179 for p in places)
    assert {p.precision for p in places} == set(PRECISIONS)
    assert all(0.5 <= p.score <= 1.0 for p in places)
    assert stub_place("x").formatted_address == f"x, {CITY}, {COUNTRY}"


def test_stub_result_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="bing"):
        stub_result("bing", "x")


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize("kind", KINDS)
def test_normal_answer_carries_the_stub_result(kind: str, stubs: dict[str, StubServer]) -> None:
    status, _, page = get_json(stubs[kind], target(kind, "221B Baker Street"))
    assert status == 200
    assert results_of(kind, page) == [stub_result(kind, "221B Baker Street")]
    assert stubs[kind].served == 1


def test_nominatim_format(stubs: dict[str, StubServer]) -> None:
    place = stub_place("Unter den Linden")
    _, _, page = get_json(stubs["nominatim"], target("nominatim", "Unter den Linden"))
    (hit,) = page
    for name in ("place_id", "licence", "osm_type", "osm_id", "class", "type", "importance"):
        assert name in hit
    assert hit["lat"] == f"{place.lat:.7f}" and hit["lon"] == f"{place.lon:.7f}"  # strings
    assert hit["display_name"] == place.formatted_address
    south, north, west, east = (float(v) for v in hit["boundingbox"])
    assert south < place.lat < north and west < place.lon < east

    _, _, v2 = get_json(
        stubs["nominatim"], target("nominatim", "Unter den Linden") + "&format=jsonv2"
    )
    assert "category" in v2[0] and "class" not in v2[0]
    assert v2[0]["category"] == hit["class"]


def test_opencage_format(stubs: dict[str, StubServer]) -> None:
    stub = stubs["opencage"]
    _, headers, page = get_json(stub, target("opencage", "Piazza Navona"))
    for name in ("documentation", "licenses", "stay_informed", "thanks", "timestamp"):
        assert name in page
    assert page["status"] == {"code": 200, "message": "OK"}
    assert page["total_results"] == 1
    assert page["rate"] == {
        "limit": DEFAULT_DAILY_LIMIT,
        "remaining": DEFAULT_DAILY_LIMIT - 1,
        "reset": next_midnight_utc(),
    }
    assert headers["x-ratelimit-remaining"] == str(DEFAULT_DAILY_LIMIT - 1)
    assert headers["x-ratelimit-limit"] == str(DEFAULT_DAILY_LIMIT)
    assert headers["x-ratelimit-reset"] == str(next_midnight_utc())
    assert abs(page["timestamp"]["created_unix"] - time.time()) < 5
    (hit,) = page["results"]
    assert 1 <= hit["confidence"] <= 10
    assert set(hit["geometry"]) == {"lat", "lng"}


def test_google_format(stubs: dict[str, StubServer]) -> None:
    _, _, page = get_json(stubs["google"], target("google", "Alexanderplatz"))
    assert page["status"] == "OK"
    (hit,) = page["results"]
    geometry = hit["geometry"]
    assert geometry["location_type"] in (
        "ROOFTOP",
        "RANGE_INTERPOLATED",
        "GEOMETRIC_CENTER",
        "APPROXIMATE",
    )
    assert set(geometry["viewport"]) == {"northeast", "southwest"}
    assert hit["place_id"].startswith("ChIJ")
    assert any("country" in c["types"] for c in hit["address_components"])


def test_here_format(stubs: dict[str, StubServer]) -> None:
    _, _, page = get_json(stubs["here"], target("here", "Invalidenstrasse 116"))
    (item,) = page["items"]
    assert item["title"] == item["address"]["label"]
    assert item["address"]["countryCode"] == "ZZZ"
    assert set(item["mapView"]) == {"west", "south", "east", "north"}
    assert 0 <= item["scoring"]["queryScore"] <= 1


def test_mapbox_format_and_path_query(stubs: dict[str, StubServer]) -> None:
    query = "Straße 5/7, Köln"
    _, headers, page = get_json(stubs["mapbox"], target("mapbox", query))
    assert page["type"] == "FeatureCollection"
    assert page["query"] == ["straße", "5", "7", "köln"]
    assert "attribution" in page
    (feature,) = page["features"]
    assert feature["type"] == "Feature"
    assert feature["geometry"] == {"type": "Point", "coordinates": feature["center"]}
    assert feature["center"] == [stub_place(query).lon, stub_place(query).lat]
    assert stubs["mapbox"].queries == [query]
    assert headers["x-rate-limit-limit"] == "600" and headers["x-rate-limit-interval"] == "60"


@pytest.mark.parametrize("kind", KINDS)
def test_nowhere_interesting_is_an_empty_valid_answer(
    kind: str, stubs: dict[str, StubServer]
) -> None:
    status, _, page = get_json(stubs[kind], target(kind, EMPTY_QUERY))
    assert status == 200
    assert results_of(kind, page) == []
    if kind == "google":
        assert page["status"] == "ZERO_RESULTS"
    if kind == "opencage":
        assert page["total_results"] == 0 and page["status"]["code"] == 200
    assert stubs[kind].served == 1  # billed all the same


# ------------------------------------------------------------------ behaviour program

QUOTA_FORMS = {
    "opencage": (402, "quota exceeded"),
    "google": (200, "OVER_DAILY_LIMIT"),
    "here": (429, "quota"),
    "mapbox": (429, "Too Many Requests"),
    "nominatim": (429, "Too Many Requests"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_quota_answers_the_quota_form_after_n(kind: str, stubs: dict[str, StubServer]) -> None:
    stub = stubs[kind]
    stub.quota(2)
    assert [get(stub, target(kind, f"q{i}"))[0] for i in range(2)] == [200, 200]
    status, headers, body = get(stub, target(kind, "q2"))
    expected_status, words = QUOTA_FORMS[kind]
    assert status == expected_status
    assert words in body.decode()
    assert (stub.calls, stub.served) == (3, 2)
    if kind == "opencage":
        page = json.loads(body)
        assert page["rate"]["remaining"] == 0 and page["rate"]["limit"] == 2
        assert headers["x-ratelimit-remaining"] == "0"
    if kind == "nominatim":
        assert abs(int(headers["retry-after"]) - (next_midnight_utc() - time.time())) <= 2
    if kind == "mapbox":
        assert headers["x-rate-limit-reset"] == str(next_midnight_utc())


def test_opencage_rate_counts_down_from_the_quota(stubs: dict[str, StubServer]) -> None:
    stub = stubs["opencage"]
    stub.quota(5)
    seen = []
    for i in range(3):
        _, headers, page = get_json(stub, target("opencage", f"street {i}"))
        seen.append((page["rate"]["remaining"], int(headers["x-ratelimit-remaining"])))
    assert seen == [(4, 4), (3, 3), (2, 2)]


@pytest.mark.parametrize("kind", KINDS)
def test_throttle_next_n_with_retry_after(kind: str, stubs: dict[str, StubServer]) -> None:
    stub = stubs[kind]
    date = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    stub.throttle(2, retry_after=date)
    first, second, third = (get(stub, target(kind, "x")) for _ in range(3))
    for status, headers, body in (first, second):
        assert headers["retry-after"] == date
        if kind == "google":
            assert status == 200 and json.loads(body)["status"] == "OVER_QUERY_LIMIT"
        else:
            assert status == 429
    assert third[0] == 200 and "retry-after" not in third[1]
    assert stub.served == 1


@pytest.mark.parametrize("status", [500, 503])
def test_fail_answers_the_status_with_a_plain_body(
    status: int, stubs: dict[str, StubServer]
) -> None:
    stub = stubs["here"]
    stub.fail(1, status=status)
    got, headers, body = get(stub, target("here", "x"))
    assert got == status and headers["content-type"].startswith("text/plain")
    assert str(status) in body.decode()
    assert get(stub, target("here", "x"))[0] == 200


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_is_200_and_not_json(kind: str, stubs: dict[str, StubServer]) -> None:
    stub = stubs[kind]
    stub.garbage()
    status, _, body = get(stub, target(kind, "x"))
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)
    assert stub.served == 0


def test_slow_delays_only_the_next_n(stubs: dict[str, StubServer]) -> None:
    stub = stubs["google"]
    stub.slow(0.3, n=1)
    started = time.monotonic()
    assert get(stub, target("google", "x"))[0] == 200
    slow = time.monotonic() - started
    started = time.monotonic()
    assert get(stub, target("google", "x"))[0] == 200
    fast = time.monotonic() - started
    assert slow >= 0.3 and fast < 0.3


BLOCKED_FORMS = {
    "opencage": 403,
    "google": 200,  # REQUEST_DENIED
    "here": 403,
    "mapbox": 401,
    "nominatim": 403,
}


@pytest.mark.parametrize("kind", KINDS)
def test_block_denies_every_call_until_reset(kind: str, stubs: dict[str, StubServer]) -> None:
    stub = stubs[kind]
    stub.block()
    for _ in range(3):
        status, _, body = get(stub, target(kind, "x"))
        assert status == BLOCKED_FORMS[kind]
        if kind == "google":
            assert json.loads(body)["status"] == "REQUEST_DENIED"
    assert (stub.calls, stub.served) == (3, 0)
    stub.reset()
    assert stub.calls == 0 and stub.queries == []
    assert get(stub, target(kind, "x"))[0] == 200


def test_opencage_test_keys(stubs: dict[str, StubServer]) -> None:
    stub = stubs["opencage"]
    status, _, page = get_json(stub, target("opencage", "x", key=OPENCAGE_KEY_402))
    assert status == 402 and page["status"]["code"] == 402
    status, _, page = get_json(stub, target("opencage", "x", key=OPENCAGE_KEY_403))
    assert status == 403 and page["status"]["code"] == 403
    assert stub.served == 0


# ------------------------------------------------------------------ odd input

MISSING_QUERY = {"nominatim": 400, "opencage": 400, "google": 200, "here": 400, "mapbox": 404}
MISSING_KEY = {"opencage": 401, "google": 200, "here": 401, "mapbox": 401}


@pytest.mark.parametrize("kind", KINDS)
def test_odd_requests_get_the_providers_error_forms(
    kind: str, stubs: dict[str, StubServer]
) -> None:
    stub = stubs[kind]
    status, _, body = get(stub, target(kind, ""))
    assert status == MISSING_QUERY[kind]
    if kind == "google":
        assert json.loads(body)["status"] == "INVALID_REQUEST"
    if kind in MISSING_KEY:
        status, _, body = get(stub, target(kind, "x", key=None))
        assert status == MISSING_KEY[kind]
        if kind == "google":
            assert json.loads(body)["status"] == "REQUEST_DENIED"
    assert get(stub, "/no/such/path?q=x")[0] == 404
    assert get(stub, "/%%%?&&==")[0] == 404
    assert get(stub, target(kind, "x"), method="POST")[0] == 405
    assert get(stub, target(kind, "still here"))[0] == 200  # alive and well
    assert stub.served == 1


def test_nominatim_rejects_formats_it_does_not_speak(stubs: dict[str, StubServer]) -> None:
    status, _, page = get_json(stubs["nominatim"], "/search?q=x&format=xml")
    assert status == 400 and page["error"]["code"] == 400


# ------------------------------------------------------------------ counters


def test_counters_are_exact_under_concurrent_calls(stubs: dict[str, StubServer]) -> None:
    stub = stubs["opencage"]
    threads, each = 8, 15
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(each):
                assert get(stub, target("opencage", f"t{n}-{i}"))[0] == 200
        except BaseException as error:  # surfaced below
            errors.append(error)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    assert stub.calls == stub.served == threads * each
    assert sorted(stub.queries) == sorted(f"t{n}-{i}" for n in range(threads) for i in range(each))


def test_quota_is_exact_under_concurrent_calls(stubs: dict[str, StubServer]) -> None:
    stub = stubs["google"]
    stub.quota(25)
    statuses: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            _, _, body = get(stub, target("google", "x"))
            with lock:
                statuses.append(json.loads(body)["status"])

    pool = [threading.Thread(target=worker) for _ in range(6)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert statuses.count("OK") == 25 and statuses.count("OVER_DAILY_LIMIT") == 35
    assert (stub.calls, stub.served) == (60, 25)


# ------------------------------------------------------------------ the server itself


def test_program_arguments_are_checked(stubs: dict[str, StubServer]) -> None:
    stub = stubs["here"]
    with pytest.raises(InvalidArgumentError, match="n: -1"):
        stub.quota(-1)
    with pytest.raises(InvalidArgumentError, match="status: 200"):
        stub.fail(status=200)
    with pytest.raises(InvalidArgumentError, match="seconds"):
        stub.slow(-1)
    with pytest.raises(InvalidArgumentError, match="retry_after"):
        stub.throttle(retry_after="1\r\nX-Evil: 1")
    with pytest.raises(InvalidArgumentError, match="kind: 'bing'"):
        StubServer("bing")


def test_lifecycle_and_addresses() -> None:
    stub = StubServer("mapbox")
    with pytest.raises(RuntimeError, match="not running"):
        _ = stub.port
    with stub:
        assert stub.host == "127.0.0.1" and stub.scheme == "http"
        assert stub.domain == f"127.0.0.1:{stub.port}" and stub.url == f"http://{stub.domain}"
        port = stub.port
        assert get(stub, target("mapbox", "x"))[0] == 200
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).connect()


def test_running_stubs_gives_one_server_per_kind() -> None:
    with running_stubs(["google", "here", "google"]) as running:
        assert sorted(running) == ["google", "here"]
        assert running["google"].port != running["here"].port
        assert all(get(s, target(k, "x"))[0] == 200 for k, s in running.items())


# -- python -m tollway.outbound.geocode.stubs ----------------------------------------------------

STUBS_MODULE = [sys.executable, "-m", "tollway.outbound.geocode.stubs"]


def _started(argv: list[str], env: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    """The module as a real process, and what it printed up to its last line before serving."""
    proc = subprocess.Popen(
        [*STUBS_MODULE, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("# serving until"):
            break
    return proc, lines


def _stop(proc: Any, sig: int) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_the_module_serves_the_policys_stubs_prints_what_to_set_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    policy_file = tmp_path / "tollway.toml"
    policy_file.write_text(
        "[providers.cheap]\n"
        'kind = "opencage"\napi_key_env = "MY_OPENCAGE_KEY"\nprice = "0 USD"\n'
        "[providers.paid]\n"
        'kind = "google"\napi_key_env = "MY_GOOGLE_KEY"\nprice = "0.005 USD"\n'
        '[routes.geocoding]\nproviders = ["cheap", "paid"]\n',
        encoding="utf-8",
    )
    proc, lines = _started(["--config", str(policy_file)])
    try:
        assert lines[0].startswith("geocoding stubs on 127.0.0.1 (loopback only)")
        urls = dict(line.split() for line in lines[1:3])
        assert set(urls) == {"opencage", "google"}
        assert all(url.startswith("http://127.0.0.1:") for url in urls.values())
        assert "export MY_OPENCAGE_KEY=stub-key" in lines
        assert "export MY_GOOGLE_KEY=stub-key" in lines
        cheap = lines.index("[providers.cheap]  # kind opencage")
        domain = urls["opencage"].removeprefix("http://")
        assert lines[cheap + 1 : cheap + 3] == [f'domain = "{domain}"', 'scheme = "http"']
        # a real request to the printed address, in OpenCage's format
        host, port = domain.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/geocode/v1/json?" + urlencode({"q": "1 Main St", "key": "k"}))
        answer = conn.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read())["results"][0]["components"]["city"] == CITY
        conn.close()
    finally:
        code, out, err = _stop(proc, signal.SIGTERM)
    assert (code, out.strip(), err) == (0, "stopped", "")


def test_the_module_without_a_policy_serves_every_kind_and_stops_on_ctrl_c() -> None:
    proc, lines = _started([])
    try:
        assert [line.split()[0] for line in lines[1 : 1 + len(KINDS)]] == list(KINDS)
        assert "export OPENCAGE_API_KEY=stub-key" in lines
        assert "export GOOGLE_MAPS_API_KEY=stub-key" in lines
        assert not any("NOMINATIM" in line for line in lines)  # nominatim takes no key
        assert "[providers.google]" in lines and 'api_key_env = "GOOGLE_MAPS_API_KEY"' in lines
    finally:
        code, out, _ = _stop(proc, signal.SIGINT)
    assert (code, out.strip()) == (0, "stopped")


def test_the_modules_help_documents_the_provider_keys() -> None:
    done = subprocess.run(
        [*STUBS_MODULE, "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "accepts any non-empty key" in text
    assert OPENCAGE_KEY_402 in text and OPENCAGE_KEY_403 in text
    assert "SIGTERM" in text and "127.0.0.1" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kinds", "bing"], "--kinds: bing; expected some of nominatim, opencage"),
        (["--port", "70000"], "--port: 70000 is out of range"),
    ],
)
def test_the_module_refuses_bad_arguments(argv: list[str], message: str) -> None:
    done = subprocess.run(
        [*STUBS_MODULE, *argv], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert message in done.stderr
