"""`tollway demo`: a simulated day through the engine — fast, deterministic, and true to the
policy's numbers."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest

from tollway.cli.main import main
from tollway.demo import DEMO_POLICY, DemoResult, SubjectStats, demo_policy, simulate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tollway.toml"
SEEDS = (1, 2, 7, 42)


def by_name(result: DemoResult) -> dict[str, SubjectStats]:
    return {stats.name: stats for stats in result.subjects}


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The billing part writes its HTML invoice to the current directory: keep it in tmp_path."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module", params=SEEDS)
def day(request: pytest.FixtureRequest) -> DemoResult:
    seed: int = request.param
    return simulate(seed)


def test_the_built_in_policy_is_the_example_file() -> None:
    packaged = resources.files("tollway.demo").joinpath("tollway.toml").read_bytes()
    assert EXAMPLE.read_bytes() == packaged
    assert packaged.decode("utf-8") == DEMO_POLICY
    # one file, not a copy: the example links to the package data the demo reads
    assert EXAMPLE.resolve() == (ROOT / "src" / "tollway" / "demo" / "tollway.toml").resolve()


@pytest.mark.slow
def test_a_built_wheel_carries_the_demo_policy(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("tollway-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("tollway/demo/tollway.toml") == EXAMPLE.read_bytes()
        billing = ROOT / "src" / "tollway" / "demo" / "billing.toml"
        assert archive.read("tollway/demo/billing.toml") == billing.read_bytes()


def test_demo_command_runs_fast_and_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    code = main(["demo"])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    assert code == 0
    assert elapsed < 10
    for text in ("light", "heavy", "upgrader", "spender", "free -> pro", "seed 1, 4 subjects"):
        assert text in out
    assert "subject   plan         attempts  allowed  denied  burst  hourly  daily  spend" in out
    assert "hour   calls  allowed  denied" in out
    assert "first denied by hourly" in out
    assert "first denied by spend (enrich)" in out
    assert "Billing: March 2026" in out and "written to tollway-invoice-INV-2026-0004.html" in out
    assert "moved from free to pro; counts kept: daily " in out
    # the hour table has one row per hour, 00:00 to 23:00
    hours = [line[:5] for line in out.splitlines() if line[:3].rstrip(":").isdigit()]
    assert [h for h in hours if h.endswith(":00")][:24] == [f"{h:02d}:00" for h in range(24)]


def test_same_seed_same_output_other_seed_other_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outputs = []
    for seed in ("3", "3", "4"):
        assert main(["demo", "--seed", seed]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_decision_table_rows_add_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    result = simulate(5)
    lines = out.splitlines()
    for stats in result.subjects:
        row = next(line for line in lines if line.startswith(f"{stats.name} "))
        cells = row.split()
        numbers = [int(cell) for cell in cells if cell.isdigit()]
        assert numbers[:3] == [stats.attempts, stats.allowed, stats.denied]
        assert stats.attempts == stats.allowed + stats.denied


def test_every_attempt_is_counted_once(day: DemoResult) -> None:
    assert sum(s.attempts for s in day.subjects) == sum(h.attempts for h in day.hours)
    assert sum(s.allowed for s in day.subjects) == sum(h.allowed for h in day.hours)
    for stats in day.subjects:
        assert stats.attempts == stats.allowed + stats.denied
        # every denial names at least one limit, and no limit more often than there were denials
        assert sum(stats.denied_by.values()) >= stats.denied
        assert all(count <= stats.denied for count in stats.denied_by.values())


def test_free_hours_never_pass_more_than_quota_plus_grace(day: DemoResult) -> None:
    hourly = next(limit for limit in demo_policy().plans["free"].limits if limit.name == "hourly")
    assert hourly.quota is not None and hourly.grace is not None
    hard = hourly.quota.count + hourly.grace.extra(hourly.quota.count)
    assert hard == 120
    free_hours = [
        units
        for stats in day.subjects
        for units, plan in zip(stats.units, stats.plan_by_hour, strict=True)
        if plan == "free"
    ]
    assert len(free_hours) >= 24 * 2 + 12
    assert max(free_hours) == hard  # the heavy subject uses its grace, and no more
    heavy = by_name(day)["heavy"]
    assert sum(heavy.units) == 1000  # the free daily quota, exactly
    assert heavy.denied_by["hourly"] > 0
    assert heavy.denied_by["daily"] > 0
    assert heavy.end is not None
    assert heavy.end.limit("daily").remaining == 0


def test_bursts_hit_the_rate_limit() -> None:
    stats = by_name(simulate(1))
    assert stats["heavy"].denied_by["burst"] > 0
    assert stats["upgrader"].denied_by["burst"] > 0
    assert stats["spender"].denied_by["burst"] > 0
    assert stats["light"].denied == 0  # the well-behaved subject is never refused


def test_spender_runs_its_budget_out_and_reservations_settle_below_estimate(
    day: DemoResult,
) -> None:
    spender = by_name(day)["spender"]
    assert spender.plans == ["pro"]
    assert spender.denied_by["spend"] > 0
    assert 0 < spender.committed < spender.estimated
    assert spender.estimated == 20 * spender.reservations
    assert spender.end is not None
    spend = spender.end.limit("spend")
    # the budget holds exactly what was committed: 0.05 USD per unit, nothing held back
    assert spend.used == spender.committed * Decimal("0.05")
    assert Decimal(0) <= spend.remaining < Decimal("1.00")  # not enough for one more enrich
    daily = spender.end.limit("daily")
    assert daily.used == sum(spender.units) - spender.estimated + spender.committed


def test_upgrade_keeps_the_counts_of_same_named_limits(day: DemoResult) -> None:
    upgrader = by_name(day)["upgrader"]
    assert upgrader.plans == ["free", "pro"]
    assert upgrader.plan_by_hour == ["free"] * 12 + ["pro"] * 12
    (upgrade,) = day.upgrades
    assert (upgrade.subject, upgrade.old, upgrade.new) == ("upgrader", "free", "pro")
    assert upgrade.at == 12 * 3600 * 1_000_000
    before, after = upgrade.carried["daily"]
    assert before == after == sum(upgrader.units[:12]) > 0
    assert upgrader.end is not None
    assert upgrader.end.plan == "pro"
    # the day's count runs on across the plan change: every unit allowed, on either plan
    assert upgrader.end.limit("daily").used == sum(upgrader.units)
    assert upgrader.denied_by["hourly"] > 0  # free mornings ran into the hourly quota


def test_more_subjects_repeat_the_roles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--subjects", "6", "--seed", "9"]) == 0
    out = capsys.readouterr().out
    assert "seed 9, 6 subjects" in out
    assert "\nlight-2 " in out
    assert "\nheavy-2 " in out
    assert "upgrader-2" not in out
    result = simulate(9, subjects=6)
    assert [s.role for s in result.subjects] == [
        "light", "heavy", "upgrader", "spender", "light", "heavy",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subjects", "0"], "argument --subjects: '0' is not a whole number >= 1"),
        (["--subjects", "41"], "tollway: error: subjects: 41 is out of range; expected 1 to 40"),
        (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    ],
)
def test_bad_demo_arguments_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err


def test_demo_on_a_policy_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    roomy = tmp_path / "roomy.toml"
    roomy.write_text(DEMO_POLICY.replace('"100/hour"', '"10000/hour"'), encoding="utf-8")
    assert main(["demo", "--config", str(roomy)]) == 0
    out = capsys.readouterr().out
    assert f"policy: {roomy}" in out
    assert "hourly 10000/hour +20% grace" in out
    assert "first denied by hourly" not in out

    other = tmp_path / "other.toml"
    other.write_text("[operations]\nping = {}\n[plans.gold]\nlimits = []\n", encoding="utf-8")
    assert main(["demo", "--config", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tollway: error: {other}: the demo needs plans free and pro")
    assert "missing: plan 'free', plan 'pro', operation 'geocode'" in err


# -- the geocoding part --------------------------------------------------------------------------


def test_geocoding_demo_fails_over_within_every_budget() -> None:
    from tollway.demo.geocoding import demo_addresses, run_geocoding_demo

    demo = run_geocoding_demo()
    report = demo.report
    providers = [o.provider if o.status == "ok" else None for o in report.outcomes]
    # OpenCage first; the 429 after four rows sends the next paid rows to HERE for 30 s
    assert providers[:4] == ["opencage"] * 4
    assert report.outcomes[4].provider == "here"
    assert [(s.provider, s.reason) for s in report.outcomes[4].skipped] == [("opencage", "failed")]
    assert "throttled" in report.outcomes[4].skipped[0].detail
    assert {o.skipped[0].reason for o in report.outcomes[6:10]} == {"cooldown"}
    # every provider ends exactly at its quota or budget, never past it
    spend = report.providers
    assert (spend["opencage"].calls, spend["here"].calls, spend["google"].calls) == (12, 8, 10)
    assert spend["google"].cost == Decimal("0.050")
    assert spend["here"].cost == Decimal("0.008")
    assert demo.served == {"opencage": 12, "here": 8, "google": 10}  # what was billed = counted
    # repeats come from the cache, unpaid; the rows past every budget are reported, not fatal
    addresses = demo_addresses()
    assert report.cached == sum(1 for i, a in enumerate(addresses) if i % 6 == 5) - 1
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert len(failed) == len(addresses) - 12 - 8 - 10 - report.cached
    assert {(s.provider, s.reason) for s in failed[0].skipped} == {
        ("opencage", "daily"),
        ("here", "daily"),
        ("google", "budget"),
    }
    assert [a.threshold for a in demo.alerts] == [Decimal("0.5"), Decimal("0.8"), Decimal("1.0")]


def test_demo_prints_the_geocoding_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--part", "geocoding"]) == 0
    out = capsys.readouterr().out
    assert 'through route "geocoding" (opencage -> here -> google)' in out
    assert "opencage: failed (throttled: HTTP 429" in out
    assert "opencage: daily; here: daily; google: budget" in out
    assert "google       10  0.050 USD  budget: 0.00 USD" in out
    assert "alert: google budget reached 100%" in out
    # the counts add up to the rows, and the CSV (deleted with its folder) is not named
    assert (
        "42 rows -> a temporary CSV: 36 geocoded (36 found, 0 with no match; 6 of them from " in out
    )
    assert "6 not geocoded (6 failed)" in out
    assert ".csv" not in out
