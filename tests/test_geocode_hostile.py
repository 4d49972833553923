"""Hostile provider answers and hostile CSV: every row reported, the batch finishes, output escaped.

The answers come from the stubs' hostile modes over real HTTP (`StubServer.hostile`); the CSV
goes through the real ``tollway geocode`` command, in process and in a separate process.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geocode_support import ENV, policy, provider, to_toml
from model import day_safe_timezone
from tollway import Tollway
from tollway.cli.geocode import printable
from tollway.cli.main import main
from tollway.errors import ConfigurationError, InvalidArgumentError
from tollway.outbound.geocode.adapters import GeocodeAdapter, make_adapter
from tollway.outbound.geocode.answers import (
    MAX_DEPTH,
    BadAnswer,
    check_page,
    coordinates,
    decode,
    parse_json,
)
from tollway.outbound.geocode.cells import MAX_QUERY, escape_cell, query_problem
from tollway.outbound.geocode.geocoder import Geocoder
from tollway.outbound.geocode.stubs import KINDS, StubServer, running_stubs, stub_place
from tollway.outbound.geocode.stubs.hostile import FORMULA, HOSTILE_MODES, NUL_ADDRESS
from tollway.outbound.signals import ProviderCallError

QUERY = "1600 Amphitheatre Parkway"
REFUSED = {  # each refused mode, and the words of its failure
    "charset": "unknown charset 'x-no-such-charset'",
    "deep": f"nested deeper than {MAX_DEPTH} levels",
    "huge": "larger than 4,194,304 bytes; the read stopped there",
    "not_a_list": "expected a list of results",
    "text_coordinates": "is a string ('north-ish'); expected a number",
    "null_coordinates": "is missing (null); expected a number",
    "nan": "holds NaN, which is not JSON",
    "out_of_range": "is 123.0; expected a number within ±90",
}


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubServer]]:
    with running_stubs() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(stubs: dict[str, StubServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for stub in stubs.values():
        stub.reset()
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def adapter_for(stub: StubServer, **options: Any) -> GeocodeAdapter:
    options.setdefault("api_key", None if stub.kind == "nominatim" else "test-key")
    options.setdefault("timeout", 2.0)
    return make_adapter(stub.kind, domain=stub.domain, scheme=stub.scheme, **options)


def failure(adapter: GeocodeAdapter, query: str = QUERY) -> str:
    with pytest.raises(ProviderCallError) as caught:
        adapter.lookup(query)
    assert caught.value.provider == adapter.provider
    assert caught.value.signal.kind == "error"
    assert not caught.value.signal.billed
    assert str(caught.value).startswith(f"{adapter.provider}: error (bad answer: ")
    return caught.value.signal.detail


# ------------------------------------------------------------------------------ answers


def test_the_stubs_hostile_modes_are_the_ones_tested() -> None:
    assert set(HOSTILE_MODES) == {*REFUSED, "trickle", "formula", "nul", "bad_rate", "bad_throttle"}


@pytest.mark.parametrize("mode", list(REFUSED))
@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_answer_is_one_clear_provider_failure(
    kind: str, mode: str, stubs: dict[str, StubServer]
) -> None:
    stub = stubs[kind]
    adapter = adapter_for(stub)
    stub.hostile(mode, huge_bytes=50_000_000)
    started = time.monotonic()
    assert REFUSED[mode] in failure(adapter)
    assert time.monotonic() - started < 1.5  # the huge one: the read stopped at the cap
    # the adapter serves the next, normal answer
    answer = adapter.lookup(QUERY)
    assert answer.result is not None
    assert answer.result.lat == pytest.approx(stub_place(QUERY).lat)


def test_a_trickling_answer_is_cut_off_at_the_timeout(stubs: dict[str, StubServer]) -> None:
    stub = stubs["opencage"]
    stub.hostile("trickle")
    started = time.monotonic()
    assert "not complete in time" in failure(adapter_for(stub, timeout=0.4))
    assert time.monotonic() - started < 1.5  # a whole answer trickles for a minute


@pytest.mark.parametrize("kind", KINDS)
def test_formula_and_nul_addresses_are_answers_kept_as_given(
    kind: str, stubs: dict[str, StubServer]
) -> None:
    adapter = adapter_for(stubs[kind])
    for mode, address in (("formula", FORMULA), ("nul", NUL_ADDRESS)):
        stubs[kind].hostile(mode)
        answer = adapter.lookup(QUERY)
        assert answer.result is not None
        assert answer.result.formatted_address == address


@pytest.mark.parametrize("kind", KINDS)
def test_rate_figures_past_any_float_are_ignored(kind: str, stubs: dict[str, StubServer]) -> None:
    stubs[kind].hostile("bad_rate")
    answer = adapter_for(stubs[kind]).lookup(QUERY)
    assert answer.result is not None
    assert answer.signal.kind == "ok"
    assert answer.signal.reset_at is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_error_answer_is_still_one_provider_failure(
    kind: str, stubs: dict[str, StubServer]
) -> None:
    stubs[kind].hostile("bad_throttle")
    with pytest.raises(ProviderCallError) as caught:
        adapter_for(stubs[kind]).lookup(QUERY)
    signal = caught.value.signal
    assert signal.kind in ("throttled", "error", "exhausted")
    assert signal.retry_after is None or 0 <= signal.retry_after < float("inf")
    assert len(signal.detail) <= 200


def test_the_answer_cap_is_configurable(stubs: dict[str, StubServer]) -> None:
    stub = stubs["google"]
    stub.hostile("huge", n=2, huge_bytes=3 * 65536)  # 192 KiB, cut short: not JSON either
    assert "larger than 65,536 bytes" in failure(adapter_for(stub, max_answer_bytes=65536))
    assert "not JSON" in failure(adapter_for(stub))  # read whole under the default cap
    for bad in (0, 1023, True, 2.5e6, "4MB", 1 << 31):
        with pytest.raises(ConfigurationError, match=r"max_answer_bytes: .*expected a whole"):
            adapter_for(stub, max_answer_bytes=bad)


def test_a_200_mb_answer_keeps_the_memory_of_the_process_bounded(
    stubs: dict[str, StubServer],
) -> None:
    stub = stubs["here"]
    stub.hostile("huge", n=3)  # 200 MB each
    script = (
        "import re\n"
        "from tollway.outbound.geocode.adapters import make_adapter\n"
        "from tollway.outbound.signals import ProviderCallError\n"
        f"a = make_adapter('here', api_key='k', domain={stub.domain!r}, scheme='http')\n"
        "for _ in range(3):\n"
        "    try:\n"
        "        a.lookup('1 Main St')\n"
        "    except ProviderCallError as e:\n"
        "        print(e.signal.detail)\n"
        # VmHWM: this process's peak RSS (getrusage's ru_maxrss counts the forking parent's)
        "status = open('/proc/self/status').read()\n"
        "print(re.search(r'VmHWM:\\s*(\\d+) kB', status).group(1))\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    *details, rss_kb = done.stdout.splitlines()
    assert len(details) == 3
    assert all("larger than 4,194,304 bytes" in d for d in details)
    assert int(rss_kb) < 150 * 1024, done.stdout  # the whole body was 1.8 GB of RSS
    assert time.monotonic() - started < 30


def test_parse_json_refuses_what_json_loads_would_take_or_die_of() -> None:
    assert parse_json('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for text, words in (
        ("[" * 5000 + "]" * 5000, "nested deeper"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper"),
        ('{"lat": Infinity}', "holds Infinity"),
        ('{"lat": -Infinity}', "holds -Infinity"),
        ("1" * 5000, "not JSON"),  # past Python's int digits limit
        ("<html>", "not JSON"),
    ):
        with pytest.raises(BadAnswer, match=words):
            parse_json(text)
    deep_ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert isinstance(parse_json(deep_ok), list)


def test_decode_names_the_charset() -> None:
    assert decode("Straße".encode("latin-1"), "latin-1") == "Straße"
    assert decode(b"abc", None) == "abc"
    for charset, words in (("rot13", "unknown charset"), ("nope", "unknown charset")):
        with pytest.raises(BadAnswer, match=words):
            decode(b"abc", charset)
    with pytest.raises(BadAnswer, match="not valid utf-8"):
        decode(b"\xff\xfe", "utf-8")


def test_check_page_and_coordinates() -> None:
    check_page("google", {"results": [], "status": "ZERO_RESULTS"})
    check_page("google", {"status": "REQUEST_DENIED"})  # no results at all: geopy's business
    with pytest.raises(BadAnswer, match="'results' is a string"):
        check_page("opencage", {"results": "abc"})
    with pytest.raises(BadAnswer, match="'items' holds a number"):
        check_page("here", {"items": [3]})
    with pytest.raises(BadAnswer, match="the answer is an object"):
        check_page("nominatim", {"lat": "1"})
    with pytest.raises(BadAnswer, match="answer is a list; expected an object"):
        check_page("mapbox", [])
    assert coordinates("nominatim", {"lat": "48.5", "lon": "-2.25"}) == (48.5, -2.25)
    assert coordinates("mapbox", {"geometry": {"coordinates": [2.0, 1.0]}}) == (1.0, 2.0)
    for raw, words in (
        ({"geometry": {"lat": True, "lng": 1}}, "a boolean"),
        ({"geometry": {"lat": "1.5", "lng": 1}}, "a string"),  # only Nominatim sends strings
        ({"geometry": {"lat": 1}}, r"geometry.lng is missing"),
        ({"geometry": {"lat": 1, "lng": -180.5}}, "within ±180"),
        ({"geometry": {"lat": 1e400, "lng": 0}}, "within ±90"),
    ):
        with pytest.raises(BadAnswer, match=words):
            coordinates("opencage", raw)


# ------------------------------------------------------------------------------ cells


def test_escape_cell() -> None:
    for value in ("=1+1", "+1 555 0100", "-2+3", "@SUM(A1)", "\t=1", "\r=1", FORMULA):
        assert escape_cell(value) == "'" + value
        assert escape_cell(value, raw=True) == value
    for value in ("", "1 Main St", "-12.5", "+3", "1e-05", "-.5", "'quoted", "München", " =1"):
        assert escape_cell(value) == value
    assert escape_cell("a\x00b") == "ab"
    assert escape_cell("=\x00x", raw=True) == "=x"  # NUL bytes go even from raw cells
    assert escape_cell("\x00=cmd") == "'=cmd"  # no NUL to hide a formula behind


def test_query_problem() -> None:
    assert query_problem("1 Main St") is None
    assert query_problem("x" * MAX_QUERY) is None
    assert "1,025 characters; expected at most 1,024" in (query_problem("x" * 1025) or "")
    assert "NUL byte" in (query_problem("1 Main\x00St") or "")


def test_printable_escapes_control_characters() -> None:
    assert printable("opencage: error (HTTP 500)") == "opencage: error (HTTP 500)"
    assert printable("a\x1b[2Jb\x00") == "a\\x1b[2Jb\\x00"


# ------------------------------------------------------------------------------ the batch


def three(stubs: dict[str, StubServer]) -> dict[str, Any]:
    return policy(
        {
            name: provider(
                stubs[name], price="0.001 USD", limits=[{"name": "d", "quota": "50/day"}]
            )
            for name in ("opencage", "google", "here")
        },
        timezone=day_safe_timezone(),
    )


def write_policy(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "tollway.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_a_hostile_answer_fails_over_to_the_next_provider(
    stubs: dict[str, StubServer],
) -> None:
    doc = three(stubs)
    stubs["opencage"].hostile("deep", n=2)
    stubs["google"].hostile("charset", n=1)
    with Tollway(doc) as tw, Geocoder(tw) as geocoder:
        first = geocoder.geocode("1 Main St")
        second = geocoder.geocode("2 Main St")
        third = geocoder.geocode("3 Main St")
        status = tw.route("geocoding").status()
    assert (first.status, first.provider) == ("ok", "here")
    assert [(s.provider, s.reason) for s in first.skipped] == [
        ("opencage", "failed"),
        ("google", "failed"),
    ]
    assert (second.status, second.provider) == ("ok", "google")
    assert (third.status, third.provider) == ("ok", "opencage")
    # a refused answer is released, never billed
    assert {p: status[p].limit("d").used for p in status} == {"opencage": 1, "google": 1, "here": 1}


HOSTILE_CSV = (
    "id,address,note,=HEADER()\r\n"
    '1,"1 Main St",=1+1,a\r\n'
    '2,"2 Main St\r\nBuilding B",+SUM(A1:A9),b\r\n'
    '3,"3 Nul\x00 St","nul\x00in note",c\r\n'
    "4,@evil,-12.5,d\r\n"
    f'5,"{"x" * 2000}",long,e\r\n'
    '6,"Königstraße 7, München 東京",\tTAB,f\r\n'
    '7,"7 Formula St","\r=CR",g\r\n'
)


def run_cli(*argv: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hostile_csv_and_answers_every_row_reported_and_output_escaped(
    stubs: dict[str, StubServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(HOSTILE_CSV.encode("utf-8"))
    output = tmp_path / "out.csv"
    config = write_policy(tmp_path, three(stubs))
    stubs["opencage"].hostile("formula", n=1)  # row 1's formatted address
    code, out, err = run_cli(
        "geocode", source, "-o", output, "--config", config, "--workers", "1",
        "--cache", tmp_path / "cache.sqlite", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in err
    header, rows = read_rows(output)
    assert header[:4] == ["id", "address", "note", "'=HEADER()"]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5", "6", "7"]
    assert [r["status"] for r in rows] == ["ok", "ok", "invalid", "ok", "invalid", "ok", "ok"]
    assert rows[0]["formatted_address"] == "'" + FORMULA
    assert rows[0]["note"] == "'=1+1"
    assert rows[1]["address"] == "2 Main St\r\nBuilding B"  # CRLF inside quotes kept
    assert rows[1]["note"] == "'+SUM(A1:A9)"
    assert rows[2]["address"] == "3 Nul St" and rows[2]["note"] == "nulin note"
    assert "NUL byte" in rows[2]["error"]
    assert rows[3]["address"] == "'@evil" and rows[3]["note"] == "-12.5"
    assert "2,000 characters; expected at most 1,024" in rows[4]["error"]
    assert rows[5]["address"] == "Königstraße 7, München 東京"
    assert rows[5]["note"] == "'\tTAB"
    assert rows[6]["note"] == "'\r=CR"
    for row in rows:
        if row["status"] == "ok":
            float(row["lat"]), float(row["lon"])  # numbers stay numbers, negative ones too
    assert "\x00" not in output.read_text(encoding="utf-8")
    # the rows not geocoded are named on stderr at their line (row 2 spans two lines)
    assert f"{source}:5: invalid: address: holds a NUL byte" in err
    assert f"{source}:7: invalid: address: 2,000 characters" in err
    assert out.splitlines()[0].endswith("5 geocoded (5 found, 0 with no match; 0 of them from "
                                        "the cache), 2 not geocoded (2 invalid)")  # fmt: skip
    assert len(stubs["opencage"].queries) == 5  # the invalid rows were never sent

    raw = tmp_path / "raw.csv"
    code, _, err = run_cli(
        "geocode", source, "-o", raw, "--config", config, "--raw-cells",
        "--cache", tmp_path / "cache.sqlite", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    header, rows = read_rows(raw)
    assert header[3] == "=HEADER()"
    assert rows[0]["formatted_address"] == FORMULA  # from the cache, as the provider said
    assert [r["note"] for r in rows[:2]] == ["=1+1", "+SUM(A1:A9)"]
    assert rows[2]["note"] == "nulin note"  # NUL bytes go even with --raw-cells
    assert len(stubs["opencage"].queries) == 5  # all from the cache


def test_a_runaway_field_names_its_line(
    stubs: dict[str, StubServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text('address\n1 Main St\n"2 Main St\n' + "x" * 70_000 + "\n", encoding="utf-8")
    config = write_policy(tmp_path, three(stubs))
    code, out, err = run_cli("geocode", source, "-o", tmp_path / "o.csv", "--config", config,
                             capsys=capsys)  # fmt: skip
    assert code == 2
    assert (
        "not a readable CSV: field larger than field limit (65536), in the row starting on "
        "line 3; expected fields of at most 65,536 characters (an unclosed quote?)"
    ) in err
    assert "Traceback" not in err and out == ""
    assert stubs["opencage"].calls == 0


def test_a_bad_max_answer_bytes_is_a_usage_error(
    stubs: dict[str, StubServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("address\n1 Main St\n", encoding="utf-8")
    config = write_policy(tmp_path, three(stubs))
    code, out, err = run_cli(
        "geocode", source, "-o", tmp_path / "o.csv", "--config", config,
        "--max-answer-bytes", "10", capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert "--max-answer-bytes: 10; expected a whole number of bytes from 1024" in err
    assert out == "" and not (tmp_path / "o.csv").exists()


def test_the_command_in_its_own_process_survives_hostile_answers(
    stubs: dict[str, StubServer], tmp_path: Path
) -> None:
    """The real ``tollway geocode``: opencage nests too deep, google's charset is unknown,
    here's first answer is 200 MB. Row 1 fails at all three (reported, no traceback), the
    other rows fall over to here; exit status 0 with every row in OUTPUT."""
    source = tmp_path / "in.csv"
    source.write_text("id,address\n1,1 Hostile Road\n2,=2 Hostile Road\n3,3 Hostile Road\n")
    config = write_policy(tmp_path, three(stubs))
    output = tmp_path / "out.csv"
    stubs["opencage"].hostile("deep", n=3)
    stubs["google"].hostile("charset", n=3)
    stubs["here"].hostile("huge", n=1)
    done = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "geocode", str(source), "-o", str(output),
         "--config", str(config), "--workers", "1", "--progress", "never"],
        env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    _, rows = read_rows(output)
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert [r["provider"] for r in rows] == ["", "here", "here"]
    assert rows[1]["address"] == "'=2 Hostile Road"
    assert "no provider can take the call" in rows[0]["error"]
    assert f"{source}:2: failed: " in done.stderr
    assert done.stdout.splitlines()[0].endswith("1 not geocoded (1 failed)")
    assert stubs["here"].served == 2


def test_the_hostile_program_arguments_are_checked(stubs: dict[str, StubServer]) -> None:
    stub = stubs["opencage"]
    with pytest.raises(InvalidArgumentError, match="mode: 'nope'; expected one of charset"):
        stub.hostile("nope")
    with pytest.raises(InvalidArgumentError, match="n: -1"):
        stub.hostile("deep", n=-1)
    with pytest.raises(InvalidArgumentError, match="huge_bytes: 'big'"):
        stub.hostile("huge", huge_bytes="big")  # type: ignore[arg-type]
    stub.hostile("deep", n=0)  # nothing hostile
    assert adapter_for(stub).lookup(QUERY).result is not None
