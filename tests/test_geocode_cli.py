"""``tollway geocode INPUT.csv -o OUTPUT.csv``: end to end against stub providers over HTTP.

In-process through `tollway.cli.main.main` for most tests; as a separate process
(``python -m tollway.cli``) where it must be killed with SIGKILL and run again, on a real
Redis so that the providers' counters outlive each run.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from geocode_support import ENV, KEY_ENV, GatedStub, policy, provider, to_toml, wait_for
from model import day_safe_timezone
from tollway import Tollway
from tollway.cli.main import main
from tollway.outbound.geocode.batch import OUTPUT_COLUMNS
from tollway.outbound.geocode.stubs import EMPTY_QUERY, StubServer, running_stubs, stub_place

KINDS = ("opencage", "google", "here", "nominatim")


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubServer]]:
    with running_stubs(KINDS) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(stubs: dict[str, StubServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for stub in stubs.values():
        stub.reset()
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    def call(*argv: str | Path) -> Run:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return call


# ------------------------------------------------------------------------------ helpers


def three(stubs: dict[str, StubServer], tz: str, **store: Any) -> dict[str, Any]:
    """opencage ($0.001, 3 a day), google ($0.005, $0.02 a day), here ($0.002, 2 a day)."""
    return policy(
        {
            "opencage": provider(
                stubs["opencage"], price="0.001 USD", limits=[{"name": "daily", "quota": "3/day"}]
            ),
            "google": provider(
                stubs["google"],
                price="0.005 USD",
                limits=[{"name": "budget", "budget": "0.02 USD/day"}],
            ),
            "here": provider(
                stubs["here"], price="0.002 USD", limits=[{"name": "daily", "quota": "2/day"}]
            ),
        },
        timezone=tz,
        store=store or None,
    )


def write_policy(tmp_path: Path, doc: dict[str, Any], name: str = "tollway.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def report(out: str) -> tuple[str, dict[str, dict[str, str]]]:
    """The summary line and, per provider, the cells of the spend table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("provider "))
    headers = re.split(r"\s{2,}", lines[start].strip())
    table = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        table[cells[0]] = dict(zip(headers, cells, strict=True))
    return lines[0], table


def money(cell: str) -> Decimal:
    amount, currency = cell.split()
    assert currency == "USD"
    return Decimal(amount)


def calls(stubs: dict[str, StubServer]) -> dict[str, int]:
    return {kind: stub.calls for kind, stub in stubs.items()}


def error_line(err: str) -> str:
    """The one ``tollway: error:`` line of ``err`` (notes may precede it, nothing else)."""
    lines = err.splitlines()
    assert "Traceback" not in err
    assert all(line.startswith("tollway: ") for line in lines), err
    errors = [line for line in lines if line.startswith("tollway: error: ")]
    assert len(errors) == 1, err
    return errors[0].removeprefix("tollway: error: ")


@pytest.fixture
def tz() -> str:
    return day_safe_timezone()


# ------------------------------------------------------------------------------ end to end


def test_geocode_end_to_end_with_the_spend_report(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    config = write_policy(tmp_path, three(stubs, tz))
    addresses = [
        "1 Main St",  # opencage
        EMPTY_QUERY,  # opencage: nothing found, billed
        "3 Main St",  # opencage: its quota is used up
        "4 Main St",  # google
        "",  # invalid: never sent
        "6 Main St",  # google
        "1 MAIN  st",  # the cache: row 1's answer, not paid again
        "8 Main St",  # google
        "9 Main St",  # google: its budget is used up
        "10 Main St",  # here
        "11 Main St",  # here: its quota is used up
        "12 Main St",  # failed: nobody has room
        "13 Main St",  # failed
    ]
    source = write_csv(
        tmp_path / "in.csv",
        ["id", "address", "district"],
        [[str(i), a, f"d{i % 3}"] for i, a in enumerate(addresses, start=1)],
    )
    output = tmp_path / "out.csv"
    result = run("geocode", source, "-o", output, "--config", config, "--workers", "1")
    assert result.code == 0, result.err

    header, rows = read_csv(output)
    assert header == ["id", "address", "district", *OUTPUT_COLUMNS]
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 14)]
    assert [r["address"] for r in rows] == addresses
    assert [r["district"] for r in rows] == [f"d{i % 3}" for i in range(1, 14)]
    statuses = ["ok", "no_match", "ok", "ok", "invalid", "ok", "ok", "ok", "ok", "ok", "ok"]
    assert [r["status"] for r in rows] == [*statuses, "failed", "failed"]
    assert [r["provider"] for r in rows] == (
        ["opencage"] * 3 + ["google", "", "google", "opencage", "google", "google"]
    ) + ["here", "here", "", ""]
    assert [r["cached"] for r in rows] == ["no"] * 6 + ["yes"] + ["no"] * 6
    for row in rows:
        if row["status"] == "ok":
            place = stub_place(row["address"] if row["id"] != "7" else "1 Main St")
            assert (float(row["lat"]), float(row["lon"])) == (place.lat, place.lon)
            assert row["formatted_address"] == place.formatted_address
        else:
            assert row["lat"] == row["lon"] == row["formatted_address"] == ""
    assert "expected an address" in rows[4]["error"]
    for row in rows[-2:]:
        assert "no provider can take the call" in row["error"]
        for name in ("opencage: daily", "google: budget", "here: daily"):
            assert name in row["error"]

    summary, table = report(result.out)
    assert summary == (
        f"13 rows -> {output}: 10 geocoded (9 found, 1 with no match; 1 of them from the "
        "cache), 3 not geocoded (2 failed, 1 invalid)"
    )
    assert set(table) == {"opencage", "google", "here"}
    assert {p: int(t["calls"]) for p, t in table.items()} == {
        "opencage": 3,
        "google": 4,
        "here": 2,
    }
    assert {p: money(t["cost"]) for p, t in table.items()} == {
        "opencage": Decimal("0.003"),
        "google": Decimal("0.020"),
        "here": Decimal("0.004"),
    }
    assert table["opencage"]["left"] == "daily: 0 calls"
    assert table["google"]["left"] == "budget: 0.00 USD"
    assert table["here"]["left"] == "daily: 0 calls"
    # passed over: rows 4-13 went past opencage (8 paid or failed rows), 10-13 past google
    assert table["opencage"]["passed over (why)"] == "daily 8"
    assert table["google"]["passed over (why)"] == "budget 4"
    assert table["here"]["passed over (why)"] == "daily 2"
    # what the report says was paid is what the stubs served
    assert {k: s.served for k, s in stubs.items()} == {
        "opencage": 3,
        "google": 4,
        "here": 2,
        "nominatim": 0,
    }
    assert calls(stubs) == {"opencage": 3, "google": 4, "here": 2, "nominatim": 0}
    # the rows not geocoded are named on stderr with their line in the input
    assert f"tollway: note: {source}:6: invalid: " in result.err
    assert f"tollway: note: {source}:13: failed: " in result.err
    assert f"tollway: note: {source}:14: failed: " in result.err


def test_many_workers_keep_the_rows_in_order(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    doc = policy(
        {
            "nominatim": provider(
                stubs["nominatim"], price="0 USD", limits=[{"name": "rps", "rate": "1000/s"}]
            ),
        },
        timezone=tz,
    )
    for stub in stubs.values():  # answers out of order: the slow ones come back last
        stub.slow(0.02, 15)
    addresses = [f"{n} Calle Mayor, Madrid" for n in range(60)]
    source = write_csv(tmp_path / "in.csv", ["address"], [[a] for a in addresses])
    output = tmp_path / "out.csv"
    result = run(
        "geocode", source, "-o", output, "--config", write_policy(tmp_path, doc), "--workers", "8"
    )
    assert result.code == 0, result.err
    _, rows = read_csv(output)
    assert [r["address"] for r in rows] == addresses
    for row in rows:
        assert float(row["lat"]) == stub_place(row["address"]).lat
    assert stubs["nominatim"].calls == 60
    assert sorted(stubs["nominatim"].queries) == sorted(addresses)
    _, table = report(result.out)
    assert table["nominatim"]["calls"] == "60"


def test_the_column_option_and_a_cache_file_of_ones_choice(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    source = write_csv(tmp_path / "in.csv", ["street", "zip"], [["2 Quai Branly", "75007"]])
    cache = tmp_path / "mine.sqlite"
    output = tmp_path / "out.csv"
    argv = ["--config", write_policy(tmp_path, three(stubs, tz)), "--cache", cache]
    result = run("geocode", source, "-o", output, "--column", "street", *argv)
    assert result.code == 0, result.err
    assert cache.is_file()
    assert not Path(f"{output}.tollway.sqlite").exists()
    header, rows = read_csv(output)
    assert header == ["street", "zip", *OUTPUT_COLUMNS]
    assert (rows[0]["zip"], rows[0]["status"], rows[0]["provider"]) == ("75007", "ok", "opencage")


def test_the_output_may_go_to_a_new_directory(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    source = write_csv(tmp_path / "in.csv", ["address"], [["2 Quai Branly"]])
    output = tmp_path / "results" / "2026" / "out.csv"
    config = write_policy(tmp_path, three(stubs, tz))
    result = run("geocode", source, "-o", output, "--config", config)
    assert result.code == 0, result.err
    assert read_csv(output)[1][0]["status"] == "ok"


# ------------------------------------------------------------------------------ resuming


def test_a_second_run_resumes_from_the_cache_and_calls_nobody(
    run: Any,
    stubs: dict[str, StubServer],
    tmp_path: Path,
    tz: str,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    # On Redis, so the second run also finds the providers as full as the first left them.
    config = write_policy(tmp_path, three(stubs, tz))
    addresses = [EMPTY_QUERY] + [f"{n} Via del Corso, Roma" for n in range(12)] + [""]
    source = write_csv(tmp_path / "in.csv", ["address"], [[a] for a in addresses])
    output = tmp_path / "out.csv"
    argv = ["geocode", source, "-o", output, "--config", config, "--store", redis_url]
    argv += ["--workers", "1"]

    first = run(*argv)
    assert first.code == 0, first.err
    after_first = calls(stubs)
    assert sum(after_first.values()) == 3 + 4 + 2  # every provider filled up
    _, rows1 = read_csv(output)
    assert Counter(r["status"] for r in rows1) == {
        "ok": 8,
        "no_match": 1,
        "failed": 4,
        "invalid": 1,
    }

    second = run(*argv)
    assert second.code == 0, second.err
    assert calls(stubs) == after_first  # nobody was called again
    _, rows2 = read_csv(output)
    same = ("address", "lat", "lon", "formatted_address", "confidence", "accuracy", "provider")
    assert [[r[c] for c in (*same, "status")] for r in rows2] == [
        [r[c] for c in (*same, "status")] for r in rows1
    ]
    for one, two in zip(rows1, rows2, strict=True):
        done = one["status"] in ("ok", "no_match")
        assert two["cached"] == ("yes" if done else "no")
        if one["status"] != "failed":  # a failure's message says how long until midnight
            assert two["error"] == one["error"]
    summary, table = report(second.out)
    assert "9 geocoded (8 found, 1 with no match; 9 of them from the cache)" in summary
    assert {p: t["calls"] for p, t in table.items()} == {
        "opencage": "0",
        "google": "0",
        "here": "0",
    }
    assert {p: money(t["cost"]) for p, t in table.items()} == {
        "opencage": 0,
        "google": 0,
        "here": 0,
    }


def test_duplicate_rows_in_flight_are_reported_once(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    doc = policy(
        {
            "here": provider(
                stubs["here"], price="0.002 USD", limits=[{"name": "daily", "quota": "50/day"}]
            )
        },
        timezone=tz,
    )
    stubs["here"].slow(0.5)  # the first call is still out when the five others ask
    source = write_csv(tmp_path / "in.csv", ["address"], [["7 Rue Sainte-Catherine"]] * 6)
    output = tmp_path / "out.csv"
    result = run(
        "geocode", source, "-o", output, "--config", write_policy(tmp_path, doc), "--workers", "6"
    )
    assert result.code == 0, result.err
    assert stubs["here"].calls == 1  # one call was made, and paid
    _, table = report(result.out)
    assert table["here"]["left"] == "daily: 49 calls"
    assert (table["here"]["calls"], money(table["here"]["cost"])) == ("1", Decimal("0.002"))
    _, rows = read_csv(output)
    assert sorted(r["cached"] for r in rows) == ["no"] + ["yes"] * 5


# ------------------------------------------------------------------------------ kill -9


WORKERS = 4
ROWS = 300


def test_kill_9_and_resume_never_pays_an_address_twice(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """Three SIGKILLs at different points of one batch, then runs to completion.

    Kills 1 and 3 come while every worker is inside a provider call, after the provider has
    billed it (the stubs hold their answers back: `GatedStub`): each such address is
    marked in flight, so later runs report it ``interrupted`` instead of paying for it again.
    Kill 2 comes at a moment left to chance, after some calls were served.

    What the runs show:

    - without ``--retry-interrupted``, the run completes every other row; the interrupted
      rows are reported (status ``interrupted``, the provider named), nobody is called for
      them, and no address was ever sent to a provider twice;
    - with ``--retry-interrupted``, exactly those addresses are called again (the only second
      calls of the whole test: that option's documented price), and every row is done.

    Throughout, each provider's count in Redis is at least what its stub served (no money
    spent without a record); it is exactly that after kills 1 and 3, and at most the calls
    held at kill 2 more (reserved, then killed before the request left).
    """
    gated = {kind: GatedStub(kind) for kind in ("opencage", "google", "nominatim")}
    try:
        for stub in gated.values():
            stub.start()
        _kill_and_resume(tmp_path, redis_url, gated)
    finally:
        for stub in gated.values():
            stub.open_gate()
            stub.stop()


def _kill_and_resume(tmp_path: Path, redis_url: str, stubs: dict[str, GatedStub]) -> None:
    doc = policy(
        {
            "opencage": provider(
                stubs["opencage"], price="0.001 USD", limits=[{"name": "daily", "quota": "60/day"}]
            ),
            "google": provider(
                stubs["google"],
                price="0.005 USD",
                limits=[
                    {"name": "daily", "quota": "1000/day"},
                    {"name": "budget", "budget": "0.40 USD/day"},  # 80 calls
                ],
            ),
            "nominatim": provider(
                stubs["nominatim"], price="0 USD", limits=[{"name": "daily", "quota": "1000/day"}]
            ),
        },
        timezone=day_safe_timezone(),
        store={"timeout_ms": 5000, "on_error": "closed"},
    )
    for stub in stubs.values():
        stub.slow(0.008, 1_000_000)
    config = write_policy(tmp_path, doc)
    addresses = [f"{n} Nevsky Prospekt, St Petersburg" for n in range(ROWS)]
    source = write_csv(
        tmp_path / "in.csv", ["n", "address"], [[str(i), a] for i, a in enumerate(addresses)]
    )
    output = tmp_path / "out.csv"
    command = [sys.executable, "-m", "tollway.cli", "geocode", str(source), "-o", str(output)]
    command += ["--config", str(config), "--store", redis_url, "--workers", str(WORKERS)]
    command += ["--progress", "never"]
    env = {**os.environ, **ENV}
    tw = Tollway(doc, redis_url)
    try:
        _runs(tw, command, env, output, addresses, stubs)
    finally:
        tw.close()


def _runs(
    tw: Tollway,
    command: list[str],
    env: dict[str, str],
    output: Path,
    addresses: list[str],
    stubs: dict[str, GatedStub],
) -> None:
    route = tw.route("geocoding")

    def served() -> dict[str, int]:
        return {kind: stub.served for kind, stub in stubs.items()}

    def counted() -> dict[str, int]:
        return {p: int(d.limit("daily").used) for p, d in route.status().items()}

    def slack() -> dict[str, int]:
        """Per provider, calls counted in Redis but never served by its stub."""
        s, c = served(), counted()
        return {p: c[p] - s[p] for p in stubs}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def kill(proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert not output.exists()  # the output is written whole at the end, or not at all
        # a request the dead process had sent may still be read and decided by its stub:
        # count only once every stub has finished with every connection
        wait_for(
            lambda: all(stub.connections == stub.waiting for stub in stubs.values()),
            what="the stubs done with the killed run's requests",
        )

    def run_until(total: int, gate: bool) -> None:
        proc = start()
        try:
            wait_for(
                lambda: sum(served().values()) >= total or proc.poll() is not None,
                what=f"{total} calls served",
            )
            assert proc.poll() is None, "the run ended before the kill point"
            if gate:
                for stub in stubs.values():
                    stub.close_gate()
                # every worker inside a call whose answer is held: the provider has billed it
                wait_for(
                    lambda: sum(s.held for s in stubs.values()) == WORKERS,
                    what="every worker held in a call",
                )
            kill(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            for stub in stubs.values():
                stub.open_gate()

    # Kill 1: in opencage's share (its first 60 calls), every worker held in a call.
    run_until(25, gate=True)
    assert slack() == dict.fromkeys(stubs, 0)
    assert served()["opencage"] >= 25

    # Kill 2: in google's share, wherever the workers happen to be.
    run_until(100, gate=False)
    loose = slack()
    assert all(v >= 0 for v in loose.values()), loose  # never a served call left uncounted
    assert sum(loose.values()) <= WORKERS, loose

    # Kill 3: in nominatim's share, every worker held in a call.
    run_until(190, gate=True)
    assert slack() == loose

    # A run to completion, without --retry-interrupted.
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    _, rows = read_csv(output)
    assert [r["address"] for r in rows] == addresses
    interrupted = {r["address"] for r in rows if r["status"] == "interrupted"}
    assert Counter(r["status"] for r in rows) == {"ok": ROWS - len(interrupted)} | (
        {"interrupted": len(interrupted)} if interrupted else {}
    )
    # the held calls of kills 1 and 3 at least; kill 2 may have left up to WORKERS more
    assert 2 * WORKERS <= len(interrupted) <= 3 * WORKERS
    for row in rows:
        if row["status"] == "interrupted":
            assert row["provider"] in stubs
            assert "in flight when an earlier run stopped" in row["error"]
            assert row["lat"] == ""
    summary, _ = report(done.stdout)
    geocoded = ROWS - len(interrupted)
    assert re.search(
        rf"{geocoded} geocoded \({geocoded} found, 0 with no match; \d+ of them from the "
        rf"cache\), {len(interrupted)} not geocoded \({len(interrupted)} interrupted\)$",
        summary,
    )

    sent = Counter(q for stub in stubs.values() for q in stub.queries)
    assert sent and max(sent.values()) == 1  # no address was ever sent twice
    assert set(sent) | interrupted == set(addresses)
    # an interrupted address reached its provider (kills 1, 3) or maybe not (kill 2), once
    held = interrupted & set(sent)
    assert len(held) >= 2 * WORKERS
    for row in rows:
        if row["address"] in held:
            assert row["address"] in stubs[row["provider"]].queries
    assert slack() == loose
    google = route.status()["google"]  # money: the price of every counted call, exactly
    assert google.limit("budget").used == Decimal("0.005") * google.limit("daily").used
    assert google.limit("budget").used >= Decimal("0.005") * stubs["google"].served

    # The same, with --retry-interrupted: only the interrupted addresses are called (again).
    before = Counter(sent)
    retried = subprocess.run(
        [*command, "--retry-interrupted"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert retried.returncode == 0, retried.stderr
    _, rows = read_csv(output)
    assert [r["address"] for r in rows] == addresses
    assert Counter(r["status"] for r in rows) == {"ok": ROWS}
    again = Counter(q for stub in stubs.values() for q in stub.queries) - before
    assert set(again) == interrupted and max(again.values()) == 1
    assert slack() == loose
    summary, table = report(retried.stdout)
    assert (
        f"{ROWS} geocoded ({ROWS} found, 0 with no match; {ROWS - len(interrupted)} of them "
        "from the cache), 0 not geocoded"
    ) in summary
    assert sum(int(t["calls"]) for t in table.values()) == len(interrupted)

    # A last run: everything from the cache, nobody called.
    final = Counter(q for stub in stubs.values() for q in stub.queries)
    last = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert last.returncode == 0, last.stderr
    assert Counter(q for stub in stubs.values() for q in stub.queries) == final
    assert (
        f"{ROWS} geocoded ({ROWS} found, 0 with no match; {ROWS} of them from the cache), "
        "0 not geocoded"
    ) in last.stdout


# ------------------------------------------------------------------------------ bad input


BAD_INPUTS = {
    "empty": (b"", "{input}: the file is empty; expected a CSV with a header"),
    "blank": (b"\n  \n\n", "{input}: the file is empty; expected a CSV with a header"),
    "no column": (
        b"id,street,city\n1,Main St,Paris\n",
        "{input}: no column 'address'; expected one of 'id', 'street', 'city' "
        "(choose it with --column)",
    ),
    "not utf-8": (
        "address\nKönigstraße 1\n".encode("latin-1"),
        "{input}: not UTF-8 text (byte 9); expected a UTF-8 CSV",
    ),
    "runaway field": (
        b'address\n"' + b"x" * 70_000 + b'"\n',
        "{input}: not a readable CSV: ",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_input_file_is_one_error_line_exit_2_and_nothing_spent(
    case: str,
    run: Any,
    stubs: dict[str, StubServer],
    tmp_path: Path,
    tz: str,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    data, message = BAD_INPUTS[case]
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    output = tmp_path / "out.csv"
    config = write_policy(tmp_path, three(stubs, tz))
    result = run("geocode", source, "-o", output, "--config", config, "--store", redis_url)
    assert result.code == 2
    assert error_line(result.err).startswith(message.format(input=source))
    assert result.out == ""
    assert not output.exists()
    assert calls(stubs) == dict.fromkeys(KINDS, 0)
    assert redis_client.dbsize() == 0  # not one counter written


def test_a_missing_file_unknown_route_kind_or_key_is_one_error_line(
    run: Any,
    stubs: dict[str, StubServer],
    tmp_path: Path,
    tz: str,
    redis_url: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = write_csv(tmp_path / "in.csv", ["address"], [["1 Main St"]])
    output = tmp_path / "out.csv"
    good = write_policy(tmp_path, three(stubs, tz))
    store = ["--store", redis_url]

    missing = tmp_path / "nope.csv"
    result = run("geocode", missing, "-o", output, "--config", good, *store)
    assert (result.code, error_line(result.err)) == (2, f"{missing}: no such file")

    result = run("geocode", source, "-o", output, "--config", good, "--route", "maps", *store)
    assert result.code == 2
    assert error_line(result.err) == (
        "route: 'maps' is not declared in the policy; known routes: geocoding"
    )

    doc = three(stubs, tz)
    doc["providers"]["here"]["kind"] = "bing"
    bad = write_policy(tmp_path, doc, "bing.toml")
    result = run("geocode", source, "-o", output, "--config", bad, *store)
    assert result.code == 2
    assert error_line(result.err).startswith(
        "providers.here.kind: 'bing' is not a geocoder; expected one of google, here, "
    )

    doc = three(stubs, tz)
    del doc["providers"]["google"]["kind"]
    bad = write_policy(tmp_path, doc, "nokind.toml")
    result = run("geocode", source, "-o", output, "--config", bad, *store)
    assert result.code == 2
    assert error_line(result.err).startswith("providers.google.kind: missing")

    monkeypatch.delenv(KEY_ENV["google"])
    result = run("geocode", source, "-o", output, "--config", good, *store)
    assert result.code == 2
    assert error_line(result.err).startswith(
        f"providers.google.api_key_env: the environment variable {KEY_ENV['google']} is not set"
    )

    assert not output.exists()
    assert calls(stubs) == dict.fromkeys(KINDS, 0)
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize("case", ["missing file", "unknown kind"])
def test_bad_input_in_a_separate_process_has_no_traceback(
    case: str, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    doc = three(stubs, tz)
    source = write_csv(tmp_path / "in.csv", ["address"], [["1 Main St"]])
    if case == "missing file":
        source = tmp_path / "missing.csv"
    else:
        doc["providers"]["opencage"]["kind"] = "yandex"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tollway.cli",
            "geocode",
            str(source),
            "-o",
            str(tmp_path / "o"),
            "--config",
            str(write_policy(tmp_path, doc)),
        ],
        check=False,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert line.startswith(f"{source}: no such file" if case == "missing file" else "providers.")
    assert done.stdout == ""
    assert calls(stubs) == dict.fromkeys(KINDS, 0)


def test_bad_rows_are_reported_and_never_fatal(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "id,address,note\n"
        "1,1 Good Road,a\n"
        "2,,empty\n"
        "3,   ,spaces\n"
        "4\n"  # a short row: no address at all
        "5,5 Good Road,b,an extra field\n"
        '6,"\t\n",a tab and a newline\n'
        "7,7 Good Road,c\n",
        encoding="utf-8",
    )
    output = tmp_path / "out.csv"
    config = write_policy(tmp_path, three(stubs, tz))
    result = run("geocode", source, "-o", output, "--config", config, "--workers", "2")
    assert result.code == 0, result.err
    _, rows = read_csv(output)
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5", "6", "7"]
    assert [r["status"] for r in rows] == [
        "ok",
        "invalid",
        "invalid",
        "invalid",
        "ok",
        "invalid",
        "ok",
    ]
    assert rows[4]["note"] == "b"
    for line in (3, 4, 5, 7):  # the bad rows' lines in the file (row 6 spans two)
        assert f"tollway: note: {source}:{line}: invalid: " in result.err
    summary, _ = report(result.out)
    assert summary.startswith(f"7 rows -> {output}: 3 geocoded")
    assert summary.endswith("4 not geocoded (4 invalid)")
    assert sorted(stubs["opencage"].queries) == ["1 Good Road", "5 Good Road", "7 Good Road"]
    assert calls(stubs) == {"opencage": 3, "google": 0, "here": 0, "nominatim": 0}


def test_bad_rows_are_reported_at_their_line_after_a_multi_line_field(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        'address,note\n"1 Good Road",one\n"2 Good Road\nBuilding B",two\n,three\n',
        encoding="utf-8",
    )
    config = write_policy(tmp_path, three(stubs, tz))
    result = run("geocode", source, "-o", tmp_path / "out.csv", "--config", config)
    assert result.code == 0, result.err
    # lines: 1 header, 2 row one, 3-4 row two, 5 row three (empty address)
    assert f"tollway: note: {source}:5: invalid: " in result.err


def test_a_provider_answering_garbage_fails_the_rows_and_spends_nothing(
    run: Any,
    stubs: dict[str, StubServer],
    tmp_path: Path,
    tz: str,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    doc = three(stubs, tz)
    for stub in stubs.values():
        stub.garbage(1_000_000)
    source = write_csv(tmp_path / "in.csv", ["address"], [[f"{n} Junk Street"] for n in range(12)])
    output = tmp_path / "out.csv"
    config = write_policy(tmp_path, doc)
    result = run(
        "geocode", source, "-o", output, "--config", config, "--store", redis_url, "--workers", "1"
    )
    assert result.code == 0, result.err
    _, rows = read_csv(output)
    assert [r["status"] for r in rows] == ["failed"] * 12
    assert all("no provider can take the call" in r["error"] for r in rows)
    # five errors open each provider's breaker: the last seven rows call nobody
    assert calls(stubs) == {"opencage": 5, "google": 5, "here": 5, "nominatim": 0}
    assert {k: s.served for k, s in stubs.items()} == dict.fromkeys(KINDS, 0)
    summary, table = report(result.out)
    assert summary.endswith(": 0 geocoded (0 found, 0 with no match; 0 of them from the cache), "
                            "12 not geocoded (12 failed)")  # fmt: skip
    for name in ("opencage", "google", "here"):
        assert table[name]["calls"] == "0"
        assert money(table[name]["cost"]) == 0
        assert table[name]["passed over (why)"] == "breaker 7, failed 5"
    status = Tollway(doc, redis_url).route("geocoding").status()
    assert status["opencage"].limit("daily").used == 0
    assert status["google"].limit("budget").used == Decimal(0)
    assert status["here"].limit("daily").used == 0


# ------------------------------------------------------------------------------ failed runs


def _cache_files(output: Path) -> list[Path]:
    return sorted(output.parent.glob(output.name + ".tollway.sqlite*"))


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda p: p.write_text("", encoding="utf-8"), "the file is empty"),
        (lambda p: p.write_text("street\n1 Main St\n", encoding="utf-8"), "no column 'address'"),
        (lambda p: p.write_bytes(b"address\n\xff\xfe\n"), "not UTF-8 text"),
    ],
)
def test_a_failed_run_leaves_no_cache_file_behind(
    run: Any,
    stubs: dict[str, StubServer],
    tmp_path: Path,
    tz: str,
    make_input: Any,
    message: str,
) -> None:
    source = tmp_path / "in.csv"
    make_input(source)
    output = tmp_path / "out.csv"
    result = run(
        "geocode", source, "-o", output, "--config", write_policy(tmp_path, three(stubs, tz))
    )
    assert result.code == 2
    assert message in error_line(result.err)
    assert not output.exists()
    assert _cache_files(output) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "state", "tollway.toml"] or (
        sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "tollway.toml"]
    )


def test_a_failed_run_keeps_the_cache_of_an_earlier_run(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    config = write_policy(tmp_path, three(stubs, tz))
    source = write_csv(tmp_path / "in.csv", ["address"], [["1 Main St"], ["2 Main St"]])
    output = tmp_path / "out.csv"
    assert run("geocode", source, "-o", output, "--config", config).code == 0
    cache = Path(f"{output}.tollway.sqlite")
    assert cache.is_file()
    bad = write_csv(tmp_path / "bad.csv", ["street"], [["1 Main St"]])
    failed = run("geocode", bad, "-o", output, "--config", config)
    assert failed.code == 2 and "no column 'address'" in error_line(failed.err)
    assert cache.is_file()  # the earlier run's answers: a resumable run owns them
    again = run("geocode", source, "-o", output, "--config", config)
    assert again.code == 0
    assert "2 of them from the cache" in again.out.splitlines()[0]
    assert calls(stubs)["opencage"] == 2  # resumed: nobody called again


def test_a_run_that_fails_after_paying_keeps_its_answers(
    run: Any,
    stubs: dict[str, StubServer],
    tmp_path: Path,
    tz: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run stopped mid-way (here: Ctrl-C after the first row) keeps the answers it paid for,
    says so, and the next run resumes from them."""
    from tollway.cli import geocode as geocode_cli

    config = write_policy(tmp_path, three(stubs, tz))
    source = write_csv(tmp_path / "in.csv", ["address"], [["1 Main St"], ["2 Main St"]])
    output = tmp_path / "out.csv"

    def stop_after_one(out: Any) -> Any:
        def show(done: int, total: int, statuses: Any) -> None:
            raise KeyboardInterrupt

        return show

    monkeypatch.setattr(geocode_cli, "_bar", stop_after_one)
    stopped = run(
        "geocode",
        source,
        "-o",
        output,
        "--config",
        config,
        "--workers",
        "1",
        "--progress",
        "always",
    )
    assert stopped.code == 130
    assert f"kept {output}.tollway.sqlite: it holds 1 answer and 0 calls in flight" in stopped.err
    assert not output.exists()
    monkeypatch.undo()
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    again = run("geocode", source, "-o", output, "--config", config, "--workers", "1")
    assert again.code == 0, again.err
    assert "1 of them from the cache" in again.out.splitlines()[0]
    assert stubs["opencage"].queries == ["1 Main St", "2 Main St"]  # each paid once


def test_every_missing_key_is_one_error_and_nothing_is_written(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV:
        monkeypatch.delenv(name)
    source = write_csv(tmp_path / "in.csv", ["address"], [["1 Main St"]])
    output = tmp_path / "out.csv"
    result = run(
        "geocode", source, "-o", output, "--config", write_policy(tmp_path, three(stubs, tz))
    )
    assert result.code == 2
    line = error_line(result.err)
    assert line.startswith("3 providers cannot be called: ")
    for kind in ("opencage", "google", "here"):
        assert f"providers.{kind}.api_key_env: the environment variable {KEY_ENV[kind]}" in line
    assert "python -m tollway.outbound.geocode.stubs" in line
    assert not output.exists() and _cache_files(output) == []
    assert calls(stubs) == dict.fromkeys(KINDS, 0)


@pytest.mark.parametrize("how", ["same path", "another path", "a symlink", "the cache"])
def test_an_output_that_is_the_input_is_refused_and_nothing_written(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str, how: str
) -> None:
    source = write_csv(tmp_path / "in.csv", ["address"], [["1 Main St"]])
    before = source.read_bytes()
    config = write_policy(tmp_path, three(stubs, tz))
    extra: list[str | Path] = []
    output: Path = source
    if how == "another path":
        (tmp_path / "sub").mkdir()
        output = tmp_path / "sub" / ".." / "in.csv"
    elif how == "a symlink":
        output = tmp_path / "link.csv"
        output.symlink_to(source)
    elif how == "the cache":
        output = tmp_path / "out.csv"
        extra = ["--cache", source]
    result = run("geocode", source, "-o", output, "--config", config, *extra)
    assert result.code == 2
    line = error_line(result.err)
    assert f"is the input file {source}" in line
    assert source.read_bytes() == before
    assert not Path(f"{output}.tollway.sqlite").exists()
    assert not (tmp_path / "out.csv").exists()
    assert calls(stubs) == dict.fromkeys(KINDS, 0)


def test_a_provider_that_says_it_is_out_is_shown_exhausted_not_with_its_count(
    run: Any, stubs: dict[str, StubServer], tmp_path: Path, tz: str
) -> None:
    stubs["opencage"].quota(0)  # the provider's own quota: used up, whatever tollway counted
    source = write_csv(tmp_path / "in.csv", ["address"], [["1 Main St"], ["2 Main St"]])
    output = tmp_path / "out.csv"
    config = write_policy(tmp_path, three(stubs, tz))
    result = run("geocode", source, "-o", output, "--config", config, "--workers", "1")
    assert result.code == 0, result.err
    summary, table = report(result.out)
    assert summary.endswith("2 geocoded (2 found, 0 with no match; 0 of them from the cache), "
                            "0 not geocoded")  # fmt: skip
    opencage = table["opencage"]
    assert opencage["calls"] == "0"  # refused with a 402: not billed
    assert opencage["left"] == "daily: 0 calls, says the provider (3 calls by our count)"
    assert re.fullmatch(r"exhausted for \d+h\d\dm|exhausted for \d+ (s|min)", opencage["state"])
    assert opencage["passed over (why)"] == "failed 1, exhausted 1"  # the 402, then its gate
    assert table["google"]["state"] == "open"
    assert table["google"]["left"] == "budget: 0.01 USD"


def test_the_stubs_module_and_its_printed_settings_run_a_batch(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a new user does: start the stubs on their own, set what they print, geocode."""
    policy_file = tmp_path / "tollway.toml"
    base = (
        '[providers.opencage]\nkind = "opencage"\napi_key_env = "NEW_USER_OPENCAGE_KEY"\n'
        'price = "0 USD"\nlimits = [{ name = "daily", quota = "2/day" }]\n'
        '[providers.google]\nkind = "google"\napi_key_env = "NEW_USER_GOOGLE_KEY"\n'
        'price = "0.005 USD"\n'
        '[routes.geocoding]\nproviders = ["opencage", "google"]\n'
    )
    policy_file.write_text(base, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway.outbound.geocode.stubs", "--config", str(policy_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        printed: list[str] = []
        for line in proc.stdout:
            printed.append(line.rstrip("\n"))
            if line.startswith("# serving until"):
                break
        settings: dict[str, list[str]] = {}
        current = ""
        for line in printed:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                monkeypatch.setenv(name, value)
            elif line.startswith("[providers."):
                current = line.split("]")[0].removeprefix("[providers.")
            elif current and line.startswith(("domain = ", "scheme = ")):
                settings.setdefault(current, []).append(line)
        text = base
        for name, lines in settings.items():
            head = f"[providers.{name}]\n"
            text = text.replace(head, head + "\n".join(lines) + "\n")
        policy_file.write_text(text, encoding="utf-8")
        source = write_csv(tmp_path / "in.csv", ["address"], [[f"{n} Main St"] for n in range(3)])
        output = tmp_path / "out.csv"
        result = run("geocode", source, "-o", output, "--config", policy_file, "--workers", "1")
        assert result.code == 0, result.err
        _, rows = read_csv(output)
        assert [r["provider"] for r in rows] == ["opencage", "opencage", "google"]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
