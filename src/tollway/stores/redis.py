"""The Redis stores (standalone, TLS, Cluster): one EVALSHA per step, reloaded on NOSCRIPT.

Every operation is written once in `_Common`, as a generator flow of `redis_requests` (what
to send, and how to read the answer: `redis_codec`); `RedisStore` answers the requests with
the sync client, `AsyncRedisStore` awaits the async one. Breaker and journal are shared.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from operator import methodcaller
from typing import Any, TypeVar

from tollway.drive import adrive, drive
from tollway.engine.credits import CreditsOp, CreditsReply
from tollway.engine.health import HealthOp, HealthReply
from tollway.engine.replies import Reply
from tollway.engine.settle import SettleStep
from tollway.engine.step import ACQUIRE, Step
from tollway.errors import ConfigurationError, StoreUnavailableError
from tollway.events import REGISTRY, stream_key, warm_slot_tags
from tollway.keyspace import prefixed
from tollway.policy.model import LedgerConfig, StoreConfig
from tollway.stores import redis_codec as codec
from tollway.stores.deadline import Deadlines
from tollway.stores.in_doubt import InDoubt
from tollway.stores.journal import Journal, JournalEntry, default_folder
from tollway.stores.redis_guard import Guard
from tollway.stores.redis_requests import Command, Flow, Request, ScriptCall
from tollway.stores.redis_url import split_url
from tollway.stores.replayer import Replayer

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised only without the extra installed
    redis = None  # type: ignore[assignment]

REGISTER_AGAIN_S = 60.0
"""How often a client registers its event streams again (see `_Common._registered`)."""
logger = logging.getLogger("tollway.store")
_split = split_url  # the name `tollway.metering.streams` imports
_T = TypeVar("_T")


def _need_redis() -> None:
    if redis is None:
        raise ConfigurationError(
            "a redis:// store needs the redis client: pip install 'tollway[redis]'"
        )


_UNAVAILABLE: tuple[type[BaseException], ...] = (StoreUnavailableError,)
if redis is not None:
    _UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, StoreUnavailableError)


LATE_SENDS = 4
"""How many times a step that reaches Redis after its deadline is sent before the store counts
as too slow (each send applies nothing unless it arrives in time)."""


class _Common(Guard):
    """Configuration, journal, streams and every operation's flow, shared by the sync and
    async stores."""

    def __init__(
        self,
        url: str,
        config: StoreConfig,
        clock: Callable[[], int],
        ledger: LedgerConfig | None = None,
    ) -> None:
        _need_redis()
        super().__init__(url, config, clock)
        self._target, self.cluster = split_url(url)
        self.journal = Journal(config.journal or default_folder(url, config.prefix))
        self.doubt = InDoubt(self.journal)
        self.replayer = Replayer(self.journal, self._replay_entry, self._target)
        ledger = ledger or LedgerConfig()
        self._partitions = ledger.partitions
        if self.cluster and ledger.url is not None and ledger.events:
            warm_slot_tags()  # about 50 ms once: at startup, not on the first request
        self.dedupe_ms = ledger.dedupe_s * 1000
        self.prefix = config.prefix
        """Put before every key (see `tollway.keyspace`); "" for none."""
        self.registry = prefixed(self.prefix, REGISTRY)
        self._streams: dict[str, str] = {}
        """Each subject's event stream key, as computed (a slot's CRC per subject is dear)."""
        self._registered: set[str] = set()
        """Stream keys this process has put in the registry (before its first entry there);
        forgotten every `REGISTER_AGAIN_S`, so a registry lost by a restarted Redis is
        rebuilt by the clients that write."""
        self._register_by = time.monotonic() + REGISTER_AGAIN_S
        self.client: Any = self._connect(self._client_options())

    def _connect(self, options: dict[str, Any]) -> Any:
        """The redis-py client (sync or async) for the URL."""
        raise NotImplementedError

    def _register_due(self) -> bool:
        """Whether the registrations are due again (then forgotten, to be made anew)."""
        if time.monotonic() < self._register_by:
            return False
        self._registered.clear()
        self._register_by = time.monotonic() + REGISTER_AGAIN_S
        return True

    def stream_of(self, subject: str) -> str:
        key = self._streams.get(subject)
        if key is None:
            if len(self._streams) >= 100_000:
                self._streams.clear()
            key = self._streams[subject] = stream_key(
                subject, cluster=self.cluster, partitions=self._partitions, prefix=self.prefix
            )
        return key

    def _client_options(self) -> dict[str, Any]:
        # No client-side retries: a slow store must cost one bounded timeout, then the breaker.
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
        }

    def new_hold_id(self) -> str:
        return uuid.uuid4().hex

    def journal_step(self, step: Step) -> None:
        """Record what a fail-open step let through, to replay when the store is back."""
        self.journal.append(codec.journal_entry(step, uuid.uuid4().hex, self.clock()))

    def _call(self, step: Step, stream: str) -> tuple[int, int, tuple[list[str], list[Any]]]:
        """A step's sequence number (0: not an acquire), deadline, and script call."""
        deadline = self._deadline()
        if step.mode != ACQUIRE:
            return (
                0,
                deadline,
                codec.step_call(step, deadline, stream, self.dedupe_ms, prefix=self.prefix),
            )
        seq, ident = self.doubt.begin()
        return (
            seq,
            deadline,
            codec.step_call(step, deadline, stream, self.dedupe_ms, ident, self.prefix),
        )

    def _answered(self, seq: int, raw: list[Any]) -> Reply:
        """The reply of the step sent as ``seq``: settled, and the store's clock learnt."""
        reply = codec.read_reply(raw)
        if seq:
            self.doubt.settle(seq)
        self._sample_clock(reply.now_us)
        return reply

    def _lost(self, step: Step, seq: int, deadline: int, exc: StoreUnavailableError) -> None:
        """No reply to ``step``: journal what must be told to the store when it is back."""
        if step.mode == ACQUIRE:
            self.doubt.lost(step, seq, deadline, exc, self.clock())

    def _replay_entry(self, entry: JournalEntry) -> float:
        """Resolve one journal entry (in the replayer's thread); 0, or seconds to wait."""
        code = drive(self._replay_one(entry), self._replay_send)
        if code < 0:
            return -int(code) / 1e6
        self.doubt.resolved(entry)
        return 0.0

    def _replay_send(self, request: Request) -> Any:
        client = self._replay_client()
        if isinstance(request, ScriptCall):
            return evalsha(client, request.script, request.keys, request.args)
        return request.send(client)

    def _replay_client(self) -> Any:
        """A sync client for the replayer's thread."""
        raise NotImplementedError

    def wait_replayed(self, timeout: float = 10.0) -> bool:
        """Wait until the journal is replayed (True), or for ``timeout`` seconds (False)."""
        return self.replayer.wait(timeout)

    # -- the logic of every operation, once: generator flows of `Request`s -----------------

    def _register(self, stream: str) -> Flow[None]:
        """List the stream where `tollway worker` looks, before its first entry is written."""
        yield Command(lambda client: client.sadd(self.registry, stream))
        self._registered.add(stream)

    def _stream_for(self, subject: str, *, again: bool = False) -> Flow[str]:
        """The subject's stream, registered first if this process has not yet (``again``:
        or if the registrations are due again)."""
        stream = self.stream_of(subject)
        if stream not in self._registered or (again and self._register_due()):
            yield from self._register(stream)
        return stream

    def _stream_ready(self, step: Step) -> str | None:
        """The stream the step writes to ("" for none) when nothing has to be sent first, or
        None when its stream must be registered: then only the flow can send the step."""
        if step.event:
            stream = self.stream_of(step.subject)
            if stream not in self._registered or self._register_due():
                return None
            return stream
        return self.stream_of(step.subject) if step.call_id else ""

    def _execute(self, step: Step, first: Reply | None = None) -> Flow[Reply]:
        """Send the step (``first``: the reply it already had, sent by a face's hot path, see
        `RedisStore.execute`), and once more if it came late with our view of the clock off."""
        stream = ""
        if step.event:
            stream = yield from self._stream_for(step.subject, again=True)
        elif step.call_id:
            stream = self.stream_of(step.subject)
        reply = first
        if reply is None:
            reply = yield from self._send_step(step, stream)
        for _ in range(LATE_SENDS - 1):
            if reply.code != codec.EXPIRED:
                return reply
            # Late: our view of the store's clock was off, or the step waited behind others.
            # It applied nothing, so it is sent again with a deadline from the clock learnt.
            self._learn(reply.now_us)
            reply = yield from self._send_step(step, stream)
        if reply.code == codec.EXPIRED:
            # Late every time: Redis is too slow to answer within the timeout. The limits'
            # on_error decides (a fail-open step is journaled, counted once when Redis keeps up).
            exc = StoreUnavailableError(
                f"store {self.url} is too slow: the step reached it after its deadline "
                f"(timeout {self.timeout * 1000:.0f} ms) {LATE_SENDS} times"
            )
            self._lost(step, 0, 0, exc)
            raise exc
        return reply

    def _send_step(self, step: Step, stream: str) -> Flow[Reply]:
        seq, deadline, (keys, args) = self._call(step, stream)
        try:
            raw = yield ScriptCall(codec.STEP, keys, args)
        except StoreUnavailableError as exc:
            self._lost(step, seq, deadline, exc)
            raise
        return self._answered(seq, raw)

    def _settle(self, settle: SettleStep) -> Flow[Reply]:
        stream = ""
        if settle.event:
            stream = yield from self._stream_for(settle.hold.subject)
        keys, args = codec.settle_call(settle, stream, self.dedupe_ms, self.prefix)
        return codec.read_reply((yield ScriptCall(codec.SETTLE, keys, args)))

    def _health(self, op: HealthOp) -> Flow[HealthReply]:
        keys, args = codec.health_call(op, self.prefix)
        return codec.read_health((yield ScriptCall(codec.HEALTH, keys, args)))

    def _credits(self, op: CreditsOp) -> Flow[CreditsReply]:
        keys, args = codec.credits_call(op, self.prefix)
        return codec.read_credits((yield ScriptCall(codec.CREDITS, keys, args)))

    def _append(self, subject: str, entry: dict[str, str]) -> Flow[None]:
        stream = yield from self._stream_for(subject)
        yield Command(lambda client: client.xadd(stream, entry))

    def _replay_one(self, entry: JournalEntry) -> Flow[int]:
        # Raw calls: a replay runs inside a guarded call, whose breaker it must not touch.
        stream = ""
        if entry.event:
            stream = self.stream_of(entry.subject)
            if stream not in self._registered:
                yield Command(lambda client: client.sadd(self.registry, stream), guarded=False)
                self._registered.add(stream)
        keys, args = codec.replay_call(entry, stream, self.dedupe_ms, self.prefix)
        return int((yield ScriptCall(codec.REPLAY, keys, args, guarded=False)))

    def _assign(self, subject: str, plan: str | None) -> Flow[None]:
        keys, args = codec.assign_call(subject, plan, self.prefix)
        yield ScriptCall(codec.ASSIGN, keys, args)

    def _assigned(self, subject: str) -> Flow[str | None]:
        key = codec.state_key(subject, self.prefix)
        raw = yield Command(lambda client: client.hget(key, "plan"))
        return raw.decode("utf-8") if raw is not None else None

    def _delete(self, subject: str, fields: list[str]) -> Flow[int]:
        if not fields:
            return 0
        key = codec.state_key(subject, self.prefix)
        cleared = yield Command(lambda client: client.hdel(key, *fields))
        yield Command(lambda client: client.hdel(key, *(field + "@" for field in fields)))
        return int(cleared)

    def _held(self, subject: str) -> Flow[dict[tuple[str, int], int]]:
        key = codec.state_key(subject, self.prefix)
        now = self.clock() + self._offset_us
        ids = yield Command(lambda client: client.zrangebyscore(f"{key}:holds", f"({now}", "+inf"))
        out: dict[tuple[str, int], int] = {}
        for raw in ids:
            hold = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            entries = yield Command(methodcaller("hgetall", f"{key}:h:{hold}"))
            for field, packed in entries.items():
                name = field.decode("utf-8") if isinstance(field, bytes) else str(field)
                tag, amount, start = codec.read_held(packed)
                if tag == "w" and amount:
                    out[name, start] = out.get((name, start), 0) + amount
        return out


def evalsha(client: Any, script: codec.Script, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA ``script`` on a sync client, loaded again on NOSCRIPT."""
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script.text)
        return client.evalsha(script.sha, len(keys), *keys, *args)


class RedisStore(_Common):
    """Synchronous Redis store: answers the flows' requests with the sync client."""

    def _connect(self, options: dict[str, Any]) -> Any:
        if self.cluster:
            return redis.cluster.RedisCluster.from_url(self._target, **options)
        return redis.Redis.from_url(self._target, **options)

    def _evalsha(self, script: codec.Script, keys: list[str], args: list[Any]) -> Any:
        return evalsha(self.client, script, keys, args)

    def _replay_client(self) -> Any:
        return self.client

    def call_script(self, script: codec.Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA ``script`` (loaded again on NOSCRIPT) under the breaker; errors mapped to
        `StoreUnavailableError` / `StoreError`."""
        self._blocked()
        try:
            if not self._timed:
                self._read_clock(self.client.time())
            result = self._evalsha(script, keys, args)
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from exc
        except ResponseError as exc:
            raise self._error(exc) from exc
        if self.breaker.success() or self.journal.pending:
            self.replayer.kick()  # in the background: no caller waits for a replay
        return result

    def guarded(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (plain commands on `client`) under the breaker; errors mapped to
        `StoreUnavailableError` / `StoreError`."""
        self._blocked()
        try:
            result = fn()
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from exc
        except RedisError as exc:
            raise self._error(exc) from exc
        self.breaker.success()
        return result

    def send(self, request: Request) -> Any:
        """The answer to one request."""
        if isinstance(request, ScriptCall):
            if request.guarded:
                return self.call_script(request.script, request.keys, request.args)
            return self._evalsha(request.script, request.keys, request.args)
        if request.guarded:
            return self.guarded(lambda: request.send(self.client))
        return request.send(self.client)

    def _run(self, flow: Flow[_T]) -> _T:
        return drive(flow, self.send)

    def execute(self, step: Step) -> Reply:
        # The hot path, every acquire: one script call and no generator when the stream is
        # registered and the reply in time; anything else is the shared flow's.
        stream = self._stream_ready(step)
        if stream is None:
            return self._run(self._execute(step))
        seq, deadline, (keys, args) = self._call(step, stream)
        try:
            raw = self.call_script(codec.STEP, keys, args)
        except StoreUnavailableError as exc:
            self._lost(step, seq, deadline, exc)
            raise
        reply = self._answered(seq, raw)
        return reply if reply.code != codec.EXPIRED else self._run(self._execute(step, reply))

    def held(self, subject: str) -> dict[tuple[str, int], int]:
        """See `MemoryStore.held`: read from the subject's open holds (those not yet expired
        by this process's view of the store's clock)."""
        return self._run(self._held(subject))

    def append(self, subject: str, entry: dict[str, str]) -> None:
        """XADD an entry that no step wrote (a route's failover notice) to the subject's
        stream."""
        self._run(self._append(subject, entry))

    def settle(self, settle: SettleStep) -> Reply:
        return self._run(self._settle(settle))

    def health(self, op: HealthOp) -> HealthReply:
        return self._run(self._health(op))

    def credits(self, op: CreditsOp) -> CreditsReply:
        return self._run(self._credits(op))

    def assign(self, subject: str, plan: str | None) -> None:
        self._run(self._assign(subject, plan))

    def assigned(self, subject: str) -> str | None:
        return self._run(self._assigned(subject))

    def delete(self, subject: str, fields: list[str]) -> int:
        return self._run(self._delete(subject, fields))

    def ping(self) -> None:
        """Raise `StoreUnavailableError` unless the store answers."""
        self.guarded(self.client.ping)

    def close(self) -> None:
        self.replayer.close()
        self.journal.close()
        self.client.close()


class AsyncRedisStore(_Common):
    """asyncio Redis store: awaits the same flows' requests on the async client."""

    def _connect(self, options: dict[str, Any]) -> Any:
        options["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 0)
        # Reads are bounded by one watchdog (see deadline.py), not a timer per read.
        options["socket_timeout"] = None
        self._deadlines = Deadlines(self.timeout)
        # A fresh async client raced by many first calls (a cluster client loses connections,
        # and every call would meet NOSCRIPT and load the script) is made ready once, under a
        # lock, before the first command.
        self._ready = False
        self._init_lock: asyncio.Lock | None = None
        self._sync_client: Any = None
        if self.cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(self._target, **options)
        return redis.asyncio.Redis.from_url(self._target, **options)

    async def _initialize(self) -> None:
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if self._ready:
                return
            try:
                if self.cluster:
                    await self._deadlines.run(self.client.initialize())
                self._read_clock(await self._deadlines.run(self.client.time()))
                await self._deadlines.run(self.client.script_load(codec.STEP.text))
            except _UNAVAILABLE as exc:
                raise self._failed(exc) from exc
            self._ready = True

    async def _evalsha(self, script: codec.Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.client.script_load(script.text)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def call_script(self, script: codec.Script, keys: list[str], args: list[Any]) -> Any:
        """See `RedisStore.call_script`."""
        self._blocked()
        if not self._ready:
            await self._initialize()
        deadlines = self._deadlines
        token = deadlines.enter()  # inline, not a wrapping coroutine: this is the hot path
        try:
            result = await self._evalsha(script, keys, args)
        except asyncio.CancelledError:
            if deadlines.leave(token):
                raise self._failed(deadlines.expired()) from None
            raise
        except _UNAVAILABLE as exc:
            deadlines.leave(token)
            raise self._failed(exc) from exc
        except ResponseError as exc:
            deadlines.leave(token)
            raise self._error(exc) from exc
        deadlines.leave(token)
        if self.breaker.success() or self.journal.pending:
            self.replayer.kick()  # in a thread: the event loop never runs a replay
        return result

    async def guarded(self, coro: Any) -> Any:
        """Await ``coro`` (a command of `client`) under the deadline and the breaker; errors
        mapped as `RedisStore.guarded` maps them."""
        try:
            self._blocked()
        except StoreUnavailableError:
            coro.close()  # never sent: close it so it is not reported as never awaited
            raise
        try:
            if not self._ready:
                await self._initialize()
            result = await self._deadlines.run(coro)
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from exc
        except RedisError as exc:
            raise self._error(exc) from exc
        self.breaker.success()
        return result

    async def send(self, request: Request) -> Any:
        """The answer to one request."""
        if isinstance(request, ScriptCall):
            if request.guarded:
                return await self.call_script(request.script, request.keys, request.args)
            return await self._evalsha(request.script, request.keys, request.args)
        if request.guarded:
            return await self.guarded(request.send(self.client))
        return await request.send(self.client)

    async def _run(self, flow: Flow[_T]) -> _T:
        return await adrive(flow, self.send)

    async def execute(self, step: Step) -> Reply:
        stream = self._stream_ready(step)  # the hot path of `RedisStore.execute`
        if stream is None:
            return await self._run(self._execute(step))
        seq, deadline, (keys, args) = self._call(step, stream)
        try:
            raw = await self.call_script(codec.STEP, keys, args)
        except StoreUnavailableError as exc:
            self._lost(step, seq, deadline, exc)
            raise
        reply = self._answered(seq, raw)
        if reply.code != codec.EXPIRED:
            return reply
        return await self._run(self._execute(step, reply))

    async def held(self, subject: str) -> dict[tuple[str, int], int]:
        """See `RedisStore.held`."""
        return await self._run(self._held(subject))

    async def append(self, subject: str, entry: dict[str, str]) -> None:
        await self._run(self._append(subject, entry))

    async def settle(self, settle: SettleStep) -> Reply:
        return await self._run(self._settle(settle))

    async def health(self, op: HealthOp) -> HealthReply:
        return await self._run(self._health(op))

    async def credits(self, op: CreditsOp) -> CreditsReply:
        return await self._run(self._credits(op))

    def _replay_client(self) -> Any:
        if self._sync_client is None:  # the replayer's thread has a sync client of its own
            options = self._client_options()
            if self.cluster:
                self._sync_client = redis.cluster.RedisCluster.from_url(self._target, **options)
            else:
                self._sync_client = redis.Redis.from_url(self._target, **options)
        return self._sync_client

    async def wait_replayed_async(self, timeout: float = 10.0) -> bool:
        """`wait_replayed` without holding the event loop."""
        return await asyncio.to_thread(self.replayer.wait, timeout)

    async def assign(self, subject: str, plan: str | None) -> None:
        await self._run(self._assign(subject, plan))

    async def assigned(self, subject: str) -> str | None:
        return await self._run(self._assigned(subject))

    async def delete(self, subject: str, fields: list[str]) -> int:
        return await self._run(self._delete(subject, fields))

    async def ping(self) -> None:
        await self.guarded(self.client.ping())

    async def aclose(self) -> None:
        await asyncio.to_thread(self.replayer.close)
        self.journal.close()
        if self._sync_client is not None:
            self._sync_client.close()
        await self._deadlines.close()
        await self.client.aclose()
