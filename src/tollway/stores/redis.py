"""The Redis stores (standalone, TLS, Cluster): one EVALSHA per step, reloaded on NOSCRIPT.

`RedisStore` and `AsyncRedisStore` differ only in awaiting the client; the keys, arguments,
replies, breaker and journal are shared (`redis_codec`, `breaker`, `journal`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tollway.engine.health import HealthOp, HealthReply
from tollway.engine.step import Reply, Step
from tollway.errors import ConfigurationError, StoreError, StoreUnavailableError
from tollway.metering.entries import REGISTRY, stream_key, warm_slot_tags
from tollway.policy.model import LedgerConfig, StoreConfig
from tollway.stores import redis_codec as codec
from tollway.stores.breaker import Breaker
from tollway.stores.deadline import Deadlines
from tollway.stores.journal import Journal, JournalEntry, default_folder
from tollway.stores.settle import SettleStep

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

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
REGISTER_AGAIN_S = 60.0
"""How often a client registers its event streams again (see `_Common._registered`)."""
logger = logging.getLogger("tollway.store")


def _split(url: str) -> tuple[str, bool]:
    """The URL redis-py understands, and whether it names a cluster."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(
            f"store url: {url!r} has scheme {parts.scheme!r}; expected one of memory, "
            + ", ".join(SCHEMES)
        )
    if not parts.hostname:
        raise ConfigurationError(
            f"store url: {url!r} names no host; expected e.g. redis://127.0.0.1:6379/0"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ConfigurationError(f"store url: {url!r} has a bad port; expected 1-65535")
    cluster = parts.scheme.endswith("+cluster")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigurationError(
            f"store url: {url!r} names database {database!r}; expected a number such as /0"
        )
    if cluster and database not in ("", "0"):
        raise ConfigurationError(
            f"store url: {url!r} names database {database}; a Redis Cluster has only /0"
        )
    scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment)), cluster


def _need_redis() -> None:
    if redis is None:
        raise ConfigurationError(
            "a redis:// store needs the redis client: pip install 'tollway[redis]'"
        )


_UNAVAILABLE: tuple[type[BaseException], ...] = (StoreUnavailableError,)
if redis is not None:
    _UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, StoreUnavailableError)


class _Common:
    """Configuration, breaker and journal shared by the sync and async stores."""

    def __init__(
        self,
        url: str,
        config: StoreConfig,
        clock: Callable[[], int],
        ledger: LedgerConfig | None = None,
    ) -> None:
        _need_redis()
        self.url = url
        self._target, self.cluster = _split(url)
        self.timeout = config.timeout_ms / 1000
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_ms * 1000, clock)
        self.journal = Journal(config.journal or default_folder(url))
        self.clock = clock
        self._deadline_us = config.timeout_ms * 800
        self._offset_us = 0
        ledger = ledger or LedgerConfig()
        self._partitions = ledger.partitions
        if self.cluster and ledger.url is not None and ledger.events:
            warm_slot_tags()  # about 50 ms once: at startup, not on the first request
        self.dedupe_ms = ledger.dedupe_s * 1000
        self._streams: dict[str, str] = {}
        """Each subject's event stream key, as computed (a slot's CRC per subject is dear)."""
        self._registered: set[str] = set()
        """Stream keys this process has put in the registry (before its first entry there);
        forgotten every `REGISTER_AGAIN_S`, so a registry lost by a restarted Redis is
        rebuilt by the clients that write."""
        self._register_by = time.monotonic() + REGISTER_AGAIN_S

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
                subject, cluster=self.cluster, partitions=self._partitions
            )
        return key

    def _client_options(self) -> dict[str, Any]:
        # No client-side retries: a slow store must cost one bounded timeout, then the breaker.
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
        }

    def _blocked(self) -> None:
        wait = self.breaker.allow()
        if wait:
            raise StoreUnavailableError(
                f"store {self.url} is unavailable (circuit open); next try in {wait / 1e6:.3f} s",
                wait / 1e6,
            )

    def _failed(self, exc: BaseException) -> StoreUnavailableError:
        self.breaker.failure()
        wait = self.breaker.cooldown_us / 1e6 if self.breaker.is_open else self.timeout
        return StoreUnavailableError(f"store {self.url} did not answer: {exc}", wait)

    @staticmethod
    def _error(exc: Exception) -> StoreError:
        return StoreError(f"the store refused a command: {exc}")

    def _deadline(self) -> int:
        """When, on the store's clock, a step sent now is no longer worth taking: before the
        client gives up on it (the timeout), with a fifth of the timeout left for the reply.
        A step that arrives later is refused by the script, so a step that timed out here
        has not been counted there, and journaling it cannot count it twice."""
        return self.clock() + self._offset_us + self._deadline_us

    def _learn(self, store_now_us: int) -> None:
        self._offset_us = store_now_us - self.clock()

    def new_hold_id(self) -> str:
        return uuid.uuid4().hex

    def journal_step(self, step: Step) -> None:
        """Record what a fail-open step let through, to replay when the store is back."""
        self.journal.append(codec.journal_entry(step, uuid.uuid4().hex, self.clock()))


class RedisStore(_Common):
    """Synchronous Redis store."""

    def __init__(
        self,
        url: str,
        config: StoreConfig,
        clock: Callable[[], int],
        ledger: LedgerConfig | None = None,
    ) -> None:
        super().__init__(url, config, clock, ledger)
        options = self._client_options()
        self.client: Any
        if self.cluster:
            self.client = redis.cluster.RedisCluster.from_url(self._target, **options)
        else:
            self.client = redis.Redis.from_url(self._target, **options)

    def call_script(self, script: codec.Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA ``script`` (loaded again on NOSCRIPT) under the breaker; errors mapped to
        `StoreUnavailableError` / `StoreError`."""
        self._blocked()
        try:
            try:
                result = self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                self.client.script_load(script.text)
                result = self.client.evalsha(script.sha, len(keys), *keys, *args)
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from exc
        except ResponseError as exc:
            raise self._error(exc) from exc
        if self.breaker.success() or self.journal.pending:
            try:
                self.replay_journal()
            except Exception:  # the step stands; the journal stays pending for the next call
                logger.exception("replaying the journal into %s failed; will retry", self.url)
                self.journal.pending = True
        return result

    def execute(self, step: Step) -> Reply:
        stream = ""
        if step.event or step.call_id:
            stream = self.stream_of(step.subject)
            if step.event and (stream not in self._registered or self._register_due()):
                self._register(stream)
        keys, args = codec.step_call(step, self._deadline(), stream, self.dedupe_ms)
        reply = codec.read_reply(self.call_script(codec.STEP, keys, args))
        if reply.code == codec.EXPIRED:  # our view of the store's clock was off: learn it
            self._learn(reply.now_us)
            keys, args = codec.step_call(step, self._deadline(), stream, self.dedupe_ms)
            reply = codec.read_reply(self.call_script(codec.STEP, keys, args))
        return reply

    def _register(self, stream: str) -> None:
        """List the stream where `tollway worker` looks, before its first entry is written."""
        self.guarded(lambda: self.client.sadd(REGISTRY, stream))
        self._registered.add(stream)

    def held(self, subject: str) -> dict[tuple[str, int], int]:
        """See `MemoryStore.held`: read from the subject's open holds (those not yet expired
        by this process's view of the store's clock)."""
        key = codec.state_key(subject)
        now = self.clock() + self._offset_us
        ids = self.guarded(lambda: self.client.zrangebyscore(f"{key}:holds", f"({now}", "+inf"))
        out: dict[tuple[str, int], int] = {}
        for raw in ids:
            hold = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            entries: dict[Any, Any] = self.guarded(
                lambda h=hold: self.client.hgetall(f"{key}:h:{h}")  # type: ignore[misc]
            )
            for field, packed in entries.items():
                name = field.decode("utf-8") if isinstance(field, bytes) else str(field)
                tag, amount, start = codec.read_held(packed)
                if tag == "w" and amount:
                    out[name, start] = out.get((name, start), 0) + amount
        return out

    def append(self, subject: str, entry: dict[str, str]) -> None:
        """XADD an entry that no step wrote (a route's failover notice) to the subject's
        stream."""
        stream = self.stream_of(subject)
        if stream not in self._registered:
            self._register(stream)
        self.guarded(lambda: self.client.xadd(stream, entry))

    def settle(self, settle: SettleStep) -> Reply:
        stream = ""
        if settle.event:
            stream = self.stream_of(settle.hold.subject)
            if stream not in self._registered:
                self._register(stream)
        keys, args = codec.settle_call(settle, stream, self.dedupe_ms)
        return codec.read_reply(self.call_script(codec.SETTLE, keys, args))

    def health(self, op: HealthOp) -> HealthReply:
        keys, args = codec.health_call(op)
        return codec.read_health(self.call_script(codec.HEALTH, keys, args))

    def replay_journal(self) -> int:
        return self.journal.replay(self._replay_one)

    def _replay_one(self, entry: JournalEntry) -> None:
        stream = ""
        if entry.event:
            stream = self.stream_of(entry.subject)
            if stream not in self._registered:
                self.client.sadd(REGISTRY, stream)
                self._registered.add(stream)
        keys, args = codec.replay_call(entry, stream, self.dedupe_ms)
        try:
            self.client.evalsha(codec.REPLAY.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.client.script_load(codec.REPLAY.text)
            self.client.evalsha(codec.REPLAY.sha, len(keys), *keys, *args)

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

    def assign(self, subject: str, plan: str | None) -> None:
        keys, args = codec.assign_call(subject, plan)
        self.call_script(codec.ASSIGN, keys, args)

    def assigned(self, subject: str) -> str | None:
        raw = self.guarded(lambda: self.client.hget(codec.state_key(subject), "plan"))
        return raw.decode("utf-8") if raw is not None else None

    def delete(self, subject: str, fields: list[str]) -> int:
        if not fields:
            return 0
        key = codec.state_key(subject)
        cleared = self.guarded(lambda: self.client.hdel(key, *fields))
        self.guarded(lambda: self.client.hdel(key, *(field + "@" for field in fields)))
        return int(cleared)

    def ping(self) -> None:
        """Raise `StoreUnavailableError` unless the store answers."""
        self.guarded(self.client.ping)

    def close(self) -> None:
        self.client.close()


class AsyncRedisStore(_Common):
    """asyncio Redis store."""

    def __init__(
        self,
        url: str,
        config: StoreConfig,
        clock: Callable[[], int],
        ledger: LedgerConfig | None = None,
    ) -> None:
        super().__init__(url, config, clock, ledger)
        options = self._client_options()
        options["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 0)
        # Reads are bounded by one watchdog (see deadline.py), not a timer per read.
        options["socket_timeout"] = None
        self._deadlines = Deadlines(self.timeout)
        # A fresh async client raced by many first calls (a cluster client loses connections,
        # and every call would meet NOSCRIPT and load the script) is made ready once, under a
        # lock, before the first command.
        self._ready = False
        self._init_lock: asyncio.Lock | None = None
        self.client: Any
        if self.cluster:
            self.client = redis.asyncio.cluster.RedisCluster.from_url(self._target, **options)
        else:
            self.client = redis.asyncio.Redis.from_url(self._target, **options)

    async def _initialize(self) -> None:
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if self._ready:
                return
            try:
                if self.cluster:
                    await self._deadlines.run(self.client.initialize())
                await self._deadlines.run(self.client.script_load(codec.STEP.text))
            except _UNAVAILABLE as exc:
                raise self._failed(exc) from exc
            self._ready = True

    async def call_script(self, script: codec.Script, keys: list[str], args: list[Any]) -> Any:
        """See `RedisStore.call_script`."""
        self._blocked()
        if not self._ready:
            await self._initialize()
        deadlines = self._deadlines
        token = deadlines.enter()  # inline, not a wrapping coroutine: this is the hot path
        try:
            try:
                result = await self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.client.script_load(script.text)
                result = await self.client.evalsha(script.sha, len(keys), *keys, *args)
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
            try:
                await self.replay_journal()
            except Exception:  # the step stands; the journal stays pending for the next call
                logger.exception("replaying the journal into %s failed; will retry", self.url)
                self.journal.pending = True
        return result

    async def execute(self, step: Step) -> Reply:
        stream = ""
        if step.event or step.call_id:
            stream = self.stream_of(step.subject)
            if step.event and (stream not in self._registered or self._register_due()):
                await self._register(stream)
        keys, args = codec.step_call(step, self._deadline(), stream, self.dedupe_ms)
        reply = codec.read_reply(await self.call_script(codec.STEP, keys, args))
        if reply.code == codec.EXPIRED:  # our view of the store's clock was off: learn it
            self._learn(reply.now_us)
            keys, args = codec.step_call(step, self._deadline(), stream, self.dedupe_ms)
            reply = codec.read_reply(await self.call_script(codec.STEP, keys, args))
        return reply

    async def _register(self, stream: str) -> None:
        await self.guarded(self.client.sadd(REGISTRY, stream))
        self._registered.add(stream)

    async def append(self, subject: str, entry: dict[str, str]) -> None:
        stream = self.stream_of(subject)
        if stream not in self._registered:
            await self._register(stream)
        await self.guarded(self.client.xadd(stream, entry))

    async def settle(self, settle: SettleStep) -> Reply:
        stream = ""
        if settle.event:
            stream = self.stream_of(settle.hold.subject)
            if stream not in self._registered:
                await self._register(stream)
        keys, args = codec.settle_call(settle, stream, self.dedupe_ms)
        return codec.read_reply(await self.call_script(codec.SETTLE, keys, args))

    async def health(self, op: HealthOp) -> HealthReply:
        keys, args = codec.health_call(op)
        return codec.read_health(await self.call_script(codec.HEALTH, keys, args))

    async def replay_journal(self) -> int:
        sent = 0
        for claim in self.journal.claim():
            for entry in claim.entries:
                await self._replay_one(entry)
                sent += 1
        return sent

    async def _replay_one(self, entry: JournalEntry) -> None:
        stream = ""
        if entry.event:
            stream = self.stream_of(entry.subject)
            if stream not in self._registered:
                await self.client.sadd(REGISTRY, stream)
                self._registered.add(stream)
        keys, args = codec.replay_call(entry, stream, self.dedupe_ms)
        try:
            await self.client.evalsha(codec.REPLAY.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.client.script_load(codec.REPLAY.text)
            await self.client.evalsha(codec.REPLAY.sha, len(keys), *keys, *args)

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

    async def assign(self, subject: str, plan: str | None) -> None:
        keys, args = codec.assign_call(subject, plan)
        await self.call_script(codec.ASSIGN, keys, args)

    async def assigned(self, subject: str) -> str | None:
        raw = await self.guarded(self.client.hget(codec.state_key(subject), "plan"))
        return raw.decode("utf-8") if raw is not None else None

    async def delete(self, subject: str, fields: list[str]) -> int:
        if not fields:
            return 0
        key = codec.state_key(subject)
        cleared = await self.guarded(self.client.hdel(key, *fields))
        await self.guarded(self.client.hdel(key, *(field + "@" for field in fields)))
        return int(cleared)

    async def ping(self) -> None:
        await self.guarded(self.client.ping())

    async def aclose(self) -> None:
        await self._deadlines.close()
        await self.client.aclose()
