"""Prepaid credits drawn in the atomic step: memory, Redis standalone and a 3-master Cluster,
sync and async faces (the ordering logic itself: `tollway.engine.credits`)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tollway import AsyncTollway, Tollway
from tollway.engine.credits import NEVER, Grant, allocate
from tollway.errors import (
    BillingError,
    GrantConflictError,
    InvalidArgumentError,
    PolicyError,
    UnknownLimitError,
)
from tollway.metering.entries import decode_entry
from tollway.testing import FakeClock

US = 1_000_000
CENT = 10_000

POLICY: dict[str, Any] = {
    "defaults": {"plan": "pre"},
    "operations": {
        "call": {"price": "0.01 USD"},
        "llm": {"price": "explicit"},
        "free": {"cost": 1},
    },
    "plans": {
        "pre": {
            "limits": [
                {"name": "daily", "quota": "5/day"},
                {"credits": "USD", "operations": ["call", "llm"]},
            ]
        },
        "over": {
            "limits": [
                {"name": "wallet", "credits": "USD", "overage": True, "operations": ["call"]}
            ]
        },
    },
}


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(params=["memory", "redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    if request.param == "redis":
        request.getfixturevalue("redis_client")
        return str(request.getfixturevalue("redis_url"))
    request.getfixturevalue("redis_cluster_client")
    return str(request.getfixturevalue("redis_cluster_url"))


def make(url: str | None, policy: dict[str, Any] = POLICY, **kw: Any) -> Tollway:
    return Tollway(policy, url, **kw) if url else Tollway(policy, clock=FakeClock(), **kw)


# -- the allocation, pure --------------------------------------------------------------------


def g(gid: str, micros: int, priority: int = 0, expires: int = NEVER, seq: int = 0) -> Grant:
    return Grant(gid, micros, priority, expires, seq, micros)


def test_draws_go_by_priority_then_soonest_expiry_then_age() -> None:
    grants = [
        g("old", 100, seq=1),
        g("young", 100, seq=2),
        g("soon", 100, expires=5_000, seq=3),
        g("vip", 100, priority=5, expires=9_000, seq=4),
    ]
    live, balance, nxt = allocate(grants, 400 - 250, now_us=0)
    assert [(x.id, x.remaining) for x in live] == [
        ("vip", 0),
        ("soon", 0),
        ("old", 50),
        ("young", 100),
    ]
    assert (balance, nxt) == (150, 5_000)


def test_expired_grants_leave_the_balance_and_give_backs_go_to_the_last_drawn() -> None:
    grants = [g("a", 100, seq=1), g("b", 100, seq=2, expires=50)]
    live, balance, _ = allocate(grants, 80, now_us=0)  # 120 drawn: b (soonest) 100, a 20
    assert [(x.id, x.remaining) for x in live] == [("b", 0), ("a", 80)]
    # 30 back: to a (the last drawn) up to its amount, then the rest to b
    live, balance, _ = allocate(live, balance + 30, now_us=0)
    assert [(x.id, x.remaining) for x in live] == [("b", 10), ("a", 100)]
    live, balance, _ = allocate(live, balance + 200, now_us=0)  # never above a grant
    assert [(x.id, x.remaining) for x in live] == [("b", 100), ("a", 100)]
    live, balance, _ = allocate(live, 90 + 100, now_us=0)  # 10 drawn: from b
    assert [(x.id, x.remaining) for x in live] == [("b", 90), ("a", 100)]
    live, balance, nxt = allocate(live, balance, now_us=50)  # b expires at 50
    assert [(x.id, x.remaining) for x in live] == [("a", 100)]
    assert (balance, nxt) == (100, NEVER)  # b's 90 left with it


# -- the step ---------------------------------------------------------------------------------


def test_a_step_draws_its_price_and_is_denied_when_the_balance_cannot_cover_it(
    url: str | None,
) -> None:
    with make(url) as tw:
        denied = tw.acquire("a", "call")
        assert not denied.allowed and denied.violated == ("credits",)
        assert denied.retry_after is None  # waiting does not help
        assert tw.usage("a").limit("daily").used == 0  # a credits denial consumes nothing
        assert tw.driver.grant("a", "USD", "g1", 2 * CENT + 5_000) is True
        for left in ("0.015", "0.005"):
            d = tw.acquire("a", "call")
            assert d.allowed and d.drawn == CENT
            assert d.limit("credits").remaining == Decimal(left)
        d = tw.acquire("a", "call")
        assert not d.allowed and d.violated == ("credits",) and d.drawn == 0
        assert d.limit("credits").remaining == Decimal("0.005")
        assert tw.usage("a").limit("daily").used == 2
        assert tw.acquire("a", "free").allowed  # not a credits operation
        balance, grants = tw.driver.balance("a", "USD")
        assert balance == 5_000 and [(x.id, x.remaining) for x in grants] == [("g1", 5_000)]
        assert tw.acquire("a", "llm", amount=Decimal("0.005")).drawn == 5_000


def test_a_quota_denial_draws_nothing(url: str | None) -> None:
    with make(url) as tw:
        tw.driver.grant("q", "USD", "big", 100 * CENT)
        for _ in range(3):
            assert tw.acquire("q", "free").allowed
        assert tw.acquire("q", "call", 2).allowed  # 2 units: 0.02
        d = tw.acquire("q", "call")
        assert not d.allowed and d.violated == ("daily",)
        assert tw.driver.balance("q", "USD")[0] == 98 * CENT


def test_draw_order_and_revoke_on_every_store(url: str | None) -> None:
    with make(url) as tw:
        far = int(time.time() * US) + 3600 * US
        tw.driver.grant("o", "USD", "plain", 3 * CENT)
        tw.driver.grant("o", "USD", "expiring", 1 * CENT, expires_us=far)
        tw.driver.grant("o", "USD", "promo", 1 * CENT, priority=2)
        assert tw.acquire("o", "call", 2).allowed
        balance, grants = tw.driver.balance("o", "USD")
        assert balance == 3 * CENT
        assert [(x.id, x.remaining) for x in grants] == [
            ("promo", 0),
            ("expiring", 0),
            ("plain", 3 * CENT),
        ]
        assert tw.driver.revoke("o", "USD", "plain") == 3 * CENT
        assert tw.driver.revoke("o", "USD", "plain") == 0
        assert tw.driver.balance("o", "USD")[0] == 0
        assert not tw.acquire("o", "call").allowed


def test_grants_are_idempotent_on_their_id_and_conflicts_name_both(url: str | None) -> None:
    with make(url) as tw:
        assert tw.driver.grant("i", "USD", "g-7", CENT, priority=1) is True
        assert tw.driver.grant("i", "USD", "g-7", CENT, priority=1) is False
        assert tw.driver.balance("i", "USD")[0] == CENT
        with pytest.raises(GrantConflictError, match=r"'g-7'.*micros=10000.*micros=20000"):
            tw.driver.grant("i", "USD", "g-7", 2 * CENT, priority=1)
        with pytest.raises(GrantConflictError, match=r"priority=1.*priority=2"):
            tw.driver.grant("i", "USD", "g-7", CENT, priority=2)
        assert tw.driver.balance("i", "USD")[0] == CENT
        with pytest.raises(BillingError, match="not after the store's time"):
            tw.driver.grant("i", "USD", "old", CENT, expires_us=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x" * 129, CENT), "id: .* not a grant id"),
        (("", CENT), "not a grant id"),
        (("a\nb", CENT), "control characters"),
        (("ok", 0), "micros: 0"),
        (("ok", 1.5), "micros: 1.5"),
        (("ok", True), "micros: True"),
    ],
)
def test_hostile_grant_arguments_are_refused(args: tuple[Any, ...], message: str) -> None:
    with make(None) as tw:
        with pytest.raises(InvalidArgumentError, match=message):
            tw.driver.grant("h", "USD", *args)
        with pytest.raises(InvalidArgumentError, match="currency"):
            tw.driver.grant("h", "usd", "ok", CENT)
        assert tw.driver.balance("h", "USD") == (0, ())


def test_at_most_1000_live_grants() -> None:
    with make(None) as tw:
        for i in range(1000):
            tw.driver.grant("m", "USD", f"g{i}", 1)
        with pytest.raises(BillingError, match="at most 1000"):
            tw.driver.grant("m", "USD", "one-more", 1)
        assert tw.driver.grant("m", "USD", "g5", 1) is False  # a repeat is still fine


def test_grants_expire_on_the_injected_clock() -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=timezone.utc))
    with Tollway(POLICY, clock=clock) as tw:
        tw.driver.grant("e", "USD", "soon", 2 * CENT, expires_us=clock() + 60 * US)
        tw.driver.grant("e", "USD", "later", CENT, expires_us=clock() + 120 * US)
        assert tw.acquire("e", "call").drawn == CENT  # from "soon"
        clock.advance(60)
        assert tw.driver.balance("e", "USD")[0] == CENT  # "soon"'s last cent is gone
        assert tw.acquire("e", "call").allowed
        clock.advance(60)
        assert not tw.acquire("e", "call").allowed


@pytest.fixture(params=["redis", "cluster"])
def shared_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_client")
        return str(request.getfixturevalue("redis_url"))
    request.getfixturevalue("redis_cluster_client")
    return str(request.getfixturevalue("redis_cluster_url"))


def test_grants_expire_on_redis_time(shared_url: str) -> None:
    # Redis judges expiry by its own TIME: a grant already over on it is refused and stores
    # nothing, and the sooner expiry is drawn first (no waiting on a real clock).
    with make(shared_url) as tw:
        now = int(time.time() * US)
        with pytest.raises(BillingError, match="not after the store's time"):
            tw.driver.grant("r", "USD", "ended", 5 * CENT, expires_us=now - 60 * US)
        tw.driver.grant("r", "USD", "open", CENT)
        tw.driver.grant("r", "USD", "hour", CENT, expires_us=now + 3600 * US)
        assert tw.driver.balance("r", "USD")[0] == 2 * CENT
        assert tw.acquire("r", "call").drawn == CENT
        left = {grant.id: grant.remaining for grant in tw.driver.balance("r", "USD")[1]}
        assert left.get("hour", 0) == 0 and left["open"] == CENT
        assert tw.acquire("r", "call").allowed
        assert not tw.acquire("r", "call").allowed


def test_overage_passes_draws_nothing_and_the_event_leaves_the_limit_out(
    url: str | None, tmp_path: Path
) -> None:
    ledger = tmp_path / "usage.db"
    policy = {**POLICY, "defaults": {"plan": "over"}, "ledger": {"url": f"sqlite:///{ledger}"}}
    with make(url, policy) as tw:
        tw.driver.grant("v", "USD", "g", CENT)
        paid = tw.acquire("v", "call", id="paid")
        over = tw.acquire("v", "call", id="over")
        assert paid.allowed and paid.drawn == CENT
        assert over.allowed and over.drawn == 0 and over.violated == ()
        assert tw.driver.balance("v", "USD")[0] == 0
        limits = {event.id: event.limits for event in _events(tw, "v", url)}
    assert limits == {"paid": ("wallet",), "over": ()}


def _events(tw: Tollway, subject: str, url: str | None) -> list[Any]:
    """The usage events the steps appended, decoded as the drain decodes them."""
    if url is None:
        store: Any = tw.store
        with store.lock:
            raw = [("memory", str(i), dict(e)) for i, e in enumerate(store.events)]
    else:
        import redis

        stream = tw.store.stream_of(subject)  # type: ignore[attr-defined]
        client: Any = (
            redis.cluster.RedisCluster.from_url(url.replace("+cluster", ""))
            if "cluster" in url
            else redis.Redis.from_url(url)
        )
        raw = [(stream, eid.decode(), fields) for eid, fields in client.xrange(stream)]
        client.close()
    decoded = [decode_entry(s, eid, f, recorded_at_us=0) for s, eid, f in raw]
    return [e for e in decoded if getattr(e, "subject", None) == subject and hasattr(e, "limits")]


def test_a_plan_takes_one_credits_limit_and_only_keys_it_understands() -> None:
    def refused(limits: list[Any], where: str = "plans") -> str:
        doc: dict[str, Any] = {"operations": {"call": {"price": "0.01 USD"}}}
        if where == "plans":
            doc["plans"] = {"p": {"limits": limits}}
        else:
            doc["providers"] = {"p": {"price": "0.01 USD", "limits": limits}}
        with pytest.raises(PolicyError) as info:
            Tollway(doc)
        return str(info.value)

    assert "plans.p.limits[0].burst" in refused([{"credits": "USD", "burst": 3}])
    assert "plans.p.limits[0].grace" in refused([{"credits": "USD", "grace": "10%"}])
    assert "3-letter" in refused([{"credits": "dollars"}])
    assert "a second credits limit" in refused(
        [{"credits": "USD"}, {"name": "more", "credits": "USD"}]
    )
    assert "plans.p.limits[0].overage" in refused([{"quota": "5/day", "overage": True}])
    assert "priced in USD" in refused([{"credits": "EUR"}])
    assert "not allowed in a provider" in refused([{"credits": "USD"}], "providers")
    doc = {"operations": {"call": {}}, "plans": {"p": {"limits": [{"credits": "USD"}]}}}
    with pytest.raises(PolicyError, match=r"plans\.p\.limits\[0\]\.credits.*no price"):
        Tollway(doc)


def test_reservations_hold_credits_and_give_back_the_difference(url: str | None) -> None:
    with make(url) as tw:
        tw.driver.grant("h", "USD", "g", 10 * CENT)
        held = tw.reserve("h", "llm", amount=Decimal("0.05"))
        assert tw.driver.balance("h", "USD")[0] == 5 * CENT
        held.commit(amount=Decimal("0.02"))
        assert tw.driver.balance("h", "USD")[0] == 8 * CENT
        tw.reserve("h", "llm", amount=Decimal("0.08")).release()
        balance, grants = tw.driver.balance("h", "USD")
        assert balance == 8 * CENT and grants[0].remaining == 8 * CENT


async def test_the_async_face_draws_and_grants_alike(url: str | None) -> None:
    atw = AsyncTollway(POLICY, url) if url else AsyncTollway(POLICY, clock=FakeClock())
    async with atw:
        assert await atw.driver.grant("as", "USD", "g", 2 * CENT) is True
        assert await atw.driver.grant("as", "USD", "g", 2 * CENT) is False
        assert (await atw.acquire("as", "call")).drawn == CENT
        balance, grants = await atw.driver.balance("as", "USD")
        assert balance == CENT and grants[0].id == "g"
        assert await atw.driver.revoke("as", "USD", "g") == CENT
        assert not (await atw.acquire("as", "call")).allowed


def test_a_balance_outlives_plan_changes_and_the_subject_s_expiry(url: str | None) -> None:
    with make(url) as tw:
        tw.driver.grant("p", "USD", "g", 3 * CENT)
        tw.assign("p", "pre")
        assert tw.acquire("p", "call").drawn == CENT
        tw.assign("p", None)  # back on the default plan: its state may expire, not its balance
        store: Any = tw.store
        if url is None:
            store.clock.advance(40 * 86_400)
        else:
            import redis

            client: Any = (
                redis.cluster.RedisCluster.from_url(url.replace("+cluster", ""))
                if "cluster" in url
                else redis.Redis.from_url(url)
            )
            assert client.ttl("tw:{p}") == -1  # never expires
            client.close()
        assert tw.driver.balance("p", "USD")[0] == 2 * CENT
        assert tw.acquire("p", "call").drawn == CENT


def test_a_reset_clears_the_counters_never_the_balance(url: str | None) -> None:
    with make(url) as tw:
        tw.driver.grant("z", "USD", "g", 3 * CENT)
        assert tw.acquire("z", "call").allowed
        names = {state.name: state.kind for state in tw.usage("z").limits}
        wallet = next(name for name, kind in names.items() if kind == "credits")
        assert tw.reset("z") == 1  # the daily quota's counter only
        assert tw.driver.balance("z", "USD")[0] == 2 * CENT
        with pytest.raises(UnknownLimitError, match="prepaid balance"):
            tw.reset("z", wallet)
        assert tw.driver.balance("z", "USD")[0] == 2 * CENT
        assert tw.usage("z").limit("daily").remaining == 5
