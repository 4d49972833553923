"""The metering part of ``tollway demo``: an hour of traffic for three subjects on the memory
store and a fake clock, every allowed step written to a SQLite ledger and delivered to two
billing hooks, then the store's counters held against the ledger's totals.

- The policy has a ``[ledger]`` on a SQLite file in a temporary folder, one plan with a daily
  quota (thresholds at 50, 80 and 100 %) and a daily budget, two priced operations, and two
  hooks: a callable (`_received`, in this module) given every usage event, threshold and
  exceeded notice, and a webhook aggregated per minute, posted to a real HTTP receiver on
  127.0.0.1 that verifies every request's Standard Webhooks signature (a ``whsec_`` secret made
  for the run, handed over in the environment variable the hook's ``secret_env`` names).
- ``acct_small`` and ``acct_steady`` stay under half their quota; ``acct_steady`` also holds
  one reservation and commits it below its estimate. ``acct_heavy`` crosses every threshold
  and is refused once its quota is gone. Some calls carry a request id, and a few of those are
  retried: the retry is answered as a duplicate and consumes nothing.
- ``[ledger] flush_ms`` is long, so the background thread stays idle and the demo's own
  `Tollway.flush` calls write the events: the figures are the same on every run of a seed.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tollway.client import Tollway
from tollway.errors import WebhookVerificationError
from tollway.metering.cloudevents import decode
from tollway.metering.entries import EXCEEDED, THRESHOLD, USAGE
from tollway.metering.reconcile import reconcile
from tollway.metering.sinks import Message
from tollway.metering.webhooks import generate_secret, verify
from tollway.reservation import Reservation
from tollway.testing import FakeClock

__all__ = [
    "CALLABLE",
    "SECRET_ENV",
    "SUBJECTS",
    "MeteringDemo",
    "NoticeSeen",
    "SubjectFigures",
    "WebhookFigures",
    "demo_metering_policy",
    "run_metering_demo",
]

SECRET_ENV = "TOLLWAY_DEMO_HOOK_SECRET"
"""The environment variable the webhook's secret is handed over in (restored afterwards)."""
CALLABLE = "tollway.demo_metering:_received"
SUBJECTS = ("acct_small", "acct_steady", "acct_heavy")
QUOTA = 40
"""The plan's daily quota, in units; thresholds at 50, 80 and 100 % of it."""
GEOCODE_PRICE = Decimal("0.005")
ENRICH_PRICE = Decimal("0.02")
START = datetime(2026, 6, 10, 9, 0, tzinfo=timezone.utc)
GRACE_S = 5.0
"""The dispatcher's grace after a minute ends before its bucket is sent (its default)."""
US = 1_000_000

# Per subject: (sessions in the hour, geocode calls in all). The heavy subject asks for more
# than its quota holds; the others stay under 50 % of it, so they raise no notice, even while
# the reservation's hold counts (a hold counts as used until it is settled: acct_steady's 9
# geocodes and its 10 units held stay under 20).
TRAFFIC = {"acct_small": (2, 6), "acct_steady": (4, 9), "acct_heavy": (5, QUOTA + 6)}
RESERVATION = ("acct_steady", 10, 4)
"""(subject, estimate, actual): one enrich held, then committed below its estimate."""


def demo_metering_policy(ledger_url: str, hook_url: str) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "defaults": {"plan": "metered"},
        "operations": {
            "geocode": {"cost": 1, "price": f"{GEOCODE_PRICE} USD"},
            "enrich": {"cost": 1, "price": f"{ENRICH_PRICE} USD"},
        },
        "plans": {
            "metered": {
                "limits": [
                    {
                        "name": "daily",
                        "quota": f"{QUOTA}/day",
                        "timezone": "UTC",
                        "thresholds": ["50%", "80%", "100%"],
                    },
                    {"name": "spend", "budget": "2.00 USD/day", "timezone": "UTC"},
                ]
            }
        },
        "ledger": {"url": ledger_url, "flush_ms": 60_000},
        "hooks": [
            {
                "name": "calls",
                "callable": CALLABLE,
                "events": [USAGE, THRESHOLD, EXCEEDED],
            },
            {
                "name": "minutes",
                "url": hook_url,
                "secret_env": SECRET_ENV,
                "events": [USAGE],
                "aggregate": "minute",
                "timeout_ms": 5000,
            },
        ],
    }


# --------------------------------------------------------------------------- the callable hook

_RECEIVED: list[Message] = []
_received_lock = threading.Lock()


def _received(message: Message) -> None:
    """The callable hook: keep what it is given (the demo reads it afterwards)."""
    with _received_lock:
        _RECEIVED.append(message)


def _take_received() -> list[Message]:
    with _received_lock:
        got = list(_RECEIVED)
        _RECEIVED.clear()
    return got


# --------------------------------------------------------------------------- the webhook receiver


@dataclass
class _Request:
    body: bytes
    headers: dict[str, str]
    verified: bool
    error: str | None = None


class _Receiver:
    """A webhook receiver on 127.0.0.1 (a free port): verifies each request with the secret,
    answers 204 when it verifies and 401 when it does not, and keeps every request."""

    def __init__(self, secret: str) -> None:
        self.requests: list[_Request] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verify(body, headers, secret)
                except WebhookVerificationError as exc:
                    request = _Request(body, headers, False, str(exc))
                else:
                    request = _Request(body, headers, True)
                with receiver._lock:
                    receiver.requests.append(request)
                self.send_response(204 if request.verified else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/billing/tollway"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="tollway-demo-receiver",
            daemon=True,
        )

    def start(self) -> _Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def taken(self) -> list[_Request]:
        with self._lock:
            return list(self.requests)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


# --------------------------------------------------------------------------- the figures


@dataclass
class SubjectFigures:
    """One subject: what it asked for and got, by the store's counters and by the ledger's."""

    subject: str
    attempts: int = 0
    """Calls made for the first time (an acquire, a reservation's hold); retries not counted."""
    allowed: int = 0
    """Consumptions: allowed acquires that were not duplicates, and the committed reservation."""
    refused: int = 0
    duplicates: int = 0
    """Retries of a request id already taken: answered allowed, nothing consumed again."""
    store_units: int = 0
    store_spend: Decimal = Decimal(0)
    ledger_units: int = 0
    ledger_spend: Decimal = Decimal(0)
    ledger_events: int = 0
    currency: str = "USD"

    @property
    def unit_drift(self) -> int:
        return self.store_units - self.ledger_units

    @property
    def spend_drift(self) -> Decimal:
        return self.store_spend - self.ledger_spend


@dataclass(frozen=True)
class NoticeSeen:
    """A threshold or exceeded notice, as the callable hook was given it."""

    type: str
    subject: str
    limit: str
    threshold: str | None
    """A fraction as text (``"0.8"``); None for an exceeded notice."""
    used: int
    """The count when it was raised: the step that reached the threshold, or the count a
    refused step found (an exceeded notice)."""
    time: str
    """When (``HH:MM:SS`` on the demo's clock)."""


@dataclass
class WebhookFigures:
    requests: int = 0
    verified: int = 0
    failures: list[str] = field(default_factory=list)
    buckets: dict[tuple[str, str], int] = field(default_factory=dict)
    """(subject, ``HH:MM``) → units aggregated in that minute (every meter)."""
    amounts: dict[str, Decimal] = field(default_factory=dict)
    """Subject → money aggregated over every bucket."""
    events: dict[str, int] = field(default_factory=dict)
    """Subject → usage events the buckets summed."""

    def quantity(self, subject: str) -> int:
        return sum(q for (s, _), q in self.buckets.items() if s == subject)


@dataclass(frozen=True)
class FlushStep:
    """One `Tollway.flush` of the demo: when, what it wrote, what the webhook got by then."""

    time: str
    """``HH:MM:SS`` on the demo's clock."""
    written: int
    """Usage events new to the ledger."""
    webhook_requests: int
    """Requests the receiver got during this flush (closed minute buckets)."""


@dataclass
class MeteringDemo:
    seed: int
    subjects: list[SubjectFigures]
    notices: list[NoticeSeen]
    callable_counts: Counter[str]
    """Event type → how many the callable hook was given."""
    callable_usage_ids: list[str] = field(compare=False)
    """The usage events' ids, as the callable was given them (ids made by the store are unique
    per run, so they are left out of ``==``)."""
    webhook: WebhookFigures
    ledger_count: int
    """Usage events in the ledger."""
    caller_ids: int
    """Distinct request ids callers gave to consumptions."""
    caller_ids_in_ledger: int
    """How many of them the ledger holds (once each: it keeps one event per id)."""
    reconcile_rows: int
    reconcile_drifts: int
    hook_statuses: Counter[tuple[str, str]]
    """(hook, status) → messages in the ledger's outbox."""
    reservation: tuple[str, int, int]
    flushes: list[FlushStep]
    minutes: int
    """How long the simulated traffic ran, in whole minutes (rounded up)."""

    def by_subject(self) -> dict[str, SubjectFigures]:
        return {figures.subject: figures for figures in self.subjects}

    @property
    def allowed(self) -> int:
        """Consumptions, every subject's."""
        return sum(f.allowed for f in self.subjects)

    @property
    def units(self) -> int:
        """Units the store's daily counters hold, every subject's."""
        return sum(f.store_units for f in self.subjects)


# --------------------------------------------------------------------------- the traffic


@dataclass(frozen=True, order=True)
class _Call:
    at_us: int
    subject: str
    kind: str
    """``acquire``, ``retry`` (the same id again, a second or so later), ``reserve`` or
    ``commit`` (the reservation's, a little later)."""
    ident: str | None = None


def _schedule(seed: int) -> list[_Call]:
    """Every call of the hour, in time order: each subject's calls in a few one-minute
    sessions, a few seconds apart; about a third carry a request id, some of those retried."""
    rng = random.Random(seed)
    start = int(START.timestamp()) * US
    calls: list[_Call] = []
    for subject, (sessions, count) in TRAFFIC.items():
        minutes = sorted(rng.sample(range(58), sessions))
        per = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
        n = 0
        for minute, size in zip(minutes, per, strict=True):
            second = rng.randint(0, 60 - 2 * size)
            for _ in range(size):
                at = start + (minute * 60 + second) * US + rng.randint(0, 999) * 1000
                ident = f"{subject}-req-{n}" if rng.random() < 0.35 else None
                calls.append(_Call(at, subject, "acquire", ident))
                if ident is not None and rng.random() < 0.4:
                    calls.append(_Call(at + rng.randint(1, 3) * US // 2, subject, "retry", ident))
                second += rng.randint(1, 2)
                n += 1
    subject, _, _ = RESERVATION
    minute = rng.randint(20, 40)
    held = start + minute * 60 * US + 30 * US
    calls.append(_Call(held, subject, "reserve", f"{subject}-res"))
    calls.append(_Call(held + 20 * US, subject, "commit", f"{subject}-res"))
    return sorted(calls)


def run_metering_demo(seed: int = 1) -> MeteringDemo:
    """Run the hour, flush, let the last minute's bucket close, and gather the figures."""
    clock = FakeClock(START)
    secret = generate_secret()
    figures = {subject: SubjectFigures(subject) for subject in SUBJECTS}
    taken_ids: set[str] = set()
    _take_received()  # nothing left over from an earlier run in this process
    receiver = _Receiver(secret).start()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="tollway-demo-") as folder,
            _environment(SECRET_ENV, secret),
        ):
            ledger_url = f"sqlite:///{Path(folder) / 'demo-ledger.db'}"
            tw = Tollway(demo_metering_policy(ledger_url, receiver.url), clock=clock)
            try:
                _traffic(tw, clock, seed, figures, taken_ids)
                minutes = math.ceil((clock() - int(START.timestamp()) * US) / (60 * US))
                flushes = [_flush(tw, clock, receiver)]
                # past the last minute and the dispatcher's grace: its bucket closes
                clock.set((clock() // (60 * US) + 1) * 60 + GRACE_S + 1)
                flushes.append(_flush(tw, clock, receiver))
                demo = _gather(tw, seed, figures, taken_ids, minutes, flushes)
            finally:
                tw.close()
    finally:
        receiver.stop()
    received = _take_received()
    _callable_figures(demo, received)
    demo.webhook = _webhook_figures(receiver.taken())
    return demo


def _flush(tw: Tollway, clock: FakeClock, receiver: _Receiver) -> FlushStep:
    before = len(receiver.taken())
    written = tw.flush()
    when = clock.now.strftime("%H:%M:%S")
    return FlushStep(when, written, len(receiver.taken()) - before)


def _traffic(
    tw: Tollway,
    clock: FakeClock,
    seed: int,
    figures: dict[str, SubjectFigures],
    taken_ids: set[str],
) -> None:
    _, estimate, actual = RESERVATION
    holds: dict[str, Reservation] = {}
    for call in _schedule(seed):
        clock.advance(us=call.at_us - clock())
        stats = figures[call.subject]
        if call.kind == "reserve":
            stats.attempts += 1
            hold = tw.reserve(call.subject, "enrich", estimate, id=call.ident)
            if hold.allowed:
                holds[call.subject] = hold
            else:
                stats.refused += 1
            continue
        if call.kind == "commit":
            held = holds.pop(call.subject, None)
            if held is not None:  # the work cost less than estimated
                held.commit(actual)
                stats.allowed += 1
                assert call.ident is not None
                taken_ids.add(call.ident)
            continue
        decision = tw.acquire(call.subject, "geocode", id=call.ident)
        if call.kind == "retry" and decision.duplicate:
            stats.duplicates += 1
            continue
        # a first try, or a retry of one that was refused: a call of its own
        stats.attempts += 1
        if not decision.allowed:
            stats.refused += 1
        elif decision.duplicate:  # never expected: every first try has an id of its own
            stats.duplicates += 1
        else:
            stats.allowed += 1
            if call.ident is not None:
                taken_ids.add(call.ident)


def _gather(
    tw: Tollway,
    seed: int,
    figures: dict[str, SubjectFigures],
    taken_ids: set[str],
    minutes: int,
    flushes: list[FlushStep],
) -> MeteringDemo:
    ledger = tw.ledger
    for subject, stats in figures.items():
        usage = tw.usage(subject)
        daily, spend = usage.limit("daily"), usage.limit("spend")
        stats.store_units = int(daily.used)
        stats.store_spend = Decimal(spend.used)
        stats.currency = spend.currency or "USD"
        assert daily.window_start is not None and daily.window_end is not None
        totals = ledger.totals(subject, start=daily.window_start, end=daily.window_end)
        stats.ledger_units = sum(t.quantity for t in totals.values())
        stats.ledger_spend = sum((t.amount for t in totals.values()), Decimal(0))
        stats.ledger_events = sum(t.events for t in totals.values())
    report = reconcile(tw, ledger, SUBJECTS)
    in_ledger = {m.id for m in ledger.hook_messages(hook="calls", limit=100_000)}
    messages = ledger.hook_messages(limit=100_000)
    return MeteringDemo(
        seed=seed,
        subjects=[figures[s] for s in SUBJECTS],
        notices=[],
        callable_counts=Counter(),
        callable_usage_ids=[],
        webhook=WebhookFigures(),
        ledger_count=ledger.count(),
        caller_ids=len(taken_ids),
        caller_ids_in_ledger=len(taken_ids & in_ledger),
        reconcile_rows=len(report.rows),
        reconcile_drifts=len(report.drifts),
        hook_statuses=Counter((m.hook, m.status) for m in messages),
        reservation=RESERVATION,
        flushes=flushes,
        minutes=minutes,
    )


def _clock_text(text: str) -> str:
    """``HH:MM:SS`` of a CloudEvents time (``2026-06-10T09:14:03.250000Z``)."""
    return text[11:19]


def _callable_figures(demo: MeteringDemo, received: list[Message]) -> None:
    for message in received:
        for event in message.events():
            kind = str(event["type"])
            demo.callable_counts[kind] += 1
            if kind == USAGE:
                demo.callable_usage_ids.append(str(event["id"]))
                continue
            data = event["data"]
            demo.notices.append(
                NoticeSeen(
                    type=kind,
                    subject=str(event["subject"]),
                    limit=str(data["limit"]),
                    threshold=None if kind == EXCEEDED else str(data["threshold"]),
                    used=int(data["used"]),
                    time=_clock_text(str(event["time"])),
                )
            )
    demo.notices.sort(key=lambda n: (n.time, n.subject, n.used, n.type))


def _webhook_figures(requests: list[_Request]) -> WebhookFigures:
    out = WebhookFigures(requests=len(requests))
    for request in requests:
        if not request.verified:
            out.failures.append(request.error or "not verified")
            continue
        out.verified += 1
        event = decode(request.body)
        data = event["data"]
        subject = str(data["subject"])
        key = (subject, _clock_text(str(data["window_start"]))[:5])
        out.buckets[key] = out.buckets.get(key, 0) + int(data["quantity"])
        if data.get("amount") is not None:
            out.amounts[subject] = out.amounts.get(subject, Decimal(0)) + Decimal(data["amount"])
        out.events[subject] = out.events.get(subject, 0) + int(data["events"])
    return out
