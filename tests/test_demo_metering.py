"""`tollway demo --part metering`: an hour of usage into a SQLite ledger and two billing hooks,
on the memory store and a fake clock; every figure adds up exactly."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from tollway.cli.main import main
from tollway.demo.metering import (
    ENRICH_PRICE,
    GEOCODE_PRICE,
    QUOTA,
    RESERVATION,
    SECRET_ENV,
    SUBJECTS,
    TRAFFIC,
    MeteringDemo,
    run_metering_demo,
)
from tollway.demo.metering_report import render_metering
from tollway.metering.entries import EXCEEDED, THRESHOLD, USAGE


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--part all runs the billing part, which writes its HTML invoice to the current
    directory: keep it in tmp_path."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def demo() -> MeteringDemo:
    return run_metering_demo(1)


def test_the_cli_part_runs_fast_and_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    assert main(["demo", "--part", "metering"]) == 0
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    assert elapsed < 2
    assert out.startswith("Metering: 3 subjects over ")
    assert "Geocoding:" not in out and "tollway demo: a simulated day" not in out
    header = next(line for line in out.splitlines() if line.startswith("subject "))
    assert header.split() == [
        "subject", "attempts", "allowed", "refused", "duplicates", "units:", "store", "ledger",
        "drift", "spend:", "store", "ledger", "drift",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("acct_")}
    assert set(rows) == set(SUBJECTS)
    for cells in rows.values():
        assert cells[7] == "0" and cells[-1] == "0"  # both drift columns
        assert cells[5] == cells[6]  # units: store == ledger
        assert cells[8:10] == cells[10:12]  # spend: store == ledger (amount, currency)
    assert "threshold 50%   reached at 20 of 40" in out
    assert "threshold 100%  reached at 40 of 40" in out
    assert "exceeded        refused at 40 of 40" in out
    assert "Standard Webhooks signatures all " in out and " verified" in out
    assert "tollway reconcile: 6 counters, 0 drifts" in out
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith("Each consumption is in the ledger exactly once: 56 consumptions,")
    assert "MISMATCH" not in out
    assert SECRET_ENV not in os.environ  # the secret was handed over, then taken back


def test_ledger_totals_equal_the_store_counters(demo: MeteringDemo) -> None:
    figures = demo.by_subject()
    assert list(figures) == list(SUBJECTS)
    for s in demo.subjects:
        assert (s.ledger_units, s.ledger_spend) == (s.store_units, s.store_spend)
        assert s.unit_drift == 0 and s.spend_drift == 0
        assert s.ledger_events == s.allowed
        assert s.store_units > 0
    assert demo.ledger_count == demo.allowed == 6 + 9 + 1 + QUOTA
    assert demo.reconcile_rows == 2 * len(SUBJECTS) and demo.reconcile_drifts == 0


def test_attempts_refusals_and_duplicates_add_up(demo: MeteringDemo) -> None:
    for s in demo.subjects:
        assert s.allowed + s.refused == s.attempts
    small, steady, heavy = (demo.by_subject()[name] for name in SUBJECTS)
    # the two light subjects: every geocode and the reservation allowed, never refused
    assert (small.allowed, small.refused) == (TRAFFIC["acct_small"][1], 0)
    assert (steady.allowed, steady.refused) == (TRAFFIC["acct_steady"][1] + 1, 0)
    # the heavy one: exactly its quota, then refused (a retry of a refused id is a call again)
    assert heavy.allowed == QUOTA == heavy.store_units
    assert heavy.refused >= TRAFFIC["acct_heavy"][1] - QUOTA
    assert heavy.attempts >= TRAFFIC["acct_heavy"][1]
    assert sum(s.duplicates for s in demo.subjects) > 0
    assert demo.caller_ids_in_ledger == demo.caller_ids > 0


def test_the_reservation_is_counted_at_its_commit_not_its_estimate(demo: MeteringDemo) -> None:
    who, estimate, actual = RESERVATION
    assert actual < estimate
    steady = demo.by_subject()[who]
    geocodes = TRAFFIC[who][1]
    assert steady.store_units == steady.ledger_units == geocodes + actual
    assert steady.store_spend == geocodes * GEOCODE_PRICE + actual * ENRICH_PRICE
    for name in SUBJECTS:
        if name != who:
            s = demo.by_subject()[name]
            assert s.store_spend == s.store_units * GEOCODE_PRICE


def test_the_callable_got_each_consumption_once_and_every_notice(demo: MeteringDemo) -> None:
    assert demo.callable_counts == Counter({USAGE: demo.allowed, THRESHOLD: 3, EXCEEDED: 1})
    ids = demo.callable_usage_ids
    assert len(ids) == len(set(ids)) == demo.allowed
    assert [(n.type, n.threshold, n.used) for n in demo.notices] == [
        (THRESHOLD, "0.5", QUOTA // 2),
        (THRESHOLD, "0.8", QUOTA * 8 // 10),
        (THRESHOLD, "1", QUOTA),
        (EXCEEDED, None, QUOTA),
    ]
    assert {(n.subject, n.limit) for n in demo.notices} == {("acct_heavy", "daily")}
    times = [n.time for n in demo.notices]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert demo.hook_statuses == Counter(
        {("calls", "delivered"): demo.allowed + 4, ("minutes", "delivered"): demo.webhook.requests}
    )


def test_every_webhook_request_verified_and_the_buckets_sum_to_the_usage(
    demo: MeteringDemo,
) -> None:
    hook = demo.webhook
    assert hook.requests > 0
    assert hook.verified == hook.requests and hook.failures == []
    for s in demo.subjects:
        assert hook.quantity(s.subject) == s.store_units
        assert hook.events[s.subject] == s.allowed
        assert hook.amounts[s.subject] == s.store_spend
    minutes = {minute for _, minute in hook.buckets}
    assert len(minutes) > 5 and all(m.startswith("09:") for m in minutes)
    # the first flush posts the closed minutes; the last one closes after its grace
    first, again = demo.flushes
    assert first.written == demo.allowed and again.written == 0
    assert first.webhook_requests > 0 and again.webhook_requests > 0
    assert first.webhook_requests + again.webhook_requests == hook.requests


def test_part_all_includes_the_metering_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--part", "all"]) == 0
    out = capsys.readouterr().out
    inbound = out.index("tollway demo: a simulated day")
    metering = out.index("\nMetering: 3 subjects over ")
    assert inbound < metering
    if "Geocoding:" in out:  # with the geocode extra
        assert inbound < out.index("Geocoding:") < metering
    assert "Each consumption is in the ledger exactly once" in out


def test_same_seed_same_figures_and_output(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = run_metering_demo(3), run_metering_demo(3)
    assert first == second
    assert render_metering(first) == render_metering(second)
    assert first.notices == second.notices and first.webhook == second.webhook
    other = run_metering_demo(4)
    assert [n.time for n in other.notices] != [n.time for n in first.notices]
    outputs = []
    for _ in range(2):
        assert main(["demo", "--part", "metering", "--seed", "3"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == render_metering(first) + "\n"


def test_the_demo_leaves_no_thread_and_restores_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, "left as it was")
    before = {t.ident for t in threading.enumerate()}
    demo = run_metering_demo(2)
    assert os.environ[SECRET_ENV] == "left as it was"
    assert demo.webhook.verified == demo.webhook.requests > 0
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert left == []


def test_a_bad_total_is_reported_not_hidden(demo: MeteringDemo) -> None:
    import copy

    broken = copy.deepcopy(demo)
    broken.subjects[0].ledger_units -= 1
    broken.webhook.failures.append("no_matching_signature")
    broken.webhook.verified -= 1
    text = render_metering(broken)
    last = text.splitlines()[-1]
    assert last.startswith("MISMATCH: ")
    assert "drift for acct_small" in last and "1 webhook request not verified" in last
    assert "exactly once" not in text
    row = next(line.split() for line in text.splitlines() if line.startswith("acct_small "))
    assert row[5:8] == [str(demo.subjects[0].store_units), str(demo.subjects[0].store_units - 1),
                        "+1"]  # fmt: skip
    assert row[-1] == "0" and broken.subjects[0].spend_drift == Decimal(0)
    assert f"signatures {demo.webhook.requests - 1} verified, 1 NOT" in text


def test_part_all_without_the_geocode_extra_still_runs_the_metering_part(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tollway.demo.geocoding", None)  # as if geopy were missing
    assert main(["demo", "--part", "all"]) == 0
    captured = capsys.readouterr()
    assert "skipped the geocoding part" in captured.err
    assert "Geocoding:" not in captured.out
    assert "\nMetering: 3 subjects over " in captured.out
    metering = captured.out[captured.out.index("\nMetering: ") : captured.out.index("\nBilling: ")]
    assert metering.rstrip().splitlines()[-1].startswith("Each consumption is in the ledger")


@pytest.mark.parametrize("seed", range(1, 41))
def test_every_seed_adds_up(seed: int) -> None:
    demo = run_metering_demo(seed)
    assert demo.callable_counts == Counter({USAGE: demo.allowed, THRESHOLD: 3, EXCEEDED: 1})
    assert all(s.unit_drift == 0 and s.spend_drift == 0 for s in demo.subjects)
    assert demo.webhook.verified == demo.webhook.requests > 0
    assert render_metering(demo).splitlines()[-1].startswith("Each consumption is in the ledger")
