"""The metering part of ``tollway demo``: an hour of traffic for three subjects on the memory
store and a fake clock, every allowed step written to a SQLite ledger and delivered to two
billing hooks, then the store's counters held against the ledger's totals.

- The policy has a ``[ledger]`` on a SQLite file in a temporary folder, one plan with a daily
  quota (thresholds at 50, 80 and 100 %) and a daily budget, two priced operations, and two
  hooks: a callable given every usage event, threshold and exceeded notice (bound to the run's
  own `Inbox`), and a webhook aggregated per minute, posted to a real HTTP receiver on
  127.0.0.1 that verifies every request's Standard Webhooks signature (a ``whsec_`` secret made
  for the run and handed to the `Dispatcher` directly: nothing is put in the environment).
- ``acct_small`` and ``acct_steady`` stay under half their quota; ``acct_steady`` also holds
  one reservation and commits it below its estimate. ``acct_heavy`` crosses every threshold
  and is refused once its quota is gone. Some calls carry a request id, and a few of those are
  retried: the retry is answered as a duplicate and consumes nothing.
- The run commits the store's queued entries to the ledger itself (what `Tollway.flush` does in
  embedded mode), with the hooks' messages, and drives a `Dispatcher` given the secret: the
  `Tollway` holds the policy without its hooks, so it never looks for a secret in the
  environment. ``[ledger] flush_ms`` is long, so the embedded thread stays idle and the figures
  are the same on every run of a seed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollway.client import Tollway
from tollway.clock import US
from tollway.demo.metering_figures import (
    FlushStep,
    MeteringDemo,
    NoticeSeen,
    SubjectFigures,
    WebhookFigures,
)
from tollway.demo.receiver import Receiver, Request
from tollway.metering.cloudevents import decode
from tollway.metering.embedded import commit_batch
from tollway.metering.entries import EXCEEDED, THRESHOLD, USAGE, Notice, decode_entry
from tollway.metering.hooks import Dispatcher
from tollway.metering.ledger.events import UsageEvent
from tollway.metering.reconcile import reconcile
from tollway.metering.sinks import CallableSink, Message, Sink
from tollway.metering.webhooks import WebhookSecret, generate_secret
from tollway.policy import load
from tollway.policy.model import HookConfig, Policy
from tollway.reservation import Reservation
from tollway.stores.memory import MemoryStore
from tollway.testing import FakeClock

__all__ = [
    "CALLABLE",
    "SECRET_ENV",
    "SUBJECTS",
    "Inbox",
    "MeteringDemo",
    "NoticeSeen",
    "SubjectFigures",
    "WebhookFigures",
    "demo_metering_policy",
    "run_metering_demo",
]

SECRET_ENV = "TOLLWAY_DEMO_HOOK_SECRET"
"""The variable the webhook's ``secret_env`` names; the run hands the `Dispatcher` a mapping
holding it, never the process environment."""
CALLABLE = "tollway.demo.metering:Inbox.receive"
"""The callable hook's name; each run binds it to its own `Inbox`."""
SUBJECTS = ("acct_small", "acct_steady", "acct_heavy")
QUOTA = 40
"""The plan's daily quota, in units; thresholds at 50, 80 and 100 % of it."""
GEOCODE_PRICE = Decimal("0.005")
ENRICH_PRICE = Decimal("0.02")
START = datetime(2026, 6, 10, 9, 0, tzinfo=timezone.utc)
GRACE_S = 5.0
"""The dispatcher's grace after a minute ends before its bucket is sent (its default)."""

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


# --------------------------------------------------------------------------- the run


class Inbox:
    """What the callable hook is given, in one run (the dispatcher may call from a thread)."""

    def __init__(self) -> None:
        self._messages: list[Message] = []
        self._lock = threading.Lock()

    def receive(self, message: Message) -> None:
        with self._lock:
            self._messages.append(message)

    def taken(self) -> list[Message]:
        with self._lock:
            return list(self._messages)


class _Run:
    """One run's objects: the client (its policy without the hooks), the ledger, and a
    dispatcher given the webhook's secret and the run's inbox."""

    def __init__(self, policy: Policy, clock: FakeClock, secret: str, inbox: Inbox) -> None:
        self.policy = policy
        self.clock = clock
        self.tw = Tollway(dataclasses.replace(policy, hooks=()), clock=clock)
        store = self.tw.store
        assert isinstance(store, MemoryStore)
        self.store = store

        def sinks(hook: HookConfig, secrets: tuple[WebhookSecret, ...]) -> Sink | None:
            return CallableSink(inbox.receive, name=CALLABLE) if hook.kind == "callable" else None

        self.dispatcher = Dispatcher(
            self.tw.ledger, policy.hooks, clock=clock, env={SECRET_ENV: secret}, sink_factory=sinks
        )

    def flush(self, receiver: Receiver) -> FlushStep:
        """Write the queued entries to the ledger with their hook messages, then deliver what
        is due; what it wrote and what the receiver got meanwhile."""
        before = len(receiver.taken())
        with self.store.lock:
            taken = list(self.store.events)
            self.store.events.clear()
        now = self.clock()
        events: list[UsageEvent] = []
        notices: list[Notice] = []
        for entry in taken:
            item = decode_entry("memory", "", entry, recorded_at_us=now, policy=self.policy)
            if isinstance(item, UsageEvent):
                events.append(item)
            else:
                notices.append(item)
        written = commit_batch(self.tw.ledger, events, notices, self.policy, now)
        while self.dispatcher.run_once(100) == 100:  # until nothing more is due now
            pass
        when = self.clock.now.strftime("%H:%M:%S")
        return FlushStep(when, written, len(receiver.taken()) - before)

    def close(self) -> None:
        try:
            self.dispatcher.close()
        finally:
            self.tw.close()


def run_metering_demo(seed: int = 1) -> MeteringDemo:
    """Run the hour, flush, let the last minute's bucket close, and gather the figures."""
    clock = FakeClock(START)
    secret = generate_secret()
    figures = {subject: SubjectFigures(subject) for subject in SUBJECTS}
    taken_ids: set[str] = set()
    inbox = Inbox()
    with (
        Receiver(secret) as receiver,
        tempfile.TemporaryDirectory(prefix="tollway-demo-") as folder,
    ):
        ledger_url = f"sqlite:///{Path(folder) / 'demo-ledger.db'}"
        policy = load(demo_metering_policy(ledger_url, receiver.url))
        run = _Run(policy, clock, secret, inbox)
        try:
            _traffic(run.tw, clock, seed, figures, taken_ids)
            minutes = math.ceil((clock() - int(START.timestamp()) * US) / (60 * US))
            flushes = [run.flush(receiver)]
            # past the last minute and the dispatcher's grace: its bucket closes
            clock.set((clock() // (60 * US) + 1) * 60 + GRACE_S + 1)
            flushes.append(run.flush(receiver))
            demo = _gather(run.tw, seed, figures, taken_ids, minutes, flushes)
        finally:
            run.close()
    _callable_figures(demo, inbox.taken())
    demo.webhook = _webhook_figures(receiver.taken())
    return demo


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


def _webhook_figures(requests: list[Request]) -> WebhookFigures:
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
