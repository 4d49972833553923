"""Shared pieces: what a benchmark subject is, the limits used, and loading tollway."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# One limit: 10**9 per minute. Three limits: 10**7/s, 10**8/h, 10**9/day. Nothing is ever denied.
ONE_PER_MINUTE = 10**9
THREE = (10**7, 10**8, 10**9)

FLOOR, TOLLWAY, PEER = "floor", "tollway", "peer"


@dataclass(frozen=True)
class Ctx:
    url: str
    key: str


@dataclass(frozen=True)
class Subject:
    """``setup(ctx)`` returns ``(call, close)`` or ``(call, close, stats)``; ``call()`` is truthy
    when the hit is allowed; ``stats()`` returns extra fields for the record (read after timing).

    For async groups ``setup`` is a coroutine function and ``call``/``close`` return awaitables.
    """

    name: str
    kind: str
    setup: Callable[[Ctx], Any]


Setup = Callable[[Ctx], Any]


class Unavailable(Exception):
    """The subject cannot run here (tollway not importable yet, say); reported, not fatal."""


def closer(*fns: Callable[[], object]) -> Callable[[], None]:
    def close() -> None:
        for fn in fns:
            try:
                fn()
            except Exception as exc:
                print(f"bench: close failed: {exc!r}", file=sys.stderr)

    return close


# --- tollway -------------------------------------------------------------------------------

# tollway caps a rate at one unit per microsecond (1_000_000/s); the burst keeps it from
# ever denying at benchmark speeds.
RATE_LIMIT = {"name": "burst", "rate": "1000000/s", "burst": 10000000}
HOURLY = {"name": "hourly", "quota": "100000000/hour"}
DAILY = {"name": "daily", "budget": "1000000.00 USD/day"}


def tollway_call(acquire: Callable[[str, str], Any], key: str) -> tuple[Any, Any]:
    """A sync call that also counts degraded (fail-open/closed, store not asked) decisions."""
    degraded = [0]

    def call() -> bool:
        d = acquire(key, "call")
        if d.degraded:
            degraded[0] += 1
        return bool(d.allowed)

    return call, lambda: {"degraded": degraded[0]}


def tollway_acall(acquire: Callable[[str, str], Any], key: str) -> tuple[Any, Any]:
    degraded = [0]

    async def call() -> bool:
        d = await acquire(key, "call")
        if d.degraded:
            degraded[0] += 1
        return bool(d.allowed)

    return call, lambda: {"degraded": degraded[0]}


def tollway_policy(three: bool) -> dict[str, Any]:
    limits = [RATE_LIMIT, HOURLY, DAILY] if three else [RATE_LIMIT]
    return {
        "defaults": {"plan": "bench"},
        "operations": {"call": {"cost": 1, "price": "0.000001 USD"}},
        "plans": {"bench": {"limits": [dict(limit) for limit in limits]}},
    }


_TOLLWAY: ModuleType | None = None


def load_tollway(attr: str = "Tollway") -> Any:
    """``tollway.<attr>``; the installed package if any, else the working tree's ``src/``."""
    global _TOLLWAY  # noqa: PLW0603
    if _TOLLWAY is None:
        try:
            import tollway
        except ImportError:
            src = str(REPO / "src")
            if src not in sys.path:
                sys.path.insert(0, src)
            try:
                import tollway
            except Exception as exc:
                raise Unavailable(f"import tollway failed: {exc!r}") from exc
        except Exception as exc:
            raise Unavailable(f"import tollway failed: {exc!r}") from exc
        _TOLLWAY = tollway
    cls = getattr(_TOLLWAY, attr, None)
    if cls is None:
        raise Unavailable(f"tollway has no {attr} yet ({_TOLLWAY.__file__})")
    return cls


def tollway_fingerprint() -> str | None:
    """A short hash of the imported tollway package's files, to spot edits during a run."""
    try:
        load_tollway()
    except Unavailable:
        return None
    assert _TOLLWAY is not None
    digest = hashlib.sha256()
    for root in getattr(_TOLLWAY, "__path__", []):
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".lua"):
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def tollway_origin() -> str:
    try:
        load_tollway()
    except Unavailable as exc:
        return f"unavailable: {exc}"
    assert _TOLLWAY is not None
    return str(getattr(_TOLLWAY, "__file__", None) or list(getattr(_TOLLWAY, "__path__", [])))
