"""The billing part of ``tollway demo``: March 2026 and a few days of April for three subjects
on a fake clock, the memory store and a SQLite ledger (in a temporary folder, removed at the
end), on the policy ``billing.toml`` (package data here), then the invoices of both months.

- ``acct_trial`` starts a 14-day trial of pro on March 1: no fee until March 15, then pro's
  fee prorated to the second for the rest of the month.
- ``acct_growth`` is on pro, redeems the coupon LAUNCH20 (20 % off fees for three months) and
  upgrades to team at noon on March 16: March bills each plan's fee for its half of the month,
  and its usage per plan at that plan's prices.
- ``acct_prepaid`` is on pro with a prepaid grant; its lookups draw from it in the step itself
  until it cannot cover one, and are denied from then on (``overage = false``) until it tops up
  on March 24.
- March is closed an hour after it ends (``invoice_grace``). Then a geocode batch that happened
  on March 31 arrives late (`Tollway.record` with ``occurred_at``, within ``[ledger]
  lateness_s``): March's invoice never changes, so the difference is an adjustment line on
  April's. One March invoice is partly refunded (a credit note with ``refund=True``).
- April's first days of traffic run, and April is closed on May 1.

Every random choice comes from the seed, every step's request id from its place in the run,
and the clock is fake, so a seed gives the same invoices on every run, to the byte.
"""

from __future__ import annotations

import random
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from tollway.billing.invoice import CreditNote, Invoice
from tollway.billing.records import GrantRecord
from tollway.billing.render import to_html
from tollway.client import Tollway
from tollway.demo.billing_figures import BillingDemo, Traffic
from tollway.errors import ConfigurationError
from tollway.metering.ledger import UsageEvent
from tollway.testing import FakeClock

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "APRIL_CLOSED",
    "APRIL_DAYS",
    "COUPON",
    "GRANTS",
    "LATE",
    "LATE_ARRIVES",
    "MARCH_CLOSED",
    "REFUND",
    "START",
    "SUBJECTS",
    "TRIAL_DAYS",
    "UPGRADE_AT",
    "BillingDemo",
    "Traffic",
    "billing_policy",
    "html_name",
    "run_billing_demo",
]

SUBJECTS = ("acct_trial", "acct_growth", "acct_prepaid")
START = datetime(2026, 3, 1, tzinfo=timezone.utc)
APRIL = datetime(2026, 4, 1, tzinfo=timezone.utc)
MAY = datetime(2026, 5, 1, tzinfo=timezone.utc)
APRIL_DAYS = 5
"""Days of April with traffic before April is closed on May 1."""
TRIAL_DAYS = 14
"""pro's ``trial_days`` in billing.toml."""
UPGRADE_AT = datetime(2026, 3, 16, 12, tzinfo=timezone.utc)
COUPON = "LAUNCH20"
GRANTS = (
    # (id, amount, when): the starter grant runs out in the month, the top-up later
    ("starter", Decimal("2.00"), START),
    ("topup", Decimal("1.50"), datetime(2026, 3, 24, 7, tzinfo=timezone.utc)),
)
LATE = ("acct_growth", "geocode", 750, datetime(2026, 3, 31, 23, 10, tzinfo=timezone.utc))
"""(subject, meter, quantity, occurred at): recorded on April 1 after March was finalized."""
REFUND = ("acct_trial", Decimal("10.00"), "outage on 2026-03-20")
"""(subject, amount, reason): refunded from the subject's March invoice."""
MARCH_CLOSED = APRIL + timedelta(hours=2)
"""When March is closed: past its end and the policy's one-hour grace."""
LATE_ARRIVES = APRIL + timedelta(hours=2, minutes=30)
"""When the late event is recorded (and the refund made): after March was closed."""
APRIL_CLOSED = MAY + timedelta(hours=2)

# Per subject and operation: (calls a day, (least, most) units a call). The prepaid
# subject's lookups cost 0.01 USD a unit, drawn from its grants.
DAILY: dict[str, dict[str, tuple[int, tuple[int, int]]]] = {
    "acct_trial": {"geocode": (3, (5, 20)), "search": (2, (10, 40))},
    "acct_growth": {"geocode": (4, (20, 80)), "search": (3, (30, 90))},
    "acct_prepaid": {"lookup": (6, (1, 3)), "geocode": (1, (5, 15))},
}


def billing_policy(ledger_url: str) -> dict[str, Any]:
    """The packaged ``billing.toml`` with a ``[ledger]`` at ``ledger_url`` (a long flush
    interval: the run writes the ledger itself, at the moments it chooses)."""
    text = resources.files("tollway.demo").joinpath("billing.toml").read_text("utf-8")
    doc: dict[str, Any] = tomllib.loads(text)
    doc["ledger"] = {"url": ledger_url, "flush_ms": 60_000}
    return doc


def html_name(number: str) -> Path:
    """Where the HTML invoice goes by default: the current directory."""
    return Path(f"tollway-invoice-{number}.html")


def _plan_at(subject: str, at: datetime) -> str:
    if subject == "acct_growth" and at >= UPGRADE_AT:
        return "team"
    return "pro"


class _Run:
    """The run's tally: per (subject, month, plan, operation), as the steps answered."""

    def __init__(self, tw: Tollway, clock: FakeClock, rng: random.Random) -> None:
        self.tw, self.clock, self.rng = tw, clock, rng
        self.counts: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self.steps = 0
        self.ran_out_at: datetime | None = None
        self.grants: list[GrantRecord] = []
        self.price = {
            name: op.price.amount if op.price is not None else Decimal(0)
            for name, op in tw.policy.operations.items()
        }

    def call(self, subject: str, operation: str, units: int) -> None:
        now = self.clock.now
        self.steps += 1
        decision = self.tw.acquire(subject, operation, units, id=f"{subject}-{self.steps:06d}")
        row = self.counts[(subject, now.strftime("%Y-%m"), _plan_at(subject, now), operation)]
        row[0] += 1
        if decision.allowed:
            row[1] += 1
            row[3] += units
        else:
            row[2] += 1
            if self.ran_out_at is None and operation == "lookup":
                self.ran_out_at = now

    def grant(self, gid: str, amount: Decimal) -> None:
        self.grants.append(self.tw.billing.grant("acct_prepaid", amount, id=gid, note="demo"))

    def day(self, day: datetime) -> None:
        """One day's calls, each at a random minute of the working day, in time order."""
        calls = []
        for subject in SUBJECTS:
            for operation, (per_day, (least, most)) in DAILY[subject].items():
                for _ in range(per_day):
                    minute = self.rng.randrange(8 * 60, 20 * 60)
                    calls.append((minute, subject, operation, self.rng.randint(least, most)))
        for minute, subject, operation, units in sorted(calls):
            at = day + timedelta(minutes=minute)
            self._advance(at)
            self.call(subject, operation, units)

    def _advance(self, at: datetime) -> None:
        for gid, amount, when in GRANTS:
            if self.clock.now < when <= at:
                self.clock.set(when)
                self.grant(gid, amount)
        if self.clock.now < UPGRADE_AT <= at:
            self.clock.set(UPGRADE_AT)
            self.tw.assign("acct_growth", "team", proration="prorate")
        self.clock.set(at)

    def traffic(self) -> tuple[Traffic, ...]:
        out = []
        for (subject, month, plan, operation), (calls, allowed, denied, units) in sorted(
            self.counts.items()
        ):
            drawn = self.price[operation] * units if operation == "lookup" else Decimal(0)
            out.append(
                Traffic(subject, month, plan, operation, calls, allowed, denied, units, drawn)
            )
        return tuple(out)


def _days(first: datetime, count: int) -> list[datetime]:
    return [first + timedelta(days=i) for i in range(count)]


def run_billing_demo(seed: int = 1, html: Path | None = None) -> BillingDemo:
    """Run the two months and write the HTML of acct_growth's April invoice to ``html``
    (default: `html_name` in the current directory)."""
    rng = random.Random(seed)
    clock = FakeClock(START)
    with tempfile.TemporaryDirectory(prefix="tollway-demo-billing-") as folder:
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        with Tollway(billing_policy(url), clock=clock) as tw:
            run = _Run(tw, clock, rng)
            tw.assign("acct_trial", "pro", trial=True)
            tw.assign("acct_growth", "pro")
            tw.billing.redeem("acct_growth", COUPON)
            tw.assign("acct_prepaid", "pro")
            run.grant(*GRANTS[0][:2])
            for day in _days(START, 31):
                run.day(day)
            clock.set(MARCH_CLOSED)
            tw.flush()
            march = tw.billing.close().invoices
            clock.set(LATE_ARRIVES)
            subject, meter, quantity, occurred = LATE
            late = tw.record(
                subject,
                meter,
                quantity,
                id="late-geocode-batch",
                occurred_at=occurred,
                plan=_plan_at(subject, occurred),
            )
            tw.flush()
            refunded = next(inv for inv in march if inv.subject == REFUND[0])
            assert refunded.number is not None
            tw.billing.credit_note(refunded.number, amount=REFUND[1], reason=REFUND[2], refund=True)
            for day in _days(APRIL, APRIL_DAYS):
                run.day(day)
            tw.flush()
            clock.set(APRIL_CLOSED)
            tw.billing.close()
            return _result(tw, run, seed, late, html)


def _result(tw: Tollway, run: _Run, seed: int, late: UsageEvent, html: Path | None) -> BillingDemo:
    invoices: list[Invoice] = []
    notes: list[CreditNote] = []
    for subject in SUBJECTS:
        for inv in tw.billing.invoices(subject):
            invoices.append(inv)
            assert inv.number is not None
            notes.extend(tw.billing.credit_notes(inv.number))
    invoices.sort(key=lambda inv: inv.number or "")
    notes.sort(key=lambda note: note.number)
    shown = next(
        inv for inv in invoices if inv.subject == "acct_growth" and inv.period_start >= APRIL
    )
    assert shown.number is not None
    path = html_name(shown.number) if html is None else html
    try:
        path.write_text(to_html(shown), encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"html: cannot write the invoice to {str(path)!r} ({exc.strerror}); expected a "
            "file name in a folder that can be written"
        ) from None
    return BillingDemo(
        seed=seed,
        start=START,
        trial_end=START + timedelta(days=TRIAL_DAYS),
        upgrade_at=UPGRADE_AT,
        traffic=run.traffic(),
        grants=tuple(run.grants),
        balances=tuple((s, tw.billing.balance(s)) for s in SUBJECTS),
        ran_out_at=run.ran_out_at,
        late=late,
        invoices=tuple(invoices),
        credit_notes=tuple(notes),
        html_invoice=shown.number,
        html_path=path,
    )
