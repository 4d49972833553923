"""What a Redis store operation asks of the server, one request at a time.

Each operation of the Redis stores (a step, a settle, a key lookup...) is written once, as a
generator that yields these requests and is sent their answers; `RedisStore` answers them with
the sync client, `AsyncRedisStore` awaits the async one (httpx's ``auth_flow`` pattern), so
the two classes hold no logic of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from tollway.stores.redis_codec import Script


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """EVALSHA ``script`` (loaded again on NOSCRIPT); answered its reply."""

    script: Script
    keys: list[str]
    args: list[Any]
    guarded: bool = True
    """Under the breaker, with errors mapped to `StoreError` (False: raw, for the journal's
    replay, which runs inside a guarded call)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A plain command: ``send(client)`` calls the client (sync or async, the names are the
    same) and returns its answer or an awaitable of it."""

    send: Callable[[Any], Any]
    guarded: bool = True


Request = ScriptCall | Command
_T = TypeVar("_T")
Flow = Generator[Request, Any, _T]
