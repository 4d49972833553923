"""Usage events appended by the atomic step itself: what is appended, once, and when not.

Every allowed step appends its usage event in the step that consumes (``lua/step.lua``,
``lua/settle.lua``, and the memory store alike); a threshold first reached and a limit first
exceeded in a window append a notice. Read back here straight from where the step put them:
the Redis streams (standalone and a 3-master cluster, on Redis's own clock: every window is a
day in a timezone where it is about noon), or the memory store's queue (on a `FakeClock`,
started at the real time so the same timezones are safe, and moved to roll windows over).
Embedded mode (memory store + a SQLite or PostgreSQL ledger) is followed to the ledger.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from model import day_safe_timezone
from servers import PostgresServer
from tollway import AsyncTollway, InvalidArgumentError, Tollway
from tollway.errors import LedgerUnavailableError
from tollway.metering.entries import (
    EXCEEDED,
    FAILOVER,
    REGISTRY,
    THRESHOLD,
    Notice,
    decode_entry,
    slot_of,
    stream_key,
)
from tollway.metering.ledger import open_ledger
from tollway.metering.ledger.events import UsageEvent
from tollway.outbound.signals import ProviderCallError, Signal
from tollway.stores.memory import MemoryStore
from tollway.testing import FakeClock

TZ = day_safe_timezone()
US = 1_000_000
DAY = 86_400
PRICE = 5_000  # micro-USD per geocode (0.005 USD)

Event = UsageEvent | Notice


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail-open journal written here goes to a temporary folder, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def policy(
    tmp: Path,
    limits: list[dict[str, Any]],
    *,
    ledger: bool = True,
    providers: dict[str, Any] | None = None,
    **ledger_options: Any,
) -> dict[str, Any]:
    """One plan ``free`` (the default) with ``limits``; a SQLite ledger unless ``ledger`` is
    False. The drain thread of embedded mode waits a minute unless ``flush_ms`` says less, so
    the memory store's queue holds every entry the test made."""
    doc: dict[str, Any] = {
        "store": {"timeout_ms": 5000, "on_error": "closed"},
        "defaults": {"plan": "free"},
        "operations": {
            "geocode": {"cost": 1, "price": "0.005 USD"},
            "search": {"cost": 2, "price": "explicit"},  # a budget over it needs amount=
            "ping": {"cost": 1, "price": "explicit"},  # acquired where no budget counts it
        },
        "plans": {"free": {"limits": limits}},
    }
    if ledger:
        doc["ledger"] = {"url": f"sqlite:///{tmp / 'l.db'}", "flush_ms": 60_000, **ledger_options}
    if providers:
        doc["providers"] = providers
        doc["routes"] = {"geo": {"providers": list(providers)}}
    return doc


def quota(name: str, count: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "quota": f"{count}/day", "timezone": TZ, **extra}


def budget(name: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "budget": f"{amount}/day", "timezone": TZ, **extra}


# -- where the entries are: the memory store's queue, or the Redis streams ---------------------


def memory_of(tw: Tollway | AsyncTollway) -> MemoryStore:
    store: Any = tw.store
    memory = getattr(store, "sync", store)
    assert isinstance(memory, MemoryStore)
    return memory


@dataclass
class Backend:
    """A store under test: ``memory`` (on ``clock``), ``standalone`` or ``cluster`` (flushed)."""

    kind: str
    tmp: Path
    url: str | None = None
    client: Any = None
    clock: FakeClock = field(default_factory=lambda: FakeClock(time.time()))
    made: list[Tollway | AsyncTollway] = field(default_factory=list)

    @property
    def redis(self) -> bool:
        return self.kind != "memory"

    def tollway(self, doc: dict[str, Any]) -> Tollway:
        tw = Tollway(doc, clock=self.clock) if not self.redis else Tollway(doc, self.url)
        self.made.append(tw)
        return tw

    def async_tollway(self, doc: dict[str, Any]) -> AsyncTollway:
        tw = AsyncTollway(doc, clock=self.clock) if not self.redis else AsyncTollway(doc, self.url)
        self.made.append(tw)
        return tw

    def stream(self, tw: Tollway | AsyncTollway, subject: str) -> str:
        return stream_key(
            subject, cluster=self.kind == "cluster", partitions=tw.policy.ledger.partitions
        )

    def raw(
        self, tw: Tollway | AsyncTollway, subject: str
    ) -> list[tuple[str, str, dict[str, str]]]:
        """(stream, entry id, fields) of every entry the subject's stream holds, oldest first
        (the memory store has one queue for all subjects: its entries of any subject)."""
        if not self.redis:
            memory = memory_of(tw)
            with memory.lock:
                return [("memory", str(n), dict(e)) for n, e in enumerate(memory.events)]
        stream = self.stream(tw, subject)
        out = []
        for entry_id, fields in self.client.xrange(stream):
            got = {k.decode(): v.decode() for k, v in fields.items()}
            out.append((stream, entry_id.decode(), got))
        return out

    def entries(self, tw: Tollway | AsyncTollway, subject: str) -> list[Event]:
        """The decoded events and notices of ``subject``, oldest first."""
        decoded = [
            decode_entry(stream, entry_id, fields, recorded_at_us=1, policy=tw.policy)
            for stream, entry_id, fields in self.raw(tw, subject)
        ]
        return [e for e in decoded if e.subject == subject]

    def usage_events(self, tw: Tollway | AsyncTollway, subject: str) -> list[UsageEvent]:
        return [e for e in self.entries(tw, subject) if isinstance(e, UsageEvent)]

    def notices(self, tw: Tollway | AsyncTollway, subject: str, kind: str) -> list[Notice]:
        return [e for e in self.entries(tw, subject) if isinstance(e, Notice) and e.type == kind]

    def event_keys(self) -> list[str]:
        """Every event stream key and the registry, wherever they are."""
        if not self.redis:
            return []
        found = {k.decode() for k in self.client.scan_iter(match="tw:events*")}
        found |= {k.decode() for k in self.client.scan_iter(match="tw:{e*}:events")}
        return sorted(found)

    def close(self) -> None:
        for tw in self.made:
            if isinstance(tw, Tollway):
                if not self.redis:
                    memory_of(tw).events.clear()  # read by the test; not for the ledger
                tw.close()


def _backend(request: pytest.FixtureRequest, kind: str, tmp: Path) -> Backend:
    if kind == "memory":
        return Backend(kind, tmp)
    if kind == "standalone":
        client = request.getfixturevalue("redis_client")
        return Backend(kind, tmp, str(request.getfixturevalue("redis_url")), client)
    client = request.getfixturevalue("redis_cluster_client")
    return Backend(kind, tmp, str(request.getfixturevalue("redis_cluster_url")), client)


@pytest.fixture(params=["memory", "standalone", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = _backend(request, request.param, tmp_path)
    yield made
    made.close()


@pytest.fixture(params=["standalone", "cluster"])
def redis_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = _backend(request, request.param, tmp_path)
    yield made
    made.close()


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[Backend]:
    made = Backend("memory", tmp_path)
    yield made
    made.close()


async def _aclose(backend: Backend) -> None:
    for tw in backend.made:
        if isinstance(tw, AsyncTollway):
            if not backend.redis:
                memory_of(tw).events.clear()
            await tw.aclose()


# =========================================================================== 1. usage events

STANDARD = [
    {"name": "burst", "rate": "1/h", "burst": 50},
    quota("daily", 100),
    budget("spend", "1.00 USD", operations=["geocode", "search"]),
    quota("watch", 2, shadow=True),
]


def test_an_allowed_acquire_appends_exactly_one_usage_event(
    backend: Backend, tmp_path: Path
) -> None:
    tw = backend.tollway(policy(tmp_path, STANDARD))
    subject = unique("acct")
    attributes: dict[str, str | int | bool] = {
        "route": "/v1/geocode",
        "retries": 2,
        "cached": False,
    }
    decision = tw.acquire(subject, "geocode", 3, attributes=attributes)
    assert decision.allowed
    [event] = backend.entries(tw, subject)
    assert isinstance(event, UsageEvent)
    assert event.subject == subject
    assert (event.operation, event.meter, event.quantity) == ("geocode", "geocode", 3)
    assert (event.amount_micros, event.currency) == (3 * PRICE, "USD")
    assert event.plan == "free"
    assert event.policy_version == tw.policy.version and tw.policy.version
    assert event.limits == ("burst", "daily", "spend", "watch")
    assert event.occurred_at_us == decision.now_us
    assert dict(event.attributes) == attributes
    # no id given: one of the store's own, unique per event
    second = tw.acquire(subject, "geocode")
    assert second.allowed
    first, again = backend.usage_events(tw, subject)
    assert first.id != again.id
    assert again.quantity == 1 and again.amount_micros == PRICE and not again.attributes
    assert again.occurred_at_us == second.now_us
    prefix = "tw-" if backend.redis else "evt_"
    assert first.id.startswith(prefix) and again.id.startswith(prefix)


def test_amount_and_currency_come_from_the_price_or_the_budget(
    backend: Backend, tmp_path: Path
) -> None:
    tw = backend.tollway(policy(tmp_path, STANDARD))
    subject = unique("acct")
    # no price: the amount is the caller's, the currency the budget's
    assert tw.acquire(subject, "search", amount=Decimal("0.25")).allowed
    # no price and no budget over it: no money at all, and only the limits it touched
    assert tw.acquire(subject, "ping").allowed
    search, ping = backend.usage_events(tw, subject)
    assert (search.quantity, search.amount_micros, search.currency) == (2, 250_000, "USD")
    assert search.limits == ("burst", "daily", "spend", "watch")
    assert (ping.quantity, ping.amount_micros, ping.currency) == (1, None, None)
    assert ping.limits == ("burst", "daily", "watch")
    usage = tw.usage(subject)
    assert usage.limit("daily").used == search.quantity + ping.quantity
    assert usage.limit("spend").used == Decimal("0.25")


def test_a_denied_acquire_appends_no_usage_event(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 3)]))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", 2).allowed
    assert not tw.acquire(subject, "geocode", 2).allowed  # 4 > 3
    assert tw.acquire(subject, "geocode", 1).allowed
    assert not tw.acquire(subject, "geocode").allowed
    assert [e.quantity for e in backend.usage_events(tw, subject)] == [2, 1]
    assert tw.usage(subject).limit("daily").used == 3


def test_steps_register_their_stream_first(redis_backend: Backend, tmp_path: Path) -> None:
    """Each stream a client writes is in the registry; on a cluster it is in the slot of the
    subject's hash, on a standalone Redis one of ``partitions`` streams."""
    tw = redis_backend.tollway(policy(tmp_path, [quota("daily", 10)], partitions=4))
    subjects = [unique(f"acct{i}") for i in range(12)]
    for subject in subjects:
        assert tw.acquire(subject, "geocode").allowed
    client = redis_backend.client
    registry = {s.decode() for s in client.smembers(REGISTRY)}
    streams = {redis_backend.stream(tw, s) for s in subjects}
    assert registry == streams
    for subject in subjects:
        [event] = redis_backend.usage_events(tw, subject)
        assert event.subject == subject
    if redis_backend.kind == "cluster":
        for subject in subjects:
            stream = redis_backend.stream(tw, subject)
            assert client.keyslot(stream) == client.keyslot("tw:{" + subject + "}")
    else:
        assert all(s.startswith("tw:events:") and int(s.rsplit(":", 1)[1]) < 4 for s in streams)
        assert len(streams) > 1  # 12 subjects over 4 partitions


@pytest.mark.parametrize("subject", ["acct}1", "}acct", "{acct}", "a{b}c", "a{b", "{"])
def test_subjects_with_braces_keep_their_stream_in_their_slot(
    redis_backend: Backend, tmp_path: Path, subject: str, request: pytest.FixtureRequest
) -> None:
    """Redis hashes ``tw:{SUBJECT}`` by the text up to the first ``}``; the stream must follow
    the same slot, or the step's two keys cross slots on a cluster."""
    tw = redis_backend.tollway(policy(tmp_path, [quota("daily", 10)]))
    subject = subject + uuid.uuid4().hex[:6]
    assert tw.acquire(subject, "geocode").allowed
    [event] = redis_backend.usage_events(tw, subject)
    assert event.subject == subject


# =========================================================================== 2. request ids


def test_a_request_id_is_the_event_id_and_is_taken_once(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, STANDARD))
    subject = unique("acct")
    first = tw.acquire(subject, "geocode", 2, id="req-1", attributes={"try": 1})
    assert first.allowed and not first.duplicate
    again = tw.acquire(subject, "geocode", 2, id="req-1", attributes={"try": 2})
    assert again.allowed and again.duplicate
    usage = tw.usage(subject)
    assert usage.limit("daily").used == 2
    assert usage.limit("spend").used == Decimal("0.010")
    assert usage.limit("burst").used == 4  # a repeat runs the handler again: rates count it
    [event] = backend.entries(tw, subject)
    assert isinstance(event, UsageEvent)
    assert (event.id, event.quantity, dict(event.attributes)) == ("req-1", 2, {"try": 1})
    # another id is another call
    assert not tw.acquire(subject, "geocode", 1, id="req-2").duplicate
    assert [e.id for e in backend.usage_events(tw, subject)] == ["req-1", "req-2"]
    assert tw.usage(subject).limit("daily").used == 3


def test_an_id_does_not_stick_to_the_steps_reused_after_it(
    backend: Backend, tmp_path: Path
) -> None:
    """Default-cost steps are built once and sent again; one sent with an id and attributes
    must not lend them to the next."""
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)]))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode").allowed  # built and kept for reuse
    assert not tw.acquire(subject, "geocode", id="once", attributes={"a": 1}).duplicate
    plain = tw.acquire(subject, "geocode")
    assert plain.allowed and not plain.duplicate
    assert not tw.acquire(subject, "geocode").duplicate
    events = backend.usage_events(tw, subject)
    assert [e.id == "once" for e in events] == [False, True, False, False]
    assert [dict(e.attributes) for e in events] == [{}, {"a": 1}, {}, {}]
    assert len({e.id for e in events}) == 4
    assert tw.usage(subject).limit("daily").used == 4


def test_the_same_id_for_another_subject_is_no_duplicate(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)]))
    one, other = unique("one"), unique("other")
    assert not tw.acquire(one, "geocode", id="shared").duplicate
    decision = tw.acquire(other, "geocode", id="shared")
    assert decision.allowed and not decision.duplicate
    assert [e.id for e in backend.usage_events(tw, one)] == ["shared"]
    assert [e.id for e in backend.usage_events(tw, other)] == ["shared"]
    assert tw.usage(other).limit("daily").used == 1


def test_a_taken_id_stays_a_duplicate_when_the_limit_is_full(
    backend: Backend, tmp_path: Path
) -> None:
    """A retry of a call already counted is not refused for want of room (it needs none), and
    a denied id is not remembered (it took nothing)."""
    tw = backend.tollway(policy(tmp_path, [quota("daily", 2)]))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", id="a").allowed
    assert tw.acquire(subject, "geocode", id="b").allowed
    denied = tw.acquire(subject, "geocode", id="c")
    assert not denied.allowed and not denied.duplicate
    retried = tw.acquire(subject, "geocode", id="a")
    assert retried.allowed and retried.duplicate
    assert tw.usage(subject).limit("daily").used == 2
    tw.reset(subject)
    taken = tw.acquire(subject, "geocode", id="c")  # denied before: never taken
    assert taken.allowed and not taken.duplicate
    assert [e.id for e in backend.usage_events(tw, subject)] == ["a", "b", "c"]


def test_an_id_is_accepted_again_after_dedupe_s(memory: Backend, tmp_path: Path) -> None:
    tw = memory.tollway(policy(tmp_path, [quota("daily", 10)], dedupe_s=60))
    subject = unique("acct")
    assert not tw.acquire(subject, "geocode", id="r").duplicate
    memory.clock.advance(59)
    assert tw.acquire(subject, "geocode", id="r").duplicate
    memory.clock.advance(1.5)
    later = tw.acquire(subject, "geocode", id="r")
    assert later.allowed and not later.duplicate
    assert tw.usage(subject).limit("daily").used == 2
    assert [e.id for e in memory.usage_events(tw, subject)] == ["r", "r"]
    memory.clock.advance(30)
    assert tw.acquire(subject, "geocode", id="r").duplicate  # remembered from its new take


def test_redis_remembers_an_id_for_dedupe_s(redis_backend: Backend, tmp_path: Path) -> None:
    """Redis's clock cannot be moved: the id's key carries the expiry instead."""
    tw = redis_backend.tollway(policy(tmp_path, [quota("daily", 10)], dedupe_s=120))
    subject = unique("acct")
    assert not tw.acquire(subject, "geocode", id="r").duplicate
    ttl = redis_backend.client.pttl("tw:{" + subject + "}:id:r")
    assert 110_000 < ttl <= 120_000
    assert tw.acquire(subject, "geocode", id="r").duplicate


BAD_IDS: list[Any] = ["", "x" * 256, 123, b"bytes", "line\nbreak", "nul\x00", "tab\tid"]
BAD_ATTRIBUTES: list[tuple[Any, str]] = [
    ({"ratio": 0.5}, r"^attributes\['ratio'\]: 0\.5 is a float"),
    ({"nested": {"a": 1}}, r"^attributes\['nested'\]: .* is a dict"),
    ({"list": [1]}, r"^attributes\['list'\]"),
    ({1: "x"}, r"^attributes: key 1 is not a str"),
    ({"": "x"}, r"^attributes: key '' is not a str"),
    ({"big": "x" * 4096}, r"^attributes: \d+ bytes as JSON; at most 4096"),
    ({"huge": 2**63}, r"^attributes\['huge'\]: .* 64-bit"),
    ({"nul": "a\x00b"}, r"^attributes\['nul'\]: holds a NUL"),
    (["not", "a", "dict"], r"^attributes: a list is not a dict"),
]


@pytest.fixture(params=["memory", "standalone"])
def memory_or_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = _backend(request, request.param, tmp_path)
    yield made
    made.close()


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_a_bad_id_is_refused_and_nothing_is_consumed(
    memory_or_redis: Backend, tmp_path: Path, bad: Any
) -> None:
    backend = memory_or_redis
    tw = backend.tollway(policy(tmp_path, STANDARD))
    subject = unique("acct")
    with pytest.raises(InvalidArgumentError, match=r"^id: "):
        tw.acquire(subject, "geocode", id=bad)
    with pytest.raises(InvalidArgumentError, match=r"^id: "):
        tw.reserve(subject, "geocode", id=bad)
    assert tw.usage(subject).limit("daily").used == 0
    assert tw.usage(subject).limit("burst").used == 0
    assert backend.entries(tw, subject) == []


@pytest.mark.parametrize(("bad", "message"), BAD_ATTRIBUTES, ids=repr)
def test_bad_attributes_are_refused_and_nothing_is_consumed(
    memory_or_redis: Backend, tmp_path: Path, bad: Any, message: str
) -> None:
    backend = memory_or_redis
    tw = backend.tollway(policy(tmp_path, STANDARD))
    subject = unique("acct")
    with pytest.raises(InvalidArgumentError, match=message):
        tw.acquire(subject, "geocode", attributes=bad)
    with pytest.raises(InvalidArgumentError, match=message):
        tw.acquire(subject, "geocode", id="ok", attributes=bad)
    with pytest.raises(InvalidArgumentError, match=message):
        tw.reserve(subject, "geocode", attributes=bad)
    assert tw.usage(subject).limit("daily").used == 0
    assert backend.entries(tw, subject) == []
    # the id of the refused call was not taken either
    assert not tw.acquire(subject, "geocode", id="ok").duplicate


def test_attributes_at_the_limits_are_accepted(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)]))
    subject = unique("acct")
    # {"big":"..."} is exactly 4096 bytes of JSON
    big = {"big": "y" * (4096 - len('{"big":""}'))}
    longest = "i" * 255
    assert tw.acquire(subject, "geocode", id=longest, attributes=big).allowed
    extremes: dict[str, str | int | bool] = {
        "min": -(2**63),
        "max": 2**63 - 1,
        "t": True,
        "s": "ünïcødé",
    }
    assert tw.acquire(subject, "geocode", attributes=extremes).allowed
    one, two = backend.usage_events(tw, subject)
    assert one.id == longest and dict(one.attributes) == big
    assert dict(two.attributes) == extremes


# =========================================================================== 3. notices


THRESHOLDS = ["50%", "80%", "100%"]


def test_each_threshold_is_reported_once_by_the_step_that_reaches_it(
    backend: Backend, tmp_path: Path
) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10, thresholds=THRESHOLDS)]))
    subject = unique("acct")
    decisions = [tw.acquire(subject, "geocode") for _ in range(13)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 3
    reported = backend.notices(tw, subject, THRESHOLD)
    assert [n.data["threshold"] for n in reported] == ["0.5", "0.8", "1"]
    assert [n.data["used"] for n in reported] == [5, 8, 10]
    crossing = [d for d in decisions if d.crossings]
    assert [(d.limit("daily").used, str(d.crossings[0].threshold)) for d in crossing] == [
        (5, "0.5"),
        (8, "0.8"),
        (10, "1"),
    ]
    for notice, decision in zip(reported, crossing, strict=True):
        assert notice.occurred_at_us == decision.now_us  # the same step
        assert notice.data["limit"] == "daily" and notice.data["kind"] == "quota"
        assert notice.data["plan"] == "free" and notice.data["operation"] == "geocode"
        assert notice.data["policy_version"] == tw.policy.version
        start, end = notice.data["window_start_us"], notice.data["window_end_us"]
        assert end - start == DAY * US and start <= decision.now_us < end
    assert len({n.id for n in reported}) == 3
    [exceeded] = backend.notices(tw, subject, EXCEEDED)
    assert exceeded.occurred_at_us == decisions[10].now_us  # the first refused step
    assert exceeded.data["used"] == 10 and exceeded.data["limit"] == "daily"
    assert exceeded.data["window_start_us"] == reported[0].data["window_start_us"]
    # in the order the steps ran: usage, ..., the last threshold, then the exceeded notice
    kinds = [e.type if isinstance(e, Notice) else "usage" for e in backend.entries(tw, subject)]
    assert kinds[-2:] == [THRESHOLD, EXCEEDED]
    assert kinds.count("usage") == 10


def test_one_step_can_cross_several_thresholds(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10, thresholds=THRESHOLDS)]))
    subject = unique("acct")
    decision = tw.acquire(subject, "geocode", 9)
    assert [str(c.threshold) for c in decision.crossings] == ["0.5", "0.8"]
    reported = backend.notices(tw, subject, THRESHOLD)
    assert [(n.data["threshold"], n.data["used"]) for n in reported] == [("0.5", 9), ("0.8", 9)]
    assert not tw.acquire(subject, "geocode", 2).allowed  # would pass 100%: refused
    assert len(backend.notices(tw, subject, THRESHOLD)) == 2
    assert tw.acquire(subject, "geocode", 1).allowed
    assert [n.data["threshold"] for n in backend.notices(tw, subject, THRESHOLD)] == [
        "0.5",
        "0.8",
        "1",
    ]
    [exceeded] = backend.notices(tw, subject, EXCEEDED)  # the refused step of 2
    assert exceeded.data["used"] == 9


def test_a_new_window_reports_again(memory: Backend, tmp_path: Path) -> None:
    tw = memory.tollway(policy(tmp_path, [quota("daily", 4, thresholds=THRESHOLDS)]))
    subject = unique("acct")
    for _ in range(2):
        decisions = [tw.acquire(subject, "geocode") for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 4 + [False] * 2
        memory.clock.advance(DAY)
    reported = memory.notices(tw, subject, THRESHOLD)
    exceeded = memory.notices(tw, subject, EXCEEDED)
    assert [n.data["threshold"] for n in reported] == ["0.5", "0.8", "1"] * 2
    assert len(exceeded) == 2
    starts = sorted({n.data["window_start_us"] for n in reported})
    assert len(starts) == 2 and starts[1] - starts[0] == DAY * US
    assert [n.data["window_start_us"] for n in exceeded] == starts
    assert len({n.id for n in reported + exceeded}) == 8


def test_exceeded_once_per_limit_per_window(backend: Backend, tmp_path: Path) -> None:
    limits = [quota("daily", 3), budget("spend", "0.015 USD")]
    tw = backend.tollway(policy(tmp_path, limits))
    subject = unique("acct")
    decisions = [tw.acquire(subject, "geocode") for _ in range(8)]
    assert [d.allowed for d in decisions] == [True] * 3 + [False] * 5
    assert set(decisions[3].violated) == {"daily", "spend"}
    exceeded = backend.notices(tw, subject, EXCEEDED)
    got = sorted((n.data["limit"], n.data["kind"], n.data["used"]) for n in exceeded)
    assert got == [("daily", "quota", 3), ("spend", "budget", 3 * PRICE)]
    assert {n.occurred_at_us for n in exceeded} == {decisions[3].now_us}
    assert len(backend.usage_events(tw, subject)) == 3


def test_only_the_limit_that_refused_reports_exceeded(backend: Backend, tmp_path: Path) -> None:
    limits = [quota("daily", 3), quota("big", 100)]
    tw = backend.tollway(policy(tmp_path, limits))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode", 3).allowed
    assert not tw.acquire(subject, "geocode").allowed
    [exceeded] = backend.notices(tw, subject, EXCEEDED)
    assert exceeded.data["limit"] == "daily"


def test_shadow_limits_and_rates_report_no_exceeded(backend: Backend, tmp_path: Path) -> None:
    limits = [
        {"name": "burst", "rate": "1/h", "burst": 3},
        quota("watch", 2, shadow=True),
        quota("daily", 100),
    ]
    tw = backend.tollway(policy(tmp_path, limits))
    subject = unique("acct")
    decisions = [tw.acquire(subject, "geocode") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 3 + [False] * 3
    assert all(d.violated == ("burst",) for d in decisions[3:])
    assert "watch" in decisions[2].shadow_violated
    assert backend.notices(tw, subject, EXCEEDED) == []
    assert len(backend.usage_events(tw, subject)) == 3


def test_a_first_denied_step_leaves_state_that_expires(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A subject whose first step is refused: its exceeded notice is marked in its state,
    and that state must not outlive its window (the memory store drops it, Redis expires
    it), like the state of any subject that only reads or is denied."""
    tw = backend.tollway(policy(tmp_path, [quota("daily", 3)]))
    subject = unique("acct")
    assert not tw.acquire(subject, "geocode", 5).allowed
    assert len(backend.notices(tw, subject, EXCEEDED)) == 1
    if backend.redis:
        assert backend.client.pttl("tw:{" + subject + "}") > 0
    else:
        before = memory_of(tw).size()
        backend.clock.advance(3 * DAY)
        tw.acquire(unique("other"), "ping")  # a step sweeps what expired
        assert memory_of(tw).size() <= before


# =========================================================================== 4. reservations


def test_a_commit_appends_the_actual_usage(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, STANDARD))
    subject = unique("acct")
    held = tw.reserve(subject, "geocode", 5)
    assert held.allowed
    assert backend.usage_events(tw, subject) == []  # nothing used yet
    committed = held.commit(2)
    [event] = backend.usage_events(tw, subject)
    assert (event.quantity, event.amount_micros, event.currency) == (2, 2 * PRICE, "USD")
    assert event.id == f"res_{held.id}"
    assert event.occurred_at_us == committed.now_us
    assert event.limits == ("burst", "daily", "spend", "watch")
    assert tw.usage(subject).limit("daily").used == 2
    # with an amount of its own
    held = tw.reserve(subject, "geocode", 1)
    held.commit(1, amount=Decimal("0.123"))
    assert backend.usage_events(tw, subject)[-1].amount_micros == 123_000


def test_a_release_appends_nothing(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, STANDARD))
    subject = unique("acct")
    tw.reserve(subject, "geocode", 4).release()
    with tw.reserve(subject, "geocode", 3) as held:
        pass  # committed at the estimate by the block
    with pytest.raises(RuntimeError), tw.reserve(subject, "geocode", 7):
        raise RuntimeError("the call failed")  # released by the block
    [event] = backend.usage_events(tw, subject)
    assert (event.id, event.quantity) == (f"res_{held.id}", 3)
    assert tw.usage(subject).limit("daily").used == 3


def test_a_reservation_id_and_attributes_go_with_its_event(
    backend: Backend, tmp_path: Path
) -> None:
    tw = backend.tollway(policy(tmp_path, STANDARD))
    subject = unique("acct")
    held = tw.reserve(subject, "geocode", 3, id="job-7", attributes={"model": "m1", "n": 3})
    assert backend.usage_events(tw, subject) == []
    held.commit(1)
    [event] = backend.usage_events(tw, subject)
    assert (event.id, event.quantity, dict(event.attributes)) == (
        "job-7",
        1,
        {"model": "m1", "n": 3},
    )


def test_two_reservations_under_one_request_id_are_two_events(
    backend: Backend, tmp_path: Path
) -> None:
    """Reservations are not deduplicated by id (each holds its own capacity), so the second
    commit under a taken id gets an id of its own: the ledger counts what the store counts."""
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)]))
    subject = unique("acct")
    first = tw.reserve(subject, "geocode", 2, id="req-9")
    second = tw.reserve(subject, "geocode", 3, id="req-9")
    first.commit()
    second.commit()
    events = backend.usage_events(tw, subject)
    assert [e.id for e in events] == ["req-9", f"req-9~{second.id}"]
    assert sum(e.quantity for e in events) == tw.usage(subject).limit("daily").used == 5
    # An acquire is repeated only by an acquire at its cost: after reservations, the same id
    # is a new request, counted (issue 11: a reused id never skips a limit), with an event
    # id of its own, so the ledger still counts what the store counts.
    taken = tw.acquire(subject, "geocode", id="req-9")
    assert taken.allowed and not taken.duplicate
    events = backend.usage_events(tw, subject)
    assert [e.id for e in events][2:] == ["req-9~geocode"]
    assert sum(e.quantity for e in events) == tw.usage(subject).limit("daily").used == 6
    assert tw.acquire(subject, "geocode", id="req-9").duplicate  # now it stands for a request


def test_a_late_commit_still_appends_its_event(memory: Backend, tmp_path: Path) -> None:
    doc = policy(tmp_path, [quota("daily", 10)])
    doc["store"]["hold_ttl_ms"] = 1000
    tw = memory.tollway(doc)
    subject = unique("acct")
    held = tw.reserve(subject, "geocode", 4)
    memory.clock.advance(2)
    assert tw.usage(subject).limit("daily").used == 0  # the expired hold was given back
    committed = held.commit(3)
    [event] = memory.usage_events(tw, subject)
    assert (event.quantity, event.amount_micros) == (3, 3 * PRICE)
    assert event.occurred_at_us == committed.now_us == memory.clock()
    assert tw.usage(subject).limit("daily").used == 3


# =========================================================================== 5. provider calls

PROVIDERS = {
    "google": {
        "price": "0.005 USD",
        "timezone": TZ,
        "breaker_errors": 2,
        "limits": [quota("daily", 100), budget("budget", "1.00 USD")],
    }
}
PROVIDER = "@provider:google"


def _provider_used(tw: Tollway) -> tuple[int | Decimal, int | Decimal]:
    status = tw.route("geo").status()["google"]
    return status.limit("daily").used, status.limit("budget").used


def test_a_provider_call_appends_its_usage_when_taken(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)], providers=PROVIDERS))
    call = tw.route("geo").call()
    assert call.provider == "google"
    gates = {s.name for s in call.decision.limits} - {"daily", "budget"}
    assert gates  # the provider's health gates are steps' rules too...
    [event] = backend.entries(tw, PROVIDER)
    assert isinstance(event, UsageEvent)
    assert (event.subject, event.plan, event.operation) == (PROVIDER, "google", "call")
    assert (event.quantity, event.amount_micros, event.currency) == (1, PRICE, "USD")
    assert event.limits == ("daily", "budget")  # ...but no limits of its usage
    assert event.occurred_at_us == call.decision.now_us
    call.commit()  # at what it took: nothing more
    assert backend.entries(tw, PROVIDER) == [event]
    assert _provider_used(tw) == (1, Decimal("0.005"))


def test_a_provider_commit_at_another_cost_appends_a_correction(
    backend: Backend, tmp_path: Path
) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)], providers=PROVIDERS))
    route = tw.route("geo")
    call = route.call()
    call.commit(4)
    taken, correction = backend.usage_events(tw, PROVIDER)
    assert (taken.quantity, taken.amount_micros) == (1, PRICE)
    assert correction.id.startswith("adj_") and correction.id != taken.id
    assert (correction.quantity, correction.amount_micros) == (3, 3 * PRICE)
    assert correction.currency == "USD" and correction.limits == ("daily", "budget")
    call = route.call(cost=3)
    call.commit(1)  # less than taken: a negative correction
    correction = backend.usage_events(tw, PROVIDER)[-1]
    assert (correction.quantity, correction.amount_micros) == (-2, -2 * PRICE)
    events = backend.usage_events(tw, PROVIDER)
    assert len(events) == 4
    used, spent = _provider_used(tw)
    assert used == sum(e.quantity for e in events) == 5
    assert spent * 1_000_000 == sum(e.amount_micros or 0 for e in events)


def test_a_provider_release_appends_a_negative_correction(backend: Backend, tmp_path: Path) -> None:
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)], providers=PROVIDERS))
    route = tw.route("geo")
    route.call(cost=2).release()
    taken, correction = backend.usage_events(tw, PROVIDER)
    assert (taken.quantity, taken.amount_micros) == (2, 2 * PRICE)
    assert correction.id.startswith("adj_")
    assert (correction.quantity, correction.amount_micros) == (-2, -2 * PRICE)
    assert _provider_used(tw) == (0, Decimal("0"))
    with route.call():
        pass  # committed as taken by the block: its one event
    with pytest.raises(RuntimeError), route.call():
        raise RuntimeError("no answer")  # released by the block: taken back
    events = backend.usage_events(tw, PROVIDER)
    assert [e.quantity for e in events] == [2, -2, 1, 1, -1]
    assert _provider_used(tw)[0] == sum(e.quantity for e in events) == 1


TWO_PROVIDERS = {
    "google": {"price": "0.005 USD", "timezone": TZ, "limits": [quota("daily", 1)]},
    "here": {"price": "0.002 USD", "timezone": TZ, "limits": [quota("daily", 100)]},
}


def test_a_failover_appends_one_notice_per_route_provider_and_minute(
    backend: Backend, tmp_path: Path
) -> None:
    """The call given to the second provider because the first had no room says so: one
    ``tollway.provider.failover`` notice per route, provider and minute, however many calls."""
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)], providers=TWO_PROVIDERS))
    route = tw.route("geo")
    first = route.call()
    first.commit()
    assert first.provider == "google"
    assert backend.notices(tw, "@provider:here", FAILOVER) == []  # nothing passed over
    for _ in range(3):
        call = route.call()
        assert call.provider == "here"
        call.commit()
    [notice] = backend.notices(tw, "@provider:here", FAILOVER)
    assert notice.data["route"] == "geo" and notice.data["provider"] == "here"
    assert notice.data["passed_over"] == [{"provider": "google", "reason": "daily"}]
    assert notice.id.startswith("fo-geo-here-")
    assert backend.notices(tw, "@provider:google", FAILOVER) == []


def test_a_failover_after_a_failed_call_in_run_is_noticed(backend: Backend, tmp_path: Path) -> None:
    providers = {
        name: {**spec, "limits": [quota("daily", 100)]} for name, spec in TWO_PROVIDERS.items()
    }
    tw = backend.tollway(policy(tmp_path, [quota("daily", 10)], providers=providers))

    def flaky(provider: str) -> str:
        if provider == "google":
            raise ProviderCallError("down", Signal.error())
        return provider

    outcome = tw.route("geo").run(flaky)
    assert outcome.value == "here"
    [notice] = backend.notices(tw, "@provider:here", FAILOVER)
    assert notice.data["passed_over"] == [{"provider": "google", "reason": "failed"}]


def test_no_failover_notice_without_events(memory: Backend, tmp_path: Path) -> None:
    doc = policy(tmp_path, [quota("daily", 10)], providers=TWO_PROVIDERS, ledger=False)
    tw = memory.tollway(doc)
    route = tw.route("geo")
    route.call().commit()
    assert route.call().provider == "here"
    assert not tw.store.events  # type: ignore[union-attr]


# =========================================================================== 6. embedded mode


def _embedded(tmp: Path, url: str | None = None, **ledger: Any) -> dict[str, Any]:
    doc = policy(tmp, [quota("daily", 20, thresholds=THRESHOLDS), budget("spend", "1.00 USD")])
    doc["ledger"].update(ledger)
    if url is not None:
        doc["ledger"]["url"] = url
    return doc


def _acquire_some(tw: Tollway, subject: str, clock: FakeClock) -> int:
    """Acquires of varied costs on a quota of 20, some denied; how many were allowed."""
    allowed = 0
    for n in range(25):
        decision = tw.acquire(subject, "geocode", 1 + n % 3, id=f"r{n}" if n % 2 else None)
        allowed += decision.allowed
        clock.advance(0.001)
    assert 0 < allowed < 25
    return allowed


def _check_ledger(tw: Tollway, subject: str, allowed: int) -> None:
    totals = tw.ledger.totals(subject, 0, 2**62)["geocode"]
    usage = tw.usage(subject)
    assert totals.events == allowed
    assert totals.quantity == usage.limit("daily").used
    assert totals.amount == usage.limit("spend").used
    assert totals.currency == "USD"


@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
def test_flush_writes_every_usage_event_once(
    tmp_path: Path, ledger: str, request: pytest.FixtureRequest
) -> None:
    url = None if ledger == "sqlite" else str(request.getfixturevalue("postgres_url"))
    clock = FakeClock(time.time())
    with Tollway(_embedded(tmp_path, url), clock=clock) as tw:
        before = tw.ledger.count()
        subject = unique("acct")
        allowed = _acquire_some(tw, subject, clock)
        assert tw.flush() == allowed
        assert tw.ledger.count() - before == allowed
        _check_ledger(tw, subject, allowed)
        assert len(memory_of(tw).events) == 0
        assert tw.flush() == 0  # nothing queued, nothing doubled


def test_the_drain_thread_writes_them_by_itself(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    with Tollway(_embedded(tmp_path, flush_ms=10), clock=clock) as tw:
        subject = unique("acct")
        allowed = _acquire_some(tw, subject, clock)
        deadline = time.monotonic() + 10
        while tw.ledger.count() < allowed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tw.ledger.count() == allowed
        _check_ledger(tw, subject, allowed)
        deadline = time.monotonic() + 10
        while memory_of(tw).events and time.monotonic() < deadline:
            time.sleep(0.01)  # the notices go too, in their batches
        assert len(memory_of(tw).events) == 0
        assert tw.flush() == 0


def test_close_writes_what_is_left(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    doc = _embedded(tmp_path)
    tw = Tollway(doc, clock=clock)
    subject = unique("acct")
    allowed = _acquire_some(tw, subject, clock)
    daily = tw.usage(subject).limit("daily").used
    tw.close()
    with open_ledger(doc["ledger"]["url"]) as ledger:
        assert ledger.count() == allowed
        totals = ledger.totals(subject, 0, 2**62)["geocode"]
        assert (totals.events, totals.quantity) == (allowed, daily)


def test_a_failing_ledger_keeps_the_events_queued(
    tmp_path: Path, make_postgres_server: Callable[[], PostgresServer]
) -> None:
    server = make_postgres_server()
    clock = FakeClock(time.time())
    with Tollway(_embedded(tmp_path, server.url), clock=clock) as tw:
        subject = unique("acct")
        for n in range(3):
            assert tw.acquire(subject, "geocode", id=f"a{n}").allowed
        assert tw.flush() == 3
        server.kill()
        for n in range(4):
            assert tw.acquire(subject, "geocode", id=f"b{n}").allowed
        with pytest.raises(LedgerUnavailableError):
            tw.flush()
        with pytest.raises(LedgerUnavailableError):
            tw.flush()  # a retry while it is away loses nothing either
        queued = [e for e in memory_of(tw).events if e["k"] == "u"]
        assert [e["i"] for e in queued] == [f"b{n}" for n in range(4)]
        server.start()
        assert tw.flush() == 4
        assert tw.flush() == 0
        assert tw.ledger.count() == 7
        totals = tw.ledger.totals(subject, 0, 2**62)["geocode"]
        assert (totals.events, totals.quantity) == (7, 7)
        assert tw.usage(subject).limit("daily").used == 7


async def test_the_async_face_flushes_in_embedded_mode(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    async with AsyncTollway(_embedded(tmp_path), clock=clock) as tw:
        subject = unique("acct")
        for n in range(5):
            assert (await tw.acquire(subject, "geocode", id=f"x{n}")).allowed
        assert (await tw.acquire(subject, "geocode", id="x0")).duplicate
        assert await tw.flush() == 5
        totals = tw.ledger.totals(subject, 0, 2**62)["geocode"]
        assert (totals.events, totals.quantity) == (5, 5)


# =========================================================================== 7. async face


def _payload(event: UsageEvent) -> tuple[Any, ...]:
    """What an event says, but for its subject and time."""
    return (
        event.id,
        event.operation,
        event.meter,
        event.quantity,
        event.amount_micros,
        event.currency,
        event.plan,
        event.policy_version,
        event.limits,
        dict(event.attributes),
    )


async def test_the_async_face_appends_the_same_entry(backend: Backend, tmp_path: Path) -> None:
    doc = policy(tmp_path, STANDARD)
    subject = unique("acct")
    attributes: dict[str, str | int | bool] = {"k": "v", "n": 1, "b": True}
    try:
        atw = backend.async_tollway(doc)
        decision = await atw.acquire(subject, "geocode", 2, id="async-1", attributes=attributes)
        assert decision.allowed and not decision.duplicate
        again = await atw.acquire(subject, "geocode", 2, id="async-1", attributes=attributes)
        assert again.allowed and again.duplicate
        [event] = backend.entries(atw, subject)
        assert isinstance(event, UsageEvent)
        assert (event.id, event.quantity, event.amount_micros) == ("async-1", 2, 2 * PRICE)
        assert dict(event.attributes) == attributes
        assert event.occurred_at_us == decision.now_us
        assert event.policy_version == atw.policy.version
        assert (await atw.usage(subject)).limit("daily").used == 2
        if backend.redis:
            registry = {s.decode() for s in backend.client.smembers(REGISTRY)}
            assert backend.stream(atw, subject) in registry
        # the sync face appends the very same entry, but for its time
        tw = backend.tollway(doc)
        other = unique("acct")
        tw.acquire(other, "geocode", 2, id="async-1", attributes=attributes)
        [sync_event] = backend.entries(tw, other)
        assert isinstance(sync_event, UsageEvent)
        assert _payload(sync_event) == _payload(event)
    finally:
        await _aclose(backend)


# =========================================================================== 8. events off


@pytest.mark.parametrize("off", ["no ledger", "events = false"])
def test_no_events_without_a_ledger_or_with_events_off(
    backend: Backend, tmp_path: Path, off: str
) -> None:
    limits = [quota("daily", 3, thresholds=THRESHOLDS)]
    if off == "no ledger":
        doc = policy(tmp_path, limits, ledger=False)
    else:
        doc = policy(tmp_path, limits, events=False)
    tw = backend.tollway(doc)
    subject = unique("acct")
    tw.reserve(subject, "geocode").release()
    decisions = [tw.acquire(subject, "geocode") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert any(d.crossings for d in decisions)  # thresholds still reported to the caller
    # a request id still deduplicates
    tw.reset(subject)
    assert not tw.acquire(subject, "geocode", id="r", attributes={"a": 1}).duplicate
    assert tw.acquire(subject, "geocode", id="r").duplicate
    assert tw.usage(subject).limit("daily").used == 1
    tw.reserve(subject, "geocode").commit()
    if backend.redis:
        assert backend.event_keys() == []
        assert backend.client.exists(REGISTRY) == 0
    else:
        assert len(memory_of(tw).events) == 0
        assert tw.flush() == 0


def test_the_registry_and_streams_exist_only_with_events(
    redis_backend: Backend, tmp_path: Path
) -> None:
    """The counterpart of the test above: the same steps with events do write the keys it
    checks are absent."""
    tw = redis_backend.tollway(policy(tmp_path, [quota("daily", 3)]))
    subject = unique("acct")
    assert tw.acquire(subject, "geocode").allowed
    stream = redis_backend.stream(tw, subject)
    assert redis_backend.event_keys() == sorted({stream, REGISTRY})
    if redis_backend.kind == "cluster":
        assert slot_of(subject) == redis_backend.client.keyslot("tw:{" + subject + "}")
