"""Count a subject's network round trips per call with MONITOR (after timing, never during).

MONITOR tags commands run inside a Lua script as ``[db lua]``; everything else is a request
that crossed the network. INFO commandstats, by contrast, counts both.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

PROBE_CALLS = 20
ADMIN_COMMANDS = ("CONFIG", "INFO", "FLUSHDB", "CLIENT", "HELLO", "MONITOR")


class RoundTrips:
    """``with RoundTrips(url) as rt: <make PROBE_CALLS calls>; rt.per_call()``."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=0.1)
        self.monitor: Any = None

    def __enter__(self) -> RoundTrips:
        self.monitor = self.client.monitor()
        self.monitor.__enter__()
        return self

    def per_call(self, calls: int = PROBE_CALLS) -> dict[str, float]:
        import redis

        seen: Counter[str] = Counter()
        while True:
            try:
                cmd = self.monitor.next_command()
            except (redis.TimeoutError, TimeoutError):
                break
            if cmd is None or cmd["client_type"] == "lua" or not cmd["command"]:
                continue
            name = cmd["command"].split(" ", 1)[0].upper()
            if name not in ADMIN_COMMANDS:
                seen[name] += 1
        return {name: count / calls for name, count in seen.items()}

    def __exit__(self, *exc: object) -> None:
        self.monitor.__exit__(*exc)
        self.client.close()
