"""A SQLite cache of geocoding answers, so one address is never paid for twice.

`ResultCache` keeps each answer under ``(namespace, normalize_query(query))``. The namespace
keeps apart answers that must not mix (say, one per route or per set of provider options).
"Nothing found" answers are kept too: they were paid for as well. A provider whose terms
forbid storing its results (``stores_results=False``, e.g. Mapbox temporary geocoding) has
nothing of its answers written. (`tollway.outbound.geocode.lookup.CachedLookup` puts the
cache in front of a fetch function, with in-flight de-duplication.)

Sharing: one `ResultCache` may be used by every thread of a process, and several processes on
one machine may open the same file (each its own `ResultCache`; one opened before a fork must
not be used in the child). Files on network file systems are not supported (SQLite's WAL mode
needs shared memory).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tollway.errors import CacheError, InvalidArgumentError
from tollway.outbound.geocode.result import GeocodeResult

__all__ = [
    "SCHEMA_VERSION",
    "CacheError",
    "CacheHit",
    "CacheStats",
    "ResultCache",
    "normalize_query",
]

SCHEMA_VERSION = 1
"""The layout this code writes, kept in the file's ``PRAGMA user_version`` (0: a new file)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS geocode_results (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,  -- normalize_query(query)
    provider   TEXT NOT NULL,
    result     TEXT,           -- GeocodeResult.to_dict() as JSON; NULL: "nothing found"
    stored_at  REAL NOT NULL,  -- seconds since the epoch
    expires_at REAL,           -- NULL: never
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID
"""


def normalize_query(query: str) -> str:
    """The cache key of ``query``: Unicode NFKC, casefolded, whitespace collapsed and stripped.

    NFKC folds compatibility forms (full-width letters, ligatures, non-breaking spaces);
    casefold is a stronger ``lower`` (``"Straße"`` and ``"STRASSE"`` meet); NFKC runs again
    because casefolding can leave text that is no longer NFKC. Runs of any Unicode
    whitespace become one space. Punctuation is kept: ``"1 Main St, Paris"`` and
    ``"1 Main St Paris"`` are different keys.
    """
    if not isinstance(query, str):
        raise InvalidArgumentError(
            f"query: {query!r} ({type(query).__name__}); expected a str (the address)"
        )
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", query).casefold())
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A cached answer: a match (``result``) or the provider's "nothing found" (``None``)."""

    result: GeocodeResult | None
    provider: str
    stored_at: float
    """When it was stored (seconds since the epoch, by the cache's clock)."""
    expires_at: float | None
    """When it stops being served (``None``: never)."""

    @property
    def matched(self) -> bool:
        """True when the provider found something, False when it answered "nothing found"."""
        return self.result is not None


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What this `ResultCache` did since it was opened (this process only)."""

    hits: int
    misses: int
    writes: int
    """Answers stored."""
    not_stored: int
    """Answers not stored because the provider's terms forbid it (``stores_results=False``)."""


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise InvalidArgumentError(
            f"namespace: {namespace!r} ({type(namespace).__name__}); expected a str"
        )
    return namespace


def check_ttl(ttl_s: object) -> float | None:
    if ttl_s is None:
        return None
    if (
        isinstance(ttl_s, bool)
        or not isinstance(ttl_s, (int, float))
        or not math.isfinite(ttl_s)
        or ttl_s <= 0
    ):
        raise InvalidArgumentError(
            f"ttl_s: {ttl_s!r}; expected a finite number of seconds > 0, or None for no expiry"
        )
    return float(ttl_s)


class ResultCache:
    """Geocoding answers in a SQLite file (or ``":memory:"``), shared by threads and processes.

    ``clock`` gives the time in seconds since the epoch (wall-clock time, since entries
    outlive the process); inject one in tests. ``busy_timeout_s`` is how long a write waits
    for another process's write to finish before failing with `CacheError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgumentError(
                f"path: {path!r} ({type(path).__name__}); expected a file path or ':memory:'"
            )
        if not callable(clock):
            raise InvalidArgumentError(f"clock: {clock!r}; expected a function returning seconds")
        if (
            isinstance(busy_timeout_s, bool)
            or not isinstance(busy_timeout_s, (int, float))
            or not busy_timeout_s >= 0
        ):
            raise InvalidArgumentError(
                f"busy_timeout_s: {busy_timeout_s!r}; expected a number of seconds >= 0"
            )
        self.path = os.fspath(path)
        self._clock = clock
        self._busy_timeout_s = float(busy_timeout_s)
        self._pid = os.getpid()
        # One connection behind a lock, rather than one per thread: cache calls take
        # microseconds next to a provider's round trip, so threads barely wait; it works for
        # ":memory:" too (where each connection would be a separate database); and close()
        # has one connection to close. Processes are kept apart by SQLite's own file locks:
        # WAL mode (readers never block the writer, nor it them), a busy timeout, and a
        # single statement (one short transaction) per call.
        self._lock = threading.Lock()
        self._hits = self._misses = self._writes = self._not_stored = 0
        try:
            if self.path != ":memory:" and not self.path.startswith("file:"):
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the folder of the cache file {self.path!r}: {exc}"
            ) from None
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,  # autocommit: each statement is its own transaction
                check_same_thread=False,  # the lock above serializes the threads
            )
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the cache file {self.path!r}: {exc}") from exc
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # ------------------------------------------------------------------ schema

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            self._check_version(conn)  # before changing anything in a file we may refuse
            if self.path != ":memory:":
                self._enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # never corrupts in WAL; fsyncs less
            conn.execute("BEGIN IMMEDIATE")  # one process creates or migrates, others wait
            try:
                version = self._check_version(conn)
                if version == 0:
                    conn.execute(_SCHEMA)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                # A later layout migrates here, from each older `version` in turn.
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # busy past the timeout, read-only, ...
            raise CacheError(f"cannot prepare the cache file {self.path!r}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise CacheError(
                f"{self.path!r} is not a usable cache file (not a SQLite database, or "
                f"damaged): {exc}"
            ) from exc

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL (persistent: once per file) answers "database is locked" at once
        # while another process holds the file, without waiting for the busy timeout; so
        # wait here, up to that same timeout.
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.001
        while True:
            try:
                if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _check_version(self, conn: sqlite3.Connection) -> int:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"{self.path!r} was written by a newer tollway (cache schema version "
                f"{version}); this version reads schema version {SCHEMA_VERSION} and older"
            )
        return version

    @contextmanager
    def _use(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection, held under the lock; SQLite errors come out as `CacheError`."""
        with self._lock:
            if self._conn is None:
                raise CacheError(f"the cache {self.path!r} is closed; cannot {doing}")
            if os.getpid() != self._pid:
                raise CacheError(
                    f"the cache {self.path!r} was opened in process {self._pid} and is used "
                    f"in process {os.getpid()}; open a ResultCache in each process"
                )
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise CacheError(f"the cache {self.path!r} failed to {doing}: {exc}") from exc

    # ------------------------------------------------------------------ entries

    @staticmethod
    def key(query: str) -> str:
        """``normalize_query(query)``, refusing a query with nothing left after it."""
        key = normalize_query(query)
        if not key:
            raise InvalidArgumentError(
                f"query: {query!r}; expected an address (nothing is left after normalization)"
            )
        return key

    def get(self, query: str, namespace: str = "") -> CacheHit | None:
        """The live answer stored for ``query`` in ``namespace``, or None (a miss)."""
        hit = self.read(self.key(query), namespace)
        with self._lock:
            if hit is None:
                self._misses += 1
            else:
                self._hits += 1
        return hit

    def read(self, key: str, namespace: str = "") -> CacheHit | None:
        """`get` by an already normalized ``key`` (`ResultCache.key`), counted neither as a hit
        nor as a miss: for a second look at a key just missed (in-flight de-duplication)."""
        namespace = check_namespace(namespace)
        now = self._clock()
        with self._use("get") as conn:
            row = conn.execute(
                "SELECT provider, result, stored_at, expires_at FROM geocode_results"
                " WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (namespace, key, now),
            ).fetchone()
        if row is None:
            return None
        provider, data, stored_at, expires_at = row
        result = None
        if data is not None:
            try:
                result = GeocodeResult.from_dict(json.loads(data))
            except (ValueError, TypeError, KeyError) as exc:
                raise CacheError(
                    f"the cache {self.path!r} holds a damaged entry for {key!r} in namespace "
                    f"{namespace!r}: {exc}"
                ) from exc
        return CacheHit(result, provider, stored_at, expires_at)

    def put(
        self,
        query: str,
        result: GeocodeResult | None,
        *,
        provider: str,
        namespace: str = "",
        stores_results: bool = True,
        ttl_s: float | None = None,
    ) -> bool:
        """Store ``result`` (None: the provider found nothing) for ``query``; True if stored.

        With ``stores_results=False`` (the provider's terms forbid storing its results)
        nothing at all is written and False is returned. ``ttl_s`` seconds after now the
        entry stops being served; None keeps it until deleted. A newer answer for the same
        key replaces the older one.
        """
        key = self.key(query)
        check_namespace(namespace)
        ttl = check_ttl(ttl_s)
        if not isinstance(provider, str) or not provider:
            raise InvalidArgumentError(
                f"provider: {provider!r}; expected the provider's name (a non-empty str)"
            )
        if result is not None and not isinstance(result, GeocodeResult):
            raise InvalidArgumentError(
                f"result: {result!r} ({type(result).__name__}); "
                "expected a GeocodeResult, or None for no match"
            )
        if not isinstance(stores_results, bool):
            raise InvalidArgumentError(f"stores_results: {stores_results!r}; expected a bool")
        if not stores_results:
            with self._use("put"):
                self._not_stored += 1
            return False
        data = None
        if result is not None:
            try:
                data = json.dumps(
                    result.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":")
                )
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(
                    f"result: {result!r}; expected JSON-ready fields (finite lat/lon, a JSON "
                    f"raw): {exc}"
                ) from exc
        now = self._clock()
        with self._use("put") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO geocode_results"
                " (namespace, key, provider, result, stored_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (namespace, key, provider, data, now, None if ttl is None else now + ttl),
            )
            self._writes += 1
        return True

    def delete(self, query: str, namespace: str = "") -> bool:
        """Forget the answer for ``query`` in ``namespace``; True if there was one."""
        key = self.key(query)
        check_namespace(namespace)
        with self._use("delete") as conn:
            cursor = conn.execute(
                "DELETE FROM geocode_results WHERE namespace = ? AND key = ?", (namespace, key)
            )
        return cursor.rowcount > 0

    def clear(self, namespace: str | None = None) -> int:
        """Forget every answer in ``namespace`` (None: in all of them); how many were removed."""
        with self._use("clear") as conn:
            if namespace is None:
                cursor = conn.execute("DELETE FROM geocode_results")
            else:
                cursor = conn.execute(
                    "DELETE FROM geocode_results WHERE namespace = ?",
                    (check_namespace(namespace),),
                )
        return cursor.rowcount

    def purge_expired(self) -> int:
        """Remove the expired entries (they are misses already); how many were removed."""
        now = self._clock()
        with self._use("purge") as conn:
            cursor = conn.execute(
                "DELETE FROM geocode_results WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            )
        return cursor.rowcount

    def __len__(self) -> int:
        """Live (unexpired) entries, in every namespace."""
        now = self._clock()
        with self._use("count") as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM geocode_results WHERE expires_at IS NULL OR expires_at > ?",
                (now,),
            ).fetchone()
        return int(row[0])

    def __bool__(self) -> bool:
        return True  # an empty cache is still a cache: `cache or other` must not pick `other`

    def stats(self) -> CacheStats:
        """Hits, misses and writes of this `ResultCache` since it was opened."""
        with self._lock:
            return CacheStats(self._hits, self._misses, self._writes, self._not_stored)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the file (idempotent); later calls raise `CacheError`."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"ResultCache({self.path!r}, {state})"
