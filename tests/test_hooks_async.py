"""The async face of the hooks: `AsyncDispatcher` on `AsyncSqliteLedger` and
`AsyncPostgresLedger`, `AsyncDeliverer`, the async sinks and `AsyncHookStore`.

The same real parts as `test_hooks`: a scripted HTTP receiver on 127.0.0.1 (every webhook
verified with the `standardwebhooks` package), SQLite files and a real PostgreSQL (a schema of
its own per test), a real redis-server for the stream sink. Schedules run on a fake clock
that only moves when a test moves it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from test_hooks import ENV, SECRET, T0, US, Clock, ev, pg_url, verify_all, webhook
from test_webhooks import Receiver
from tollway.errors import ConfigurationError
from tollway.metering.asyncsinks import (
    AsyncCallableSink,
    AsyncRedisStreamSink,
    ThreadedSink,
    as_async_sink,
)
from tollway.metering.cloudevents import CONTENT_TYPE, USAGE_RECORDED, decode, make_event
from tollway.metering.delivery import AsyncDeliverer, DeadLetter, Delivered
from tollway.metering.hooks import AsyncDispatcher, Dispatcher
from tollway.metering.ledger import AsyncLedger, open_async_ledger, open_ledger
from tollway.metering.ledger.base import Ledger
from tollway.metering.ledger.hookstore import AsyncHookStore, HookStore
from tollway.metering.retry import RetrySchedule
from tollway.metering.sinks import CallableSink, Message, SendResult, WebhookSink
from tollway.policy.model import HookConfig


def dispatcher(
    ledger: AsyncLedger, hooks: list[HookConfig], clock: Clock, **kw: Any
) -> AsyncDispatcher:
    return AsyncDispatcher(ledger, hooks, clock=clock, env=ENV, rng=lambda: 0.0, jitter=0.0, **kw)


async def drain(d: AsyncDispatcher, clock: Clock, *, rounds: int = 50) -> int:
    """Run the dispatcher, moving the clock to each next due time, until nothing is pending."""
    attempts = 0
    for _ in range(rounds):
        attempts += await d.run_once()
        due = await d.next_due_us()
        if due is None:
            return attempts
        clock.to_us(max(due, clock()))
    raise AssertionError("still pending after every round")


__all__ = ["pg_url"]  # a fixture of test_hooks, used here too


@pytest.fixture
def http() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[AsyncLedger]:
    opened = await open_async_ledger(ledger_url)
    async with opened:
        yield opened


# =========================================================================== parity


def test_the_async_hook_store_has_every_method_of_the_sync_one() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(AsyncHookStore) == public(HookStore)
    for name in public(HookStore) - {"dialect"}:
        assert inspect.iscoroutinefunction(getattr(AsyncHookStore, name)), name
        assert not inspect.iscoroutinefunction(getattr(HookStore, name)), name
        sync = inspect.signature(getattr(HookStore, name))
        assert str(inspect.signature(getattr(AsyncHookStore, name))) == str(sync)
    ledger_only = public(Ledger) - {"close"}
    assert {name for name in dir(AsyncLedger) if not name.startswith("_")} >= ledger_only


# =========================================================================== dispatcher


async def test_the_async_dispatcher_retries_then_delivers_each_message_once(
    ledger: AsyncLedger, http: Receiver
) -> None:
    clock = Clock()
    hook = webhook(http.url, timeout_ms=200)
    result = await ledger.commit([ev(i) for i in range(4)], hooks=[hook], now_us=T0)
    assert (result.inserted, result.enqueued) == (4, 4)
    # 500, a hang past the 0.2 s timeout, a 503 with Retry-After, then 200s.
    http.answer(("status", 500), ("hang",), ("status", 503, {"Retry-After": "30"}))
    async with dispatcher(ledger, [hook], clock) as d:
        assert await d.run_once() == 4
        status = {m.id: m.status for m in await ledger.hook_messages()}
        assert status == {
            "evt-0": "pending", "evt-1": "pending", "evt-2": "pending", "evt-3": "delivered",
        }  # fmt: skip
        (later,) = await ledger.hook_messages(ids=["evt-2"])
        assert later.next_at_us == T0 + 30 * US  # Retry-After beat the 5 s of the schedule
        assert await d.run_once() == 0  # nothing due yet
        await drain(d, clock)
    messages = {m.id: m for m in await ledger.hook_messages()}
    assert {m.status for m in messages.values()} == {"delivered"}
    assert Counter(http.ids()) == Counter({"evt-0": 2, "evt-1": 2, "evt-2": 2, "evt-3": 1})
    for ident, message in messages.items():
        assert http.ids().count(ident) == len(message.attempts)
    errors = [a.error for a in messages["evt-1"].attempts]
    assert errors[0] is not None and "timed out" in errors[0]
    payloads = verify_all(http)
    assert payloads[0]["type"] == USAGE_RECORDED and payloads[0]["data"]["amount"] == "0.015"


async def test_the_async_dispatcher_dead_letters_and_a_replay_delivers(
    ledger: AsyncLedger, http: Receiver
) -> None:
    clock = Clock()
    hook = webhook(http.url, schedule=(0.0, 1.0, 2.0))
    await ledger.commit([ev(1)], hooks=[hook], now_us=T0)
    http.answer(default=("status", 500))
    async with dispatcher(ledger, [hook], clock) as d:
        assert await drain(d, clock) == 3
        (dead,) = await ledger.hook_messages(status="dead")
        assert (dead.dead_reason, len(dead.attempts)) == ("exhausted", 3)
        assert dead.last_error is not None and dead.last_error.startswith("HTTP 500")
        assert await d.next_due_us() is None
        http.answer(default=("status", 200))
        assert await d.run_once() == 0  # dead stays dead until replayed
        replayed = await ledger.replay_hook_messages(clock(), dead=True)
        assert [m.id for m in replayed] == ["evt-1"]
        assert await d.run_once() == 1
    (done,) = await ledger.hook_messages()
    assert (done.status, done.replays, len(done.attempts), done.round_start) == (
        "delivered", 1, 4, 3,
    )  # fmt: skip
    assert http.ids() == ["evt-1"] * 4
    assert len({request.body for request in http.requests}) == 1
    verify_all(http)


async def test_410_gone_disables_the_async_webhook(ledger: AsyncLedger, http: Receiver) -> None:
    hook = webhook(http.url)
    await ledger.commit([ev(1), ev(2)], hooks=[hook], now_us=T0)
    http.answer(("status", 410))
    async with dispatcher(ledger, [hook], Clock()) as d:
        assert await d.run_once() == 2
        assert d.sink("billing").disabled
    reasons = sorted((m.id, m.dead_reason) for m in await ledger.hook_messages())
    assert reasons == [("evt-1", "gone"), ("evt-2", "disabled")]
    assert http.ids() == ["evt-1"]


async def test_a_coroutine_sink_is_awaited_and_its_failures_retried(ledger: AsyncLedger) -> None:
    clock = Clock()
    hook = HookConfig("calls", "callable", callable="unused:unused", schedule=(0.0, 5.0))
    got: list[str] = []

    async def send(message: Message) -> None:
        await asyncio.sleep(0)
        if message.id == "evt-2" and "evt-2" not in got:
            got.append("evt-2")
            raise RuntimeError("not yet")
        got.append(message.id)

    await ledger.commit([ev(1), ev(2)], hooks=[hook], now_us=T0)
    factory = lambda h, s: AsyncCallableSink(send)  # noqa: E731
    async with dispatcher(ledger, [hook], clock, sink_factory=factory) as d:
        assert await d.run_once() == 2
        (pending,) = await ledger.hook_messages(status="pending")
        assert pending.id == "evt-2" and pending.last_error == "RuntimeError: not yet"
        assert await drain(d, clock) == 1
    assert got == ["evt-1", "evt-2", "evt-2"]
    assert {m.status for m in await ledger.hook_messages()} == {"delivered"}


async def test_a_sync_sink_from_the_factory_runs_in_a_thread(ledger: AsyncLedger) -> None:
    hook = HookConfig("calls", "callable", callable="unused:unused")
    got: list[str] = []
    await ledger.commit([ev(1)], hooks=[hook], now_us=T0)
    sink = CallableSink(lambda m: got.append(m.id))
    async with dispatcher(ledger, [hook], Clock(), sink_factory=lambda h, s: sink) as d:
        assert isinstance(d.sink("calls"), ThreadedSink)
        assert await d.run_once() == 1
    assert got == ["evt-1"]


async def test_the_async_stream_sink_xadds(
    ledger: AsyncLedger, redis_client: redis.Redis, redis_url: str
) -> None:
    hook = HookConfig("events", "stream", stream="async:events", stream_url=redis_url)
    await ledger.commit([ev(1), ev(2)], hooks=[hook], now_us=T0)
    async with dispatcher(ledger, [hook], Clock()) as d:
        assert isinstance(d.sink("events"), AsyncRedisStreamSink)
        assert await d.run_once() == 2
    entries = redis_client.xrange("async:events")
    assert [fields[b"id"] for _, fields in entries] == [b"evt-1", b"evt-2"]
    assert {fields[b"content_type"] for _, fields in entries} == {CONTENT_TYPE.encode()}
    assert decode(entries[0][1][b"body"])["data"]["subject"] == "acct_1"


async def test_the_async_stream_sink_with_redis_down_is_retried(ledger: AsyncLedger) -> None:
    hook = HookConfig(
        "events", "stream", stream="s", stream_url="redis://127.0.0.1:9/0", timeout_ms=200
    )
    await ledger.commit([ev(1)], hooks=[hook], now_us=T0)
    async with dispatcher(ledger, [hook], Clock()) as d:
        assert await d.run_once() == 1
    (message,) = await ledger.hook_messages()
    assert message.status == "pending" and message.last_error is not None
    assert "onnection" in message.last_error


async def test_serve_delivers_until_stopped(ledger: AsyncLedger, http: Receiver) -> None:
    hook = webhook(http.url)
    await ledger.commit([ev(1)], hooks=[hook], now_us=T0)
    stop = asyncio.Event()
    async with dispatcher(ledger, [hook], Clock()) as d:
        task = asyncio.create_task(d.serve(stop, idle_s=0.02))
        for _ in range(500):
            if http.requests:
                break
            await asyncio.sleep(0.01)
        await ledger.commit([ev(2)], hooks=[hook], now_us=T0)  # found on a later round
        for _ in range(500):
            if len(http.requests) == 2:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
    assert http.ids() == ["evt-1", "evt-2"]
    assert {m.status for m in await ledger.hook_messages()} == {"delivered"}


async def test_a_sync_and_an_async_dispatcher_share_one_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    clock = Clock()
    hook = HookConfig("calls", "callable", callable="unused:unused", schedule=(0.0, 5.0))
    sent: list[tuple[str, str]] = []

    def failing_once(message: Message) -> None:
        sent.append(("sync", message.id))
        raise RuntimeError("down")

    async def works(message: Message) -> None:
        sent.append(("async", message.id))

    with open_ledger(url) as sync_ledger:
        sync_ledger.commit([ev(1)], hooks=[hook], now_us=T0)
        factory = lambda h, s: CallableSink(failing_once)  # noqa: E731
        with Dispatcher(sync_ledger, [hook], clock=clock, sink_factory=factory) as d:
            assert d.run_once() == 1
    clock.to_us(T0 + 5 * US)
    async with await open_async_ledger(url) as ledger:
        afactory = lambda h, s: AsyncCallableSink(works)  # noqa: E731
        async with dispatcher(ledger, [hook], clock, sink_factory=afactory) as d:
            assert await d.run_once() == 1  # the schedule the sync one left, resumed
        (message,) = await ledger.hook_messages()
    assert sent == [("sync", "evt-1"), ("async", "evt-1")]
    assert message.status == "delivered" and [a.number for a in message.attempts] == [1, 2]


# =========================================================================== bad input


async def test_the_async_dispatcher_refuses_what_the_sync_one_refuses(
    ledger: AsyncLedger,
) -> None:
    hook = webhook("https://hooks.example.com/x", path="hooks[1]")
    with pytest.raises(ConfigurationError, match=r"hooks\[1\]\.secret_env: the environment"):
        AsyncDispatcher(ledger, [hook], env={})
    twice = [HookConfig("a", "callable", callable="json:dumps")] * 2
    with pytest.raises(ConfigurationError, match="already a hook's name"):
        AsyncDispatcher(ledger, twice)
    bad = HookConfig("c", "callable", callable="json:dumps", path="hooks[0]")
    with pytest.raises(ConfigurationError, match=r"hooks\[0\]: the sink factory gave .*object"):
        AsyncDispatcher(ledger, [bad], sink_factory=lambda h, s: object())  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="threads"):
        AsyncDispatcher(ledger, [], threads=0)
    with pytest.raises(ConfigurationError, match="expected a Sink or an AsyncSink"):
        as_async_sink(object())


# =========================================================================== deliverer


def event(n: int) -> dict[str, Any]:
    return make_event(USAGE_RECORDED, {"n": n}, source="/tollway/test", id=f"evt_{n}")


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_the_async_deliverer_retries_on_schedule_then_dead_letters(http: Receiver) -> None:
    time = FakeTime()
    sink = ThreadedSink(WebhookSink(http.url, SECRET))
    worker = AsyncDeliverer(
        sink, schedule=RetrySchedule((0.0, 1.0, 2.0), jitter=0.0), timeout=1.0, clock=time,
        sleep=time.sleep,
    )  # fmt: skip
    http.answer(default=("status", 500))
    saved: list[int] = []

    async def checkpoint(state: Any) -> None:
        saved.append(len(state.attempts))

    dead = await worker.deliver(event(1), checkpoint=checkpoint)
    assert isinstance(dead, DeadLetter) and dead.reason == "exhausted"
    assert [a.status for a in dead.attempts] == [500, 500, 500]
    assert time.slept == [1.0, 2.0] and saved == [1, 2, 3]
    http.answer(("status", 500), default=("status", 200))
    state = worker.replay(dead)
    assert await worker.step(state) is None  # attempt 1 fails
    assert await worker.step(state) is None  # not due yet: no attempt
    time.now = state.next_at
    delivered = await worker.step(state)
    assert isinstance(delivered, Delivered) and len(delivered.attempts) == 2
    assert http.ids() == ["evt_1"] * 5
    verify_all(http)


async def test_the_async_callable_sink_bounds_an_attempt() -> None:
    async def slow(message: Message) -> None:
        await asyncio.sleep(5)

    sink = AsyncCallableSink(slow)
    result = await sink.send(Message("m1", b"{}", CONTENT_TYPE, ("m1",)), timeout=0.01)
    assert result == SendResult.failed("timed out after 0.01 s")
    with pytest.raises(ConfigurationError, match="coroutine function"):
        AsyncCallableSink(print)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="expected an AsyncSink"):
        AsyncDeliverer(CallableSink(print))  # type: ignore[arg-type]


COLLECTED: list[Any] = []  # ids from `collect`, Messages from the plain list.append hook


async def collect(message: Message) -> None:
    """A coroutine function named by a callable hook (``test_hooks_async:collect``)."""
    COLLECTED.append(message.id)


async def test_a_callable_hook_naming_a_coroutine_function_is_awaited(
    ledger: AsyncLedger,
) -> None:
    COLLECTED.clear()
    hooks = [
        HookConfig("awaited", "callable", callable="test_hooks_async:collect"),
        HookConfig("threaded", "callable", callable="test_hooks_async:COLLECTED.append"),
    ]
    await ledger.commit([ev(1)], hooks=hooks, now_us=T0)
    async with dispatcher(ledger, hooks, Clock()) as d:
        assert isinstance(d.sink("awaited"), AsyncCallableSink)
        assert isinstance(d.sink("threaded"), ThreadedSink)
        assert await d.run_once() == 2
    assert sorted(type(item).__name__ for item in COLLECTED) == ["Message", "str"]
    assert [item if isinstance(item, str) else item.id for item in COLLECTED] == ["evt-1"] * 2
    assert {m.status for m in await ledger.hook_messages()} == {"delivered"}
