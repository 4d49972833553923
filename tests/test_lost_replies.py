"""Lost replies and lost requests: a proxy in front of Redis cuts the connection after Redis
ran a step but before its reply arrived, or before Redis saw it. Whatever the caller was told
(fail-open lets it through, fail-closed refuses it), once the store answers again and the
journal is resolved, counters == allowed decisions == the ledger, every time: on standalone
and on a 3-master Cluster, with and without the caller's request ids, with usage events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
import redis.cluster

from dropping_proxy import DroppingProxy, Loss
from model import day_safe_timezone
from servers import RedisCluster, RedisServer
from tollway import AsyncTollway, Tollway
from tollway.engine.step import system_clock
from tollway.metering.entries import decode_entry
from tollway.metering.ledger import Ledger, open_ledger
from tollway.metering.ledger.events import UsageEvent
from tollway.policy import load
from tollway.policy.model import Policy
from tollway.stores.redis import AsyncRedisStore, RedisStore
from tollway.stores.redis_codec import STEP

QUOTA = 6
CALLS = 10
FAULTS = (1, 3, 4, 7)
"""Which calls (0-based) lose their reply or their request."""


def _policy(url: str, folder: Path, on_error: str) -> Policy:
    return load(
        {
            "store": {
                "url": url,
                "timeout_ms": 200,
                "breaker_failures": 100,  # every call goes to the store: a cut is not an outage
                "breaker_cooldown_ms": 50,
                "journal": str(folder),
            },
            "ledger": {"url": f"sqlite:///{folder.parent / 'unused.db'}", "events": True},
            "defaults": {"plan": "p"},
            "operations": {"call": {"cost": 1}},
            "plans": {
                "p": {
                    "limits": [
                        {
                            "name": "calls",
                            "quota": f"{QUOTA}/day",
                            "timezone": day_safe_timezone(),
                            "on_error": on_error,
                        }
                    ]
                }
            },
        }
    )


def _ledger_quantity(client: Any, stream: str, subject: str, ledger: Ledger) -> int:
    """Write the subject's usage entries of ``stream`` to a real ledger (as the drain does:
    one event per id) and read back its total."""
    events = []
    for entry_id, fields in client.xrange(stream):
        got = decode_entry(stream, entry_id.decode(), fields, recorded_at_us=1)
        if isinstance(got, UsageEvent) and got.subject == subject:
            events.append(got)
    ledger.write(events)
    totals = ledger.totals(subject, 0, 2**62)
    return sum(t.quantity for t in totals.values())


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


def _run(tw: Tollway, proxies: list[DroppingProxy], loss: Loss, ids: bool, subject: str) -> int:
    allowed = degraded = 0
    for n in range(CALLS):
        if n in FAULTS:
            for proxy in proxies:  # the subject's slot is on one of them
                proxy.arm(loss, STEP.sha.encode())
        decision = tw.acquire(subject, "call", id=f"req-{n}" if ids else None)
        allowed += decision.allowed
        degraded += decision.degraded
        for proxy in proxies:
            proxy.disarm()  # the others were not used
    assert degraded == len(FAULTS)  # each lost step was decided without the store
    return allowed


def _check(tw: Tollway, client: Any, subject: str, allowed: int, ledger: Ledger) -> None:
    assert tw.store.wait_replayed(10)
    used = tw.usage(subject).limit("calls").used
    billed = _ledger_quantity(client, tw.store.stream_of(subject), subject, ledger)
    assert (used, billed) == (allowed, allowed)


@pytest.mark.parametrize("loss", ["reply", "request"])
@pytest.mark.parametrize("ids", [False, True], ids=["no-ids", "ids"])
@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_standalone(
    make_redis_server: Callable[[], RedisServer],
    tmp_path: Path,
    ledger: Ledger,
    loss: Loss,
    ids: bool,
    on_error: str,
) -> None:
    server = make_redis_server()
    with DroppingProxy(server.port) as proxy:
        policy = _policy(f"redis://127.0.0.1:{proxy.port}", tmp_path / "journal", on_error)
        with Tollway(policy) as tw:
            allowed = _run(tw, [proxy], loss, ids, "acct")
            assert proxy.lost == [loss] * len(FAULTS)
            with redis.Redis(port=server.port) as client:
                _check(tw, client, "acct", allowed, ledger)


class _ProxiedCluster(RedisStore):
    """A Cluster store whose connections to each master go through its proxy."""

    remap: ClassVar[dict[int, int]] = {}

    def _client_options(self) -> dict[str, Any]:
        options = super()._client_options()
        options["address_remap"] = lambda addr: ("127.0.0.1", self.remap.get(addr[1], addr[1]))
        return options


@pytest.mark.parametrize("loss", ["reply", "request"])
@pytest.mark.parametrize("ids", [False, True], ids=["no-ids", "ids"])
@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_cluster(
    redis_cluster: RedisCluster,
    redis_cluster_url: str,
    tmp_path: Path,
    ledger: Ledger,
    loss: Loss,
    ids: bool,
    on_error: str,
    request: pytest.FixtureRequest,
) -> None:
    ports = redis_cluster.ports
    proxies = [DroppingProxy(port) for port in ports]
    try:
        _ProxiedCluster.remap = {port: p.port for port, p in zip(ports, proxies, strict=True)}
        policy = _policy(redis_cluster_url, tmp_path / "journal", on_error)
        subject = f"acct-{request.node.name}"
        store = _ProxiedCluster(redis_cluster_url, policy.store, system_clock, policy.ledger)
        with Tollway(policy, store) as tw:
            allowed = _run(tw, proxies, loss, ids, subject)
            assert sum(len(p.lost) for p in proxies) == len(FAULTS)
            with redis.cluster.RedisCluster(host="127.0.0.1", port=ports[0]) as client:
                _check(tw, client, subject, allowed, ledger)
    finally:
        for proxy in proxies:
            proxy.close()


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_async_face(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path, ledger: Ledger, on_error: str
) -> None:
    """The asyncio store keeps the same books (its replayer runs in a thread of its own)."""
    server = make_redis_server()
    with DroppingProxy(server.port) as proxy:
        policy = _policy(f"redis://127.0.0.1:{proxy.port}", tmp_path / "journal", on_error)
        async with AsyncTollway(policy) as tw:
            allowed = degraded = 0
            for n in range(CALLS):
                if n in FAULTS:
                    proxy.arm("reply", STEP.sha.encode())
                decision = await tw.acquire("acct", "call", id=f"req-{n}" if n % 2 else None)
                allowed += decision.allowed
                degraded += decision.degraded
                proxy.disarm()
            assert degraded == len(FAULTS)
            assert await tw.store.wait_replayed_async(10)
            used = (await tw.usage("acct")).limit("calls").used
        with redis.Redis(port=server.port) as client:
            stream = AsyncRedisStore(server.url, policy.store, system_clock, policy.ledger)
            billed = _ledger_quantity(client, stream.stream_of("acct"), "acct", ledger)
            await stream.aclose()
        assert (used, billed) == (allowed, allowed)


def test_a_client_clock_ahead_of_redis_keeps_deadlines_on_time(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path
) -> None:
    """The offset is read from Redis's TIME at connect: with the client's clock 30 s ahead, a
    step stuck in a stopped server's buffer is refused when it resumes (its deadline passed),
    and the step in doubt is resolved at once, not 30 s later."""
    import os
    import signal
    import time

    server = make_redis_server()
    policy = _policy(server.url, tmp_path / "journal", "open")
    ahead = lambda: time.time_ns() // 1000 + 30_000_000  # noqa: E731
    with Tollway(policy, clock=ahead) as tw:
        assert tw.acquire("acct", "call").allowed
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            stuck = tw.acquire("acct", "call")
            assert stuck.allowed and stuck.degraded
            time.sleep(0.3)  # past the stuck step's deadline (160 ms), on Redis's clock too
        finally:
            os.kill(server.pid, signal.SIGCONT)
        started = time.monotonic()
        assert not tw.acquire("acct", "call").degraded
        assert tw.store.wait_replayed(10)
        assert time.monotonic() - started < 5
        assert tw.usage("acct").limit("calls").used == 3  # each of the three counted once


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_retry_of_a_lost_step_under_its_request_id(
    make_redis_server: Callable[[], RedisServer], tmp_path: Path, ledger: Ledger, on_error: str
) -> None:
    """The caller retries with the same id after the lost reply. Let through, the step was
    taken: the retry is a repeat, not counted again. Refused, it was given back: the retry is
    a new request, counted once, and its event is not mistaken for the one taken back."""
    server = make_redis_server()
    with DroppingProxy(server.port) as proxy:
        policy = _policy(f"redis://127.0.0.1:{proxy.port}", tmp_path / "journal", on_error)
        with Tollway(policy) as tw:
            proxy.arm("reply", STEP.sha.encode())
            lost = tw.acquire("acct", "call", id="order-1")
            assert lost.degraded and lost.allowed == (on_error == "open")
            assert not tw.acquire("acct", "call", id="other").degraded  # the store is back
            assert tw.store.wait_replayed(10)
            retry = tw.acquire("acct", "call", id="order-1")
            assert retry.allowed and not retry.degraded
            assert retry.duplicate == (on_error == "open")
            used = tw.usage("acct").limit("calls").used
            with redis.Redis(port=server.port) as client:
                billed = _ledger_quantity(client, tw.store.stream_of("acct"), "acct", ledger)
        assert (used, billed) == (2, 2)  # order-1 once, other once


@pytest.mark.parametrize("loss", ["reply", "request"])
@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_credits_step_in_doubt_draws_once_or_gives_back(
    make_redis_server: Callable[[], RedisServer],
    tmp_path: Path,
    ledger: Ledger,
    loss: Loss,
    on_error: str,
) -> None:
    """Credits drawn by lost steps: once the journal is resolved, the balance is the grant less
    one price per allowed call, and the ledger bills exactly those calls."""
    server = make_redis_server()
    cent = 10_000
    with DroppingProxy(server.port) as proxy:
        doc = {
            "store": {
                "url": f"redis://127.0.0.1:{proxy.port}",
                "timeout_ms": 200,
                "breaker_failures": 100,
                "breaker_cooldown_ms": 50,
                "journal": str(tmp_path / "journal"),
            },
            "ledger": {"url": f"sqlite:///{tmp_path / 'unused.db'}", "events": True},
            "defaults": {"plan": "p"},
            "operations": {"call": {"cost": 1, "price": "0.01 USD"}},
            "plans": {"p": {"limits": [{"credits": "USD", "on_error": on_error}]}},
        }
        with Tollway(load(doc)) as tw:
            assert tw.driver.grant("acct", "USD", "g", 100 * cent)
            allowed = _run(tw, [proxy], loss, False, "acct")
            assert proxy.lost == [loss] * len(FAULTS)
            assert allowed == (CALLS if on_error == "open" else CALLS - len(FAULTS))
            assert tw.store.wait_replayed(10)
            assert tw.driver.balance("acct", "USD")[0] == (100 - allowed) * cent
            with redis.Redis(port=server.port) as client:
                billed = _ledger_quantity(client, tw.store.stream_of("acct"), "acct", ledger)
            assert billed == allowed
