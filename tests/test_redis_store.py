"""The Redis store on real servers, standalone and a 3-master Cluster.

Time is Redis ``TIME`` and cannot be faked, so every limit here has a long window: quotas and
budgets per day in a fixed-offset timezone where it is about noon now (their windows are hours
away from ending), and rates of one unit per hour (nothing refills during a test).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from model import day_safe_timezone, limit_view
from tollway import AsyncTollway, Tollway
from tollway.errors import LimitExceeded, ReservationError
from tollway.testing import FakeClock

TZ = day_safe_timezone()
PRIMARIES = redis.cluster.RedisCluster.PRIMARIES


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail-open journal written here goes to a temporary folder, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def policy(**store: Any) -> dict[str, Any]:
    return {
        "store": store,
        "defaults": {"plan": "free"},
        "operations": {
            "geocode": {"cost": 1, "price": "0.005 USD"},
            "search": {"cost": 2, "price": "0.01 USD"},
        },
        "plans": {
            "free": {
                "limits": [
                    {"name": "burst", "rate": "1/h", "burst": 50},
                    {"name": "daily", "quota": "10/day", "timezone": TZ},
                    {"name": "spend", "budget": "1.00 USD/day", "timezone": TZ},
                ]
            },
            "pro": {
                "limits": [
                    {"name": "daily", "quota": "100/day", "timezone": TZ},
                    {"name": "per-op", "quota": "3/day", "per": "operation", "timezone": TZ},
                    {"name": "watch", "quota": "2/day", "shadow": True, "timezone": TZ},
                    {
                        "name": "search-spend",
                        "budget": "0.05 USD/day",
                        "operations": ["search"],
                        "grace": "0.01 USD",
                        "timezone": TZ,
                    },
                ]
            },
        },
    }


# -- a store under test: standalone or cluster ------------------------------------------------


@dataclass
class Server:
    """A flushed Redis (standalone or cluster), its URL and per-node command statistics."""

    kind: str
    url: str
    client: Any

    def addresses(self) -> list[tuple[str, int]]:
        if self.kind == "cluster":
            return [(node.host, node.port) for node in self.client.get_primaries()]
        kwargs = self.client.connection_pool.connection_kwargs
        return [(kwargs["host"], kwargs["port"])]

    @contextlib.contextmanager
    def sent(self) -> Iterator[list[str]]:
        """The commands clients send during the block (MONITOR on every primary), without the
        ones scripts run inside Redis: one entry per network request, e.g. ``"EVALSHA"``."""
        seen: list[str] = []
        with contextlib.ExitStack() as stack:
            watchers = []
            for host, port in self.addresses():
                client = stack.enter_context(redis.Redis(host=host, port=port))
                watchers.append((client, stack.enter_context(client.monitor())))
            yield seen
            marker = f"end-{uuid.uuid4().hex}"
            for client, monitor in watchers:
                with redis.Redis(
                    host=client.connection_pool.connection_kwargs["host"],
                    port=client.connection_pool.connection_kwargs["port"],
                ) as other:
                    other.echo(marker)
                while True:
                    command = monitor.next_command()
                    if marker in command["command"]:
                        break
                    name = command["command"].split(" ", 1)[0].upper()
                    # HELLO: the handshake of the connection that sends the marker (redis-py 8)
                    if command["client_type"] != "lua" and name != "HELLO":
                        seen.append(name)

    def commandstats(self) -> dict[str, int]:
        """Calls per command, summed over every primary (commands run by scripts included)."""
        total: dict[str, int] = {}
        for host, port in self.addresses():
            with redis.Redis(host=host, port=port) as node:
                for name, stats in node.info("commandstats").items():
                    command = name.removeprefix("cmdstat_")
                    total[command] = total.get(command, 0) + int(stats["calls"])
        return total

    def script_flush(self) -> None:
        for host, port in self.addresses():
            with redis.Redis(host=host, port=port) as node:
                node.script_flush()

    def time_us(self, subject: str) -> int:
        """Redis TIME on the node that holds ``subject`` (any node for standalone)."""
        if self.kind == "cluster":
            node = self.client.get_node_from_key("tw:{" + subject + "}")
            seconds, micros = self.client.time(target_nodes=node)
        else:
            seconds, micros = self.client.time()
        return seconds * 1_000_000 + micros


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    changed = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    return {k: v for k, v in changed.items() if v and k != "info"}


@pytest.fixture(params=["standalone", "cluster"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    if request.param == "standalone":
        client = request.getfixturevalue("redis_client")
        url = request.getfixturevalue("redis_url")
    else:
        client = request.getfixturevalue("redis_cluster_client")
        url = request.getfixturevalue("redis_cluster_url")
    yield Server(request.param, url, client)


@pytest.fixture
def make_tollway(server: Server) -> Iterator[Callable[..., Tollway]]:
    made: list[Tollway] = []

    def make(**store: Any) -> Tollway:
        tw = Tollway(policy(**store), server.url)
        made.append(tw)
        return tw

    yield make
    for tw in made:
        tw.close()


# -- one atomic step per acquire --------------------------------------------------------------


def test_one_evalsha_per_acquire(server: Server, make_tollway: Callable[..., Tollway]) -> None:
    tw = make_tollway()
    assert tw.acquire("acct-1", "geocode").allowed  # loads the script, learns the plan
    with server.sent() as sent:
        decisions = [tw.acquire("acct-1", "geocode") for _ in range(20)]
    assert [d.allowed for d in decisions] == [True] * 9 + [False] * 11  # daily: 10/day
    assert sent == ["EVALSHA"] * 20  # denied ones too; nothing else goes over the network

    with server.sent() as sent:
        usage = tw.usage("acct-1")
    assert sent == ["EVALSHA"]
    assert usage.limit("daily").used == 10


def test_script_flush_is_recovered(server: Server, make_tollway: Callable[..., Tollway]) -> None:
    tw = make_tollway()
    assert tw.acquire("acct-2", "geocode").allowed
    server.script_flush()
    before = server.commandstats()
    decision = tw.acquire("acct-2", "geocode")
    delta = _delta(before, server.commandstats())
    assert decision.allowed
    assert decision.limit("daily").used == 2  # the count survived; the step ran once
    assert delta.get("script|load", 0) >= 1
    assert tw.usage("acct-2").limit("daily").used == 2

    server.script_flush()
    reservation = tw.reserve("acct-2", "search")
    assert reservation.allowed
    server.script_flush()  # the settle script is gone too
    reservation.commit(1)
    assert tw.usage("acct-2").limit("daily").used == 3


def test_keys_of_one_subject_share_one_cluster_slot(
    redis_cluster_url: str, redis_cluster_client: redis.cluster.RedisCluster
) -> None:
    client = redis_cluster_client

    def all_keys() -> set[bytes]:
        return set(client.keys("*", target_nodes=PRIMARIES))

    with Tollway(policy(), redis_cluster_url) as tw:
        seen: set[bytes] = set()
        slots = []
        for subject in ("acct-a", "acct-b", "ü{x}", "acct-c"):
            tw.acquire(subject, "geocode")
            tw.assign(subject, "pro")
            tw.acquire(subject, "search")  # per-operation, shadow and budget counters
            held = tw.reserve(subject, "geocode", 2)  # a hold, kept beside the counters
            assert held.allowed
            keys = all_keys() - seen
            assert keys, "the steps wrote nothing to the cluster"
            subject_slots = {client.keyslot(key) for key in keys}
            assert len(subject_slots) == 1, (subject, keys)
            slots.append(subject_slots.pop())
            seen |= keys
            held.commit(1)
            assert all_keys() - seen == set()  # settling writes below the same keys
        # the subjects are spread over the cluster (they do not share one slot)
        assert len(set(slots)) == 4


def test_assignment_is_seen_at_once_by_another_instance(
    make_tollway: Callable[..., Tollway],
) -> None:
    admin, worker = make_tollway(), make_tollway()
    for _ in range(3):
        assert worker.acquire("acct-3", "geocode").allowed
    assert worker.plan_of("acct-3") == "free"

    admin.assign("acct-3", "pro")
    decision = worker.acquire("acct-3", "geocode")  # the worker still believes "free"
    assert decision.plan == "pro"
    assert [s.name for s in decision.limits] == ["daily", "per-op", "watch"]
    # same limit name, same counter: the count is kept, the new plan's number applies
    assert decision.limit("daily").used == 4
    assert decision.limit("daily").limit == 100
    assert worker.plan_of("acct-3") == "pro"

    admin.assign("acct-3", None)
    back = worker.acquire("acct-3", "geocode")
    assert back.plan == "free"
    assert back.limit("daily").used == 5
    assert back.limit("daily").limit == 10
    assert admin.usage("acct-3").plan == "free"


def test_remaining_and_reset_come_from_the_step_itself(
    server: Server, make_tollway: Callable[..., Tollway]
) -> None:
    one, two = make_tollway(), make_tollway()
    one.acquire("warm", "geocode")
    two.acquire("warm", "geocode")
    for i in range(1, 13):
        tw = one if i % 2 else two  # two instances interleaved: no cached figures can help
        low = server.time_us("acct-4")
        with server.sent() as sent:
            decision = tw.acquire("acct-4", "geocode")
        assert sent == ["EVALSHA"]
        high = server.time_us("acct-4")
        assert low <= decision.now_us <= high  # the store's clock, read inside the step
        daily = decision.limit("daily")
        assert decision.allowed == (i <= 10)
        assert daily.used == min(i, 10)
        assert daily.remaining == 10 - daily.used
        assert daily.window_end is not None
        end_us = int(daily.window_end.timestamp()) * 1_000_000
        assert daily.reset_after == pytest.approx((end_us - decision.now_us) / 1e6, abs=1e-6)
        burst = decision.limit("burst")
        assert burst.remaining == 50 - min(i, 10)
        if not decision.allowed:
            assert decision.violated == ("daily",)
            assert decision.retry_after == pytest.approx(daily.reset_after, abs=1e-6)


# -- usage on Redis means what it means in memory ---------------------------------------------


def _views(usage: Any) -> list[dict[str, Any]]:
    return [limit_view(s, timing=False) for s in usage.limits]


def test_usage_and_reset_match_the_memory_store(
    make_tollway: Callable[..., Tollway],
) -> None:
    on_redis = make_tollway()
    clock = FakeClock(time.time())
    in_memory = Tollway(policy(), "memory://", clock=clock)
    script: list[tuple[Any, ...]] = [
        ("usage", "fresh"),
        ("acquire", "s", "geocode", None),
        ("acquire", "s", "search", 3),
        ("usage", "s"),
        ("acquire", "s", "search", 20),  # denied by daily and spend: nothing taken
        ("usage", "s"),
        ("assign", "s", "pro"),
        ("usage", "s"),
        ("acquire", "s", "search", None),
        ("acquire", "s", "search", None),
        ("acquire", "s", "geocode", None),
        ("acquire", "s", "search", None),
        ("acquire", "s", "search", None),
        ("usage", "s"),
        ("reserve-commit", "s", "geocode", 1, 30),  # commit far above every limit
        ("usage", "s"),
        ("reset", "s", "per-op"),
        ("usage", "s"),
        ("reset", "s", None),
        ("usage", "s"),
        ("reset", "s", None),
        ("assign", "s", None),
        ("usage", "s"),
    ]
    for command in script:
        kind, subject, *rest = command
        results = []
        for tw in (on_redis, in_memory):
            if kind == "usage":
                usage = tw.usage(subject)
                results.append((usage.plan, _views(usage)))
            elif kind == "acquire":
                d = tw.acquire(subject, rest[0], rest[1])
                results.append((d.allowed, d.violated, d.shadow_violated))
            elif kind == "assign":
                tw.assign(subject, rest[0])
            elif kind == "reset":
                results.append(tw.reset(subject, rest[0]))
            else:
                held = tw.reserve(subject, rest[0], rest[1])
                results.append((held.allowed, [s.used for s in held.commit(rest[2]).limits]))
        if results:
            assert results[0] == results[1], command
    assert in_memory.usage("s").limit("daily").used == 0


# -- reservations -----------------------------------------------------------------------------


def test_reservations(make_tollway: Callable[..., Tollway]) -> None:
    tw = make_tollway()

    def used(name: str) -> Any:
        return tw.usage("acct-5").limit(name).used

    down = tw.reserve("acct-5", "geocode", 5)
    assert down.allowed
    assert (used("daily"), used("burst"), used("spend")) == (5, 5, Decimal("0.025"))
    done = down.commit(2)
    assert done.limit("daily").used == 2
    assert (used("daily"), used("burst"), used("spend")) == (2, 2, Decimal("0.010"))

    up = tw.reserve("acct-5", "geocode", 1)
    up.commit(4)
    assert (used("daily"), used("burst"), used("spend")) == (6, 6, Decimal("0.030"))

    released = tw.reserve("acct-5", "search", 3)
    assert used("daily") == 9
    released.release()
    assert (used("daily"), used("burst"), used("spend")) == (6, 6, Decimal("0.030"))

    with pytest.raises(ReservationError):
        released.commit()
    with pytest.raises(ReservationError):
        released.release()
    with pytest.raises(ReservationError):
        up.commit(1)
    assert used("daily") == 6  # a refused settle changes nothing

    denied = tw.reserve("acct-5", "geocode", 5)  # 6 + 5 > 10
    assert not denied.allowed
    assert denied.decision.violated == ("daily",)
    with pytest.raises(ReservationError):
        denied.commit(1)
    with pytest.raises(LimitExceeded), denied:
        pass
    assert used("daily") == 6

    with tw.reserve("acct-5", "geocode", 2):
        assert used("daily") == 8
    assert used("daily") == 8  # the block ended unsettled: the estimate was committed
    with pytest.raises(RuntimeError), tw.reserve("acct-5", "geocode", 2):
        raise RuntimeError("the call failed")
    assert used("daily") == 8  # released on the exception

    money = tw.reserve("acct-5", "geocode", 1)
    money.commit(1, amount=Decimal("0.25"))
    assert used("spend") == Decimal("0.29")  # 0.040 + the explicit amount
    assert used("daily") == 9


# -- asyncio ----------------------------------------------------------------------------------


async def test_async_concurrent_acquires_from_a_fresh_client(server: Server) -> None:
    """40 acquires at once, as the first thing a new AsyncTollway does: exactly 10 pass, and
    a healthy store is never reported unavailable (three fresh clients in a row)."""
    for round_ in range(3):
        subject = f"acct-6-{round_}"
        # 40 cold connections at once on a loaded 2-CPU machine can take longer than the
        # default 50 ms; this test is about the fresh client, not about the timeout.
        async with AsyncTollway(policy(timeout_ms=2000), server.url) as tw:
            decisions = await asyncio.gather(*(tw.acquire(subject, "geocode") for _ in range(40)))
            assert [d.reason for d in decisions if d.degraded] == []
            assert sum(d.allowed for d in decisions) == 10
            used = sorted(d.limit("daily").used for d in decisions if d.allowed)
            assert used == list(range(1, 11))
            usage = await tw.usage(subject)
            assert usage.limit("daily").used == 10
            assert usage.limit("spend").used == Decimal("0.05")


async def test_async_tollway(server: Server) -> None:
    # 25 cold connections at once: more than the default 50 ms on a loaded machine.
    async with AsyncTollway(policy(timeout_ms=2000), server.url) as tw:
        assert (await tw.acquire("acct-8", "geocode")).allowed
        decisions = await asyncio.gather(*(tw.acquire("acct-8", "geocode") for _ in range(25)))
        assert not any(d.degraded for d in decisions)
        assert sum(d.allowed for d in decisions) == 9
        assert (await tw.usage("acct-8")).limit("daily").used == 10

        held = await tw.reserve("acct-7", "search", 4)
        assert held.allowed
        assert (await tw.usage("acct-7")).limit("daily").used == 4
        await held.commit(1)
        assert (await tw.usage("acct-7")).limit("daily").used == 1
        with pytest.raises(ReservationError):
            await held.release()
        async with await tw.reserve("acct-7", "geocode", 2):
            pass
        assert (await tw.usage("acct-7")).limit("daily").used == 3

        await tw.assign("acct-7", "pro")
        with Tollway(policy(), server.url) as sync:
            assert sync.plan_of("acct-7") == "pro"
            assert sync.acquire("acct-7", "geocode").limit("daily").used == 4
        assert await tw.plan_of("acct-7") == "pro"
        assert (await tw.acquire("acct-7", "search")).limit("daily").used == 6
        assert await tw.reset("acct-7") >= 1
        assert (await tw.usage("acct-7")).limit("daily").used == 0
