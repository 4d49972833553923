"""The event streams as a drain sees them: one consumer group over every stream that may hold
entries, on a standalone Redis or a Redis Cluster.

Every command but the blocking read goes through a non-transactional pipeline: on a standalone
Redis that is one round trip, on a cluster redis-py splits it per node (keys of different slots
cannot share one command, but they can share a round trip to their node).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tollway.errors import ConfigurationError
from tollway.events import REGISTRY
from tollway.keyspace import prefixed

try:
    import redis
    import redis.cluster
    from redis.exceptions import ResponseError
except ImportError:  # pragma: no cover - exercised only without the extra installed
    redis = None  # type: ignore[assignment]

__all__ = ["BAD_STREAM", "GROUP", "Entry", "Streams", "connect"]

GROUP = "tollway"
"""The consumer group every drain worker reads through."""

BAD_STREAM = "tw:events:bad"
"""Where entries that are not tollway events are parked, with the reason (never lost)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: ``fields`` is None for an entry deleted while pending."""

    stream: str
    id: str
    fields: Mapping[bytes, bytes] | None


def connect(url: str, *, timeout_s: float = 5.0) -> tuple[Any, bool]:
    """A redis-py client for a store URL (``redis://``, ``rediss://``, ``redis+cluster://``)
    and whether it is a cluster. ``timeout_s`` must outlast a blocking read."""
    from tollway.stores.redis import _split

    if redis is None:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "tollway worker needs the redis client: pip install 'tollway[redis]'"
        )
    target, cluster = _split(url)
    options = {"socket_timeout": timeout_s, "socket_connect_timeout": min(timeout_s, 5.0)}
    if cluster:
        return redis.cluster.RedisCluster.from_url(target, **options), True
    return redis.Redis.from_url(target, **options), False


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _after(entry_id: str) -> str:
    """The smallest id above ``entry_id`` (``5-3`` → ``5-4``)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def is_nogroup(exc: BaseException) -> bool:
    """Redis lost the group (restarted without its data) or the stream itself."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


class Streams:
    """The event streams of one store, read through consumer group `GROUP` as ``consumer``."""

    def __init__(
        self,
        client: Any,
        *,
        cluster: bool,
        partitions: int,
        consumer: str,
        group: str = GROUP,
        prefix: str = "",
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.consumer = consumer
        self.group = group
        self.registry = prefixed(prefix, REGISTRY)
        """The registry of this namespace's streams (``[store] prefix``): only its own."""
        self.bad_stream = prefixed(prefix, BAD_STREAM)
        # A standalone store's partitions are read even before a client registers them.
        self._fixed = (
            [] if cluster else [prefixed(prefix, f"tw:events:{n}") for n in range(partitions)]
        )
        self.keys: list[str] = list(self._fixed)
        self._grouped: set[str] = set()
        self._ever_registered: set[str] = set()
        """Every stream seen in the registry: one the registry loses is put back."""

    # ------------------------------------------------------------------ keys and groups
    def discover(self) -> list[str]:
        """Read the registry (and the standalone partitions) into `keys`; streams known before
        stay known, and are registered again if the registry lost them."""
        registered = {_text(key) for key in self.client.smembers(self.registry)}
        lost = self._ever_registered - registered
        if lost:  # Redis lost the registry (restarted without it): put back what we knew
            self.client.sadd(self.registry, *sorted(lost))
        self._ever_registered |= registered
        self.keys = sorted(set(self._fixed) | self._ever_registered)
        return self.keys

    def refresh(self) -> list[str]:
        """`discover`, and make sure every stream has the group. Returns the new keys."""
        new = [key for key in self.discover() if key not in self._grouped]
        self.ensure_groups(new)
        return new

    def leave(self) -> None:
        """Remove this consumer from the groups where it has nothing pending (a one-off
        drain, like ``reconcile --drain-first``, leaves no trace). Never where it has: a
        deleted consumer's pending entries could not be claimed any more."""
        keys = list(self._grouped)
        held = self._pipelined(
            keys,
            lambda pipe, key: pipe.xpending_range(
                key, self.group, "-", "+", 1, consumername=self.consumer
            ),
            missing=[1],
        )
        empty = [key for key, got in zip(keys, held, strict=True) if not got]
        self._pipelined(
            empty,
            lambda pipe, key: pipe.xgroup_delconsumer(key, self.group, self.consumer),
            missing=0,
        )

    def ensure_groups(self, keys: Iterable[str]) -> None:
        """``XGROUP CREATE key GROUP 0 MKSTREAM``: from the first entry, so a stream created
        before its group loses nothing; an existing group (BUSYGROUP) is kept as it is."""
        keys = list(keys)
        if not keys:
            return
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.xgroup_create(key, self.group, "0", mkstream=True)
        for key, result in zip(keys, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
            self._grouped.add(key)

    def forget_groups(self) -> None:
        """After NOGROUP or a lost connection: Redis may have lost its data; make sure of
        every group again before the next read."""
        self._grouped.clear()

    # ------------------------------------------------------------------ reading
    def read_own(self, cursors: dict[str, str], count: int) -> list[Entry]:
        """This consumer's own pending entries after each stream's cursor (``0`` first): what a
        previous run of this consumer read and did not acknowledge. A stream with none left
        is dropped from ``cursors``."""
        keys = [key for key in self.keys if key in cursors]
        replies = self._pipelined(
            keys,
            lambda pipe, key: pipe.xreadgroup(
                self.group, self.consumer, {key: cursors[key]}, count=count
            ),
        )
        out: list[Entry] = []
        for key, reply in zip(keys, replies, strict=True):
            got = _entries(key, reply[0][1] if reply else [])
            if got:
                cursors[key] = got[-1].id
                out.extend(got)
            else:
                del cursors[key]
        return out

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Entries never delivered to the group (``>``). Standalone: one read over every
        stream, blocking up to ``block_ms``; cluster: one read per stream, not blocking."""
        if not self.keys:
            return []
        if not self.cluster:
            reply = self.client.xreadgroup(
                self.group,
                self.consumer,
                dict.fromkeys(self.keys, ">"),
                count=count,
                block=block_ms or None,
            )
            return [e for key, items in reply or [] for e in _entries(_text(key), items)]
        replies = self._pipelined(
            self.keys,
            lambda pipe, key: pipe.xreadgroup(self.group, self.consumer, {key: ">"}, count=count),
        )
        return [
            e
            for key, r in zip(self.keys, replies, strict=True)
            if r
            for e in _entries(key, r[0][1])
        ]

    def claim(self, min_idle_ms: int, count: int, cursors: dict[str, str]) -> list[Entry]:
        """Take over entries pending longer than ``min_idle_ms`` in another consumer (a dead
        worker's), from each stream's scan cursor; the cursor moves on (``0-0``: done)."""
        keys = list(self.keys)
        replies = self._pipelined(
            keys,
            lambda pipe, key: pipe.xautoclaim(
                key,
                self.group,
                self.consumer,
                min_idle_ms,
                start_id=cursors.get(key, "0-0"),
                count=count,
            ),
        )
        out: list[Entry] = []
        for key, reply in zip(keys, replies, strict=True):
            cursors[key] = _text(reply[0])
            out.extend(_entries(key, reply[1]))
        return out

    # ------------------------------------------------------------------ writing
    def ack(self, ids: Mapping[str, list[str]]) -> None:
        keys = [key for key, got in ids.items() if got]
        self._pipelined(keys, lambda pipe, key: pipe.xack(key, self.group, *ids[key]))

    def park(self, entries: Iterable[tuple[Entry, str]]) -> int:
        """Copy entries that are not events to `bad_stream` (`BAD_STREAM`), each with its
        stream, id, reason and original fields (prefixed ``f:``)."""
        parked = list(entries)
        if not parked:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for entry, reason in parked:
            fields: dict[Any, Any] = {"stream": entry.stream, "id": entry.id, "reason": reason}
            for name, value in (entry.fields or {}).items():
                fields[b"f:" + (name if isinstance(name, bytes) else str(name).encode())] = value
            pipe.xadd(self.bad_stream, fields)
        pipe.execute()
        return len(parked)

    def trim(self) -> int:
        """``XTRIM MINID`` each stream up to the oldest entry some group still needs (its
        oldest pending entry, else the one after its last delivered): never an entry that is
        unacknowledged or undelivered. Returns how many entries were removed."""
        keys = list(self.keys)
        infos = self._pipelined(keys, lambda pipe, key: pipe.xinfo_groups(key), missing=[])
        pending = [
            (key, _text(g["name"])) for key, gs in zip(keys, infos, strict=True) for g in gs
            if g["pending"]
        ]  # fmt: skip
        oldest: dict[tuple[str, str], str] = {}
        if pending:
            summaries = self._pipelined(pending, lambda pipe, kg: pipe.xpending(kg[0], kg[1]))
            for kg, summary in zip(pending, summaries, strict=True):
                if summary["min"] is not None:
                    oldest[kg] = _text(summary["min"])
        bounds: dict[str, str] = {}
        for key, groups in zip(keys, infos, strict=True):
            if not groups:
                continue  # a stream nobody reads yet: keep it all
            floor: str | None = None
            for g in groups:
                name = _text(g["name"])
                need = oldest.get((key, name)) or _after(_text(g["last-delivered-id"]))
                if floor is None or _order(need) < _order(floor):
                    floor = need
            if floor is not None and _order(floor) > (0, 1):
                bounds[key] = floor
        removed = self._pipelined(
            list(bounds),
            lambda pipe, key: pipe.xtrim(key, minid=bounds[key], approximate=False),
        )
        return sum(int(n) for n in removed)

    def prune(self, idle_ms: int) -> int:
        """Remove the group's consumers that hold nothing and were idle for ``idle_ms`` (the
        names of workers that died or stopped: a killed worker never leaves), so the group's
        consumer list stays short. One holding pending entries is kept: it is claimed first."""
        keys = list(self.keys)
        infos = self._pipelined(
            keys, lambda pipe, key: pipe.xinfo_consumers(key, self.group), missing=[]
        )
        gone = [
            (key, _text(c["name"]))
            for key, consumers in zip(keys, infos, strict=True)
            for c in consumers
            if not c["pending"] and c["idle"] >= idle_ms and _text(c["name"]) != self.consumer
        ]
        self._pipelined(gone, lambda pipe, kc: pipe.xgroup_delconsumer(kc[0], self.group, kc[1]))
        return len(gone)

    # ------------------------------------------------------------------ watching
    def backlog(self) -> int:
        """Entries not yet committed by the group: pending (read, not acknowledged) plus
        undelivered. A stream without the group counts all its entries."""
        keys = list(self.keys)
        infos = self._pipelined(keys, lambda pipe, key: pipe.xinfo_groups(key), missing=[])
        total = 0
        unknown: list[tuple[str, str]] = []
        for key, groups in zip(keys, infos, strict=True):
            mine = [g for g in groups if _text(g["name"]) == self.group]
            if not mine:
                unknown.append((key, "-"))
                continue
            group = mine[0]
            total += int(group["pending"])
            lag = group.get("lag")
            if lag is None:  # Redis cannot tell (entries deleted): count past the cursor
                unknown.append((key, "(" + _text(group["last-delivered-id"])))
            else:
                total += int(lag)
        if unknown:
            counts = self._pipelined(
                unknown,
                lambda pipe, kc: pipe.xlen(kc[0]) if kc[1] == "-" else pipe.xrange(kc[0], kc[1]),
            )
            total += sum(n if isinstance(n, int) else len(n) for n in counts)
        return total

    # ------------------------------------------------------------------ plumbing
    def _pipelined(self, items: list[Any], add: Any, *, missing: Any = None) -> list[Any]:
        """One command per item in one pipeline; errors raise, except a missing stream
        (``no such key``), which answers ``missing`` when given."""
        if not items:
            return []
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            add(pipe, item)
        results = pipe.execute(raise_on_error=False)
        out = []
        for result in results:
            if isinstance(result, Exception):
                if missing is not None and "no such key" in str(result):
                    out.append(missing)
                    continue
                raise result
            out.append(result)
        return out


def _entries(stream: str, items: Iterable[Any]) -> list[Entry]:
    return [Entry(stream, _text(entry_id), fields or None) for entry_id, fields in items or ()]
