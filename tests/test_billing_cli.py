"""`tollway billing`: every subcommand run for real (`main` in this process, and the module as
a subprocess) on a policy file with a SQLite ledger, prepared in the past with a fake clock
(the command has the real one), on the memory store and on a real Redis."""

from __future__ import annotations

import csv
import html
import io
import json
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from servers import find_free_port
from tollway import Tollway
from tollway.billing import render
from tollway.billing.records import Line
from tollway.cli import billing as billing_cli
from tollway.cli import billing_output
from tollway.cli.main import main
from tollway.metering.ledger import UsageEvent
from tollway.policy import load
from tollway.testing import FakeClock

POLICY = """\
[defaults]
plan = "free"
[store]
url = "memory://"
[ledger]
url = "sqlite:///{db}"
flush_ms = 10
[operations.lookup]
price = "0.01 USD"
[operations.geocode]
{billing}
[plans.free]
limits = [ {{ name = "hourly", quota = "1000/hour" }} ]
[plans.pro]
fee = {{ amount = "100.00 USD", timing = "arrears" }}
limits = [ {{ name = "wallet", credits = "USD", operations = ["lookup"] }} ]
charges = [ {{ meter = "geocode", model = "unit", unit = "0.004" }} ]
"""
BILLING = """\
[billing]
currency = "USD"
period = "month"
invoice_grace = "1h"
"""

NO_BILLING = """\
[ledger]
url = "sqlite:///{db}"
[operations.lookup]
[plans.free]
limits = [ {{ name = "hourly", quota = "1000/hour" }} ]
"""


def month_start(months_back: int) -> datetime:
    """The first instant of the month ``months_back`` before the real now (UTC)."""
    now = datetime.now(timezone.utc)
    index = now.year * 12 + now.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=timezone.utc)


@dataclass
class Prepared:
    config: str
    db: Path
    number: str
    geocode_events: list[str]

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
        code = main(["billing", *argv, "--config", self.config])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db) as db:
            return db.execute(sql).fetchall()


@dataclass
class Run:
    code: int
    out: str
    err: str


def write_policy(tmp_path: Path, billing: str = BILLING) -> tuple[str, Path]:
    db = tmp_path / "ledger.db"
    path = tmp_path / "tollway.toml"
    path.write_text(POLICY.format(db=db, billing=billing), encoding="utf-8")
    return str(path), db


@pytest.fixture
def prepared(tmp_path: Path) -> Prepared:
    """Subject ``a`` on pro three months ago: 1.00 of credits, 5 lookups paid by them, 5
    geocodes; that month's invoice finalized (with the fake clock, in the past)."""
    config, db = write_policy(tmp_path)
    clock = FakeClock(month_start(3))
    with Tollway(load(Path(config)), clock=clock) as tw:
        tw.assign("a", "pro")
        tw.billing.grant("a", Decimal("1.00"), id="g1")
        for _ in range(5):
            assert tw.acquire("a", "lookup").allowed
            assert tw.acquire("a", "geocode").allowed
        tw.flush()
        clock.set(month_start(2).replace(hour=2))
        closed = tw.billing.close()
    (invoice,) = closed.invoices
    assert invoice.number is not None
    prep = Prepared(config, db, invoice.number, [])
    prep.geocode_events = [
        str(r[0])
        for r in prep.rows("SELECT id FROM usage_events WHERE meter = 'geocode' ORDER BY id")
    ]
    assert len(prep.geocode_events) == 5
    return prep


def stored_body(prep: Prepared, number: str) -> str:
    (row,) = prep.rows(f"SELECT body FROM billing_invoices WHERE number = '{number}'")
    return str(row[0])


def canonical(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- show ------------------------------------------------------------------------------------


def test_show_json_is_the_stored_canonical_body_and_the_same_bytes_every_run(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    first = prepared.run(capsys, "show", prepared.number)
    second = prepared.run(capsys, "show", prepared.number, "--format", "json")
    assert first.code == second.code == 0
    assert first.out == second.out
    assert canonical(first.out) == stored_body(prepared, prepared.number)
    document = json.loads(first.out)
    assert (document["number"], document["status"], document["total"]) == (
        prepared.number,
        "finalized",
        "100.02",
    )


@pytest.mark.parametrize("fmt", ["csv", "html"])
def test_show_csv_and_html_render_the_stored_invoice_the_same_every_run(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    runs = [prepared.run(capsys, "show", prepared.number, "--format", fmt) for _ in range(2)]
    assert [r.code for r in runs] == [0, 0]
    assert runs[0].out == runs[1].out
    with Tollway(load(Path(prepared.config))) as tw:
        inv = tw.billing.invoice(prepared.number)
    expected = render.to_csv(inv) if fmt == "csv" else render.to_html(inv)
    assert runs[0].out == expected
    assert prepared.number in runs[0].out


def test_show_lines_json_traces_each_line_to_its_ledger_events(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prepared.run(capsys, "show", prepared.number, "--lines")
    assert run.code == 0
    decoder = json.JSONDecoder()
    invoice, end = decoder.raw_decode(run.out)
    events, _ = decoder.raw_decode(run.out[end:].lstrip())
    # the invoice document is unchanged by --lines
    assert canonical(run.out[:end]) == stored_body(prepared, prepared.number)
    assert events["type"] == "invoice_events"
    by_kind = {(x["kind"], x["description"]): x for x in events["lines"]}
    assert len(events["lines"]) == len(invoice["lines"])
    geocode = by_kind[("usage", "geocode (pro), unit")]
    assert [e["id"] for e in geocode["events"]] == prepared.geocode_events
    assert geocode["complete"] is True
    assert {e["quantity"] for e in geocode["events"]} == {1}
    lookup = by_kind[("usage", "lookup (pro), prepaid")]
    assert [e["amount"] for e in lookup["events"]] == ["0.01"] * 5
    assert by_kind[("fee", "Plan pro fee")]["events"] == []


def test_show_lines_pages_and_caps_the_events(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prepared.run(capsys, "show", prepared.number, "--lines", "--events", "2")
    assert run.code == 0
    decoder = json.JSONDecoder()
    _, end = decoder.raw_decode(run.out)
    events, _ = decoder.raw_decode(run.out[end:].lstrip())
    geocode = next(x for x in events["lines"] if x["description"].startswith("geocode"))
    assert [e["id"] for e in geocode["events"]] == prepared.geocode_events[:2]
    assert geocode["complete"] is False
    bad = prepared.run(capsys, "show", prepared.number, "--lines", "--events", "0")
    assert bad.code == 2
    assert "--events" in bad.err


def test_show_lines_reads_every_page(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(billing_cli, "PAGE", 2)  # 5 events: pages of 2, 2 and 1
    run = prepared.run(capsys, "show", prepared.number, "--lines")
    decoder = json.JSONDecoder()
    _, end = decoder.raw_decode(run.out)
    events, _ = decoder.raw_decode(run.out[end:].lstrip())
    geocode = next(x for x in events["lines"] if x["description"].startswith("geocode"))
    assert [e["id"] for e in geocode["events"]] == prepared.geocode_events
    assert geocode["complete"] is True


def test_show_lines_csv_and_html(prepared: Prepared, capsys: pytest.CaptureFixture[str]) -> None:
    csv_run = prepared.run(capsys, "show", prepared.number, "--format", "csv", "--lines")
    assert csv_run.code == 0
    invoice_part, events_part = csv_run.out.split("\n\n")
    assert (
        invoice_part + "\n" == prepared.run(capsys, "show", prepared.number, "--format", "csv").out
    )
    rows = events_part.splitlines()
    assert rows[0] == "line,event,occurred_at,quantity,amount"
    assert sum(1 for r in rows[1:] for e in prepared.geocode_events if f",{e}," in r) == 5
    assert len(rows) == 1 + 10
    html_run = prepared.run(capsys, "show", prepared.number, "--format", "html", "--lines")
    assert html_run.code == 0
    section = html_run.out.index('<section class="events">')
    assert section < html_run.out.index("</body>")
    assert all(e in html_run.out[section:] for e in prepared.geocode_events)


def test_show_output_writes_the_file(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "out.html"
    run = prepared.run(capsys, "show", prepared.number, "--format", "html", "--output", str(target))
    assert (run.code, run.out) == (0, "")
    assert "written to" in run.err
    with Tollway(load(Path(prepared.config))) as tw:
        expected = render.to_html(tw.billing.invoice(prepared.number))
    assert target.read_bytes() == expected.encode("utf-8")
    bad = prepared.run(capsys, "show", prepared.number, "--output", str(tmp_path / "no" / "x"))
    assert bad.code == 2
    assert bad.err.startswith("tollway: error: --output: cannot write")
    assert "Traceback" not in bad.err


def test_show_an_unknown_invoice_exits_2(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prepared.run(capsys, "show", "INV-1999-999999")
    assert (run.code, run.out) == (2, "")
    assert run.err == "tollway: error: invoice 'INV-1999-999999' is not in the ledger\n"


# -- preview, invoices, close ----------------------------------------------------------------


def test_preview_prints_the_open_period_draft(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    table = prepared.run(capsys, "preview", "a")
    assert table.code == 0
    head, columns, *rows = table.out.splitlines()
    assert head.startswith("draft invoice of a, USD, " + month_start(0).strftime("%Y-%m-%d"))
    assert columns.split() == ["#", "kind", "description", "quantity", "amount"]
    assert rows[0].split() == ["0", "fee", "Plan", "pro", "fee", "100.00"]
    assert rows[-1].split() == ["total", "100.00"]
    document = json.loads(prepared.run(capsys, "preview", "a", "--format", "json").out)
    assert (document["status"], document["number"], document["total"]) == ("draft", None, "100.00")
    assert document["period_start"] == month_start(0).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_invoices_lists_newest_first(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prepared.run(capsys, "close").code == 0
    listed = json.loads(prepared.run(capsys, "invoices", "a", "--format", "json").out)
    starts = [inv["period_start"] for inv in listed]
    assert starts == sorted(starts, reverse=True)
    assert starts[-1] == month_start(3).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed[-1]["number"] == prepared.number
    table = prepared.run(capsys, "invoices", "a", "--limit", "1")
    assert table.code == 0
    header, row = table.out.splitlines()
    assert header.split()[:2] == ["number", "status"]
    assert row.split()[0] == listed[0]["number"]
    empty = prepared.run(capsys, "invoices", "nobody")
    assert (empty.code, empty.out) == (0, "nobody: no invoices\n")


def test_close_finalizes_what_is_due_once(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    first = prepared.run(capsys, "close")
    assert first.code == 0
    made = prepared.rows("SELECT number FROM billing_invoices ORDER BY number")
    numbers = [str(r[0]) for r in made if r[0] != prepared.number]
    assert numbers, "the months after the prepared one are due"
    for number in numbers:
        assert number in first.out
    assert first.out.splitlines()[0].split()[:2] == ["invoice", "subject"]
    second = prepared.run(capsys, "close")
    assert second.code == 0
    assert second.out.startswith("nothing to finalize\n")
    assert prepared.rows("SELECT count(*) FROM billing_invoices") == [(len(made),)]


# -- grant -----------------------------------------------------------------------------------


def test_grant_prints_the_grant_and_the_balance(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prepared.run(
        capsys,
        "grant",
        "b",
        "12.50",
        "--id",
        "promo-1",
        "--priority",
        "3",
        "--expires",
        "2999-01-01T00:00:00Z",
        "--note",
        "welcome",
    )
    assert run.code == 0, run.err
    assert run.out == (
        "grant promo-1: 12.50 USD to b, priority 3, expires 2999-01-01T00:00:00Z, "
        "note 'welcome'\nbalance of b: 12.50 USD\n"
    )
    assert "memory://" in run.err  # the balance is this process's
    assert prepared.rows(
        "SELECT id, amount_micros, priority FROM billing_grants WHERE subject='b'"
    ) == [("promo-1", 12_500_000, 3)]


@pytest.mark.parametrize("text", ["1e3", "-5", "1.5e2", "0.1234567", "nan", "Infinity", "1,5", ""])
def test_grant_refuses_what_is_not_plain_decimal_text_and_writes_nothing(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    run = prepared.run(capsys, "grant", "b", text)
    assert run.code == 2
    assert "argument AMOUNT" in run.err
    assert "expected plain decimal text" in run.err
    assert "Traceback" not in run.err
    assert prepared.rows("SELECT count(*) FROM billing_grants WHERE subject = 'b'") == [(0,)]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0", "amount: 0 is not positive"),
        ("999999999999999", "amount: 999999999999999 is too large"),
    ],
)
def test_grant_refuses_a_zero_or_huge_amount_and_writes_nothing(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    run = prepared.run(capsys, "grant", "b", text)
    assert run.code == 2
    assert run.err.splitlines()[-1].startswith(f"tollway: error: {words}")
    assert prepared.rows("SELECT count(*) FROM billing_grants WHERE subject = 'b'") == [(0,)]


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--expires", "2027-01-01T00:00:00", "with an offset"),
        ("--expires", "tomorrow", "ISO 8601"),
        ("--expires", "2001-01-01T00:00:00Z", "expires: 2001-01-01T00:00:00Z is not in the future"),
        ("--currency", "usd", "currency"),
        ("--priority", "high", "--priority"),
        ("--id", "x" * 1000, "id"),
        ("--note", "n" * 501, "note: expected a str of at most 500 characters"),
    ],
)
def test_grant_bad_options_exit_2_and_write_nothing(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], option: str, value: str, words: str
) -> None:
    run = prepared.run(capsys, "grant", "b", "5.00", option, value)
    assert run.code == 2
    assert words in run.err
    assert "Traceback" not in run.err
    assert prepared.rows("SELECT count(*) FROM billing_grants WHERE subject = 'b'") == [(0,)]


def test_grant_and_balance_persist_on_redis_across_processes(
    tmp_path: Path, redis_url: str
) -> None:
    config, db = write_policy(tmp_path)
    subject = f"cli-{uuid.uuid4().hex[:12]}"

    def grant(amount: str, gid: str) -> subprocess.CompletedProcess[str]:
        argv = ["billing", "grant", subject, amount, "--id", gid]
        argv += ["--config", config, "--store", redis_url]
        return subprocess.run(
            [sys.executable, "-m", "tollway", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = grant("10.00", "g1")
    assert first.returncode == 0, first.stderr
    assert first.stdout.endswith(f"balance of {subject}: 10.00 USD\n")
    second = grant("5.25", "g2")
    assert second.returncode == 0, second.stderr
    assert second.stdout.endswith(f"balance of {subject}: 15.25 USD\n")
    assert "memory://" not in second.stderr
    again = grant("5.25", "g2")  # the same id and terms: no new credit
    assert again.stdout.endswith(f"balance of {subject}: 15.25 USD\n")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM billing_grants").fetchone() == (2,)


# -- credit notes ----------------------------------------------------------------------------


def test_credit_note_back_to_the_balance_and_refund(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prepared.run(
        capsys, "credit-note", prepared.number, "--amount", "5.00", "--reason", "outage"
    )
    assert run.code == 0, run.err
    first, reason = run.out.splitlines()
    assert first.startswith("credit note ")
    assert f"on invoice {prepared.number} of a: 5.00 USD, back to the prepaid balance" in first
    assert reason == "reason: outage"
    refund = prepared.run(
        capsys,
        "credit-note",
        prepared.number,
        "--amount",
        "95.02",
        "--reason",
        "goodwill",
        "--refund",
    )
    assert refund.code == 0, refund.err
    assert "95.02 USD, refunded" in refund.out
    rows = prepared.rows("SELECT amount_micros, refund FROM billing_credit_notes ORDER BY number")
    assert rows == [(5_000_000, 0), (95_020_000, 1)]


def test_over_credit_exits_2_and_leaves_no_credit_note(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prepared.run(
        capsys, "credit-note", prepared.number, "--amount", "100.03", "--reason", "too much"
    )
    assert (run.code, run.out) == (2, "")
    assert run.err.splitlines()[-1].startswith("tollway: error: amount: 100.03 is more than")
    assert "expected at most 100.02" in run.err
    assert prepared.rows("SELECT count(*) FROM billing_credit_notes") == [(0,)]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--amount", "1e2", "--reason", "r"], "argument --amount"),
        (["--amount", "5.001", "--reason", "r"], "amount: 5.001 is not a positive amount"),
        (["--amount", "0", "--reason", "r"], "amount: 0 is not a positive amount"),
        (["--amount", "5.00", "--reason", "r" * 501], "reason: 501 characters"),
        (["--amount", "5.00"], "--reason"),
    ],
)
def test_credit_note_bad_input_exits_2_and_writes_nothing(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    run = prepared.run(capsys, "credit-note", prepared.number, *argv)
    assert run.code == 2
    assert words in run.err
    assert prepared.rows("SELECT count(*) FROM billing_credit_notes") == [(0,)]


def test_unknown_invoice_credit_note_exits_2(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prepared.run(capsys, "credit-note", "NOPE-1", "--amount", "1.00", "--reason", "r")
    assert run.code == 2
    assert "invoice 'NOPE-1' is not in the ledger" in run.err


def test_printed_text_escapes_control_characters(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prepared.run(
        capsys,
        "credit-note",
        prepared.number,
        "--amount",
        "1.00",
        "--reason",
        "ok\x1b[2J\x1b]0;pwned\x07\u202eevil",
    )
    assert run.code == 0, run.err
    assert "\x1b" not in run.out and "\u202e" not in run.out and "\x07" not in run.out
    assert "reason: ok\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil" in run.out


# -- the policy, help, and the module as a process -------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["preview", "a"], ["close"], ["invoices", "a"], ["show", "X"], ["grant", "a", "1.00"]],
)
def test_a_policy_without_billing_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    db = tmp_path / "ledger.db"
    config = str(tmp_path / "plain.toml")
    Path(config).write_text(NO_BILLING.format(db=db), encoding="utf-8")
    code = main(["billing", *argv, "--config", config])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith("tollway: error: billing: the policy ")
    assert "has no [billing] section" in err
    assert not db.exists()  # refused before the ledger is opened


def test_a_policy_without_a_ledger_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "noledger.toml"
    text = POLICY.format(db="x", billing=BILLING).replace('url = "sqlite:///x"\n', "")
    config.write_text(text, encoding="utf-8")
    code = main(["billing", "invoices", "a", "--config", str(config)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (
        "tollway: error: ledger: the policy has no [ledger] url; expected e.g. "
        'url = "sqlite:///tollway.db" or "postgresql://user@host/db"\n'
    )


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["preview", "a\nb"], "subject: 'a\\nb' is not a valid subject"),
        (["invoices", "x" * 5000], "subject: "),
        (["invoices", "a", "--limit", "0"], "argument --limit"),
        (["invoices", "a", "--limit", "10001"], "'10001' is more than 10000"),
        (["preview", "a", "--format", "xml"], "argument --format"),
        (["show", "X", "--format", "pdf"], "argument --format"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(
    prepared: Prepared, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    run = prepared.run(capsys, *argv)
    assert (run.code, run.out) == (2, "")
    assert words in run.err
    assert "Traceback" not in run.err


def test_an_unreachable_store_exits_3(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    down = f"redis://127.0.0.1:{find_free_port()}/0"
    run = prepared.run(capsys, "grant", "c", "1.00", "--id", "g-down", "--store", down)
    assert (run.code, run.out) == (3, "")
    assert run.err.startswith("tollway: error: ")
    # the ledger has the grant (written first); the same command completes it once the store is up
    assert prepared.rows("SELECT id FROM billing_grants WHERE subject = 'c'") == [("g-down",)]


def test_help_lists_the_commands_and_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["billing", "--help"]) == 0
    out = capsys.readouterr().out
    for command in ("preview", "close", "invoices", "show", "grant", "credit-note"):
        assert f"    {command}" in out
    assert main(["billing", "show", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--lines" in out and "--output FILE" in out
    assert "2  usage error; a bad amount" in out
    assert main(["billing"]) == 2


def test_python_dash_m_tollway_billing_show_in_a_subprocess(
    prepared: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tollway", "billing", "show", prepared.number],
        cwd=Path(prepared.config).parent,  # ./tollway.toml is the default --config
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == prepared.run(capsys, "show", prepared.number).out
    assert canonical(done.stdout) == stored_body(prepared, prepared.number)


# -- escaping of what the ledger holds -------------------------------------------------------

HOSTILE_ID = '=HYPERLINK("http://x")<img src=x onerror=alert(1)>'


def hostile_trace() -> list[billing_output.Traced]:
    """A line whose event id came from `tw.record` (a caller's id): a formula and markup."""
    event = UsageEvent(
        id=HOSTILE_ID,
        subject="h",
        operation="geocode",
        meter="geocode",
        quantity=3,
        occurred_at_us=1_788_220_800_000_000,
        recorded_at_us=1_788_220_800_000_000,
    )
    line = Line(
        kind="usage",
        description="geocode <b>",
        amount=Decimal("0.01"),
        exact=Decimal("0.012"),
        period_start_us=1_788_220_800_000_000,
        period_end_us=1_790_812_800_000_000,
        meter="geocode",
        quantity=Decimal(3),
    )
    return [billing_output.Traced(1, line, (event,), True)]


def test_events_csv_keeps_a_formula_from_running() -> None:
    text = billing_output.events_csv(hostile_trace())
    rows = list(csv.reader(io.StringIO(text.lstrip("\n"))))
    assert rows[0] == list(billing_output.EVENT_COLUMNS)
    assert rows[1] == ["1", "'" + HOSTILE_ID, "2026-09-01T00:00:00Z", "3", ""]


def test_events_html_escapes_ids_and_descriptions() -> None:
    text = billing_output.events_html(hostile_trace())
    assert "<img" not in text and "<b>" not in text
    assert html.escape(HOSTILE_ID) in text
    assert "geocode &lt;b&gt;" in text


def test_safe_shows_control_and_format_characters_as_escapes() -> None:
    assert billing_output.safe("plain text, é ü 日本") == "plain text, é ü 日本"
    assert billing_output.safe("a\x1b[2Jb\r\n\u202e\u00a0c") == "a\\x1b[2Jb\\r\\n\\u202e c"
