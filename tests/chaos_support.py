"""The workers of `test_chaos`: each acquires under two subjects (one fail-open, one
fail-closed) until the stop file appears, counting what it was told, then waits for its
journal to be resolved. Module level, so spawned processes can import it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model import day_safe_timezone
from tollway import Tollway
from tollway.policy import load
from tollway.policy.model import Policy

OPEN, CLOSED = "acct-open", "acct-closed"
TIMEOUT_MS = 100
MAX_ROUNDS = 4000


def chaos_policy(url: str, journal: str, ledger_url: str) -> Policy:
    tz = day_safe_timezone()
    return load(
        {
            "store": {
                "url": url,
                "timeout_ms": TIMEOUT_MS,
                "breaker_failures": 2,
                "breaker_cooldown_ms": 100,
                "journal": journal,
            },
            "ledger": {"url": ledger_url, "events": True, "partitions": 4},
            "defaults": {"plan": "lenient"},
            "operations": {"call": {"cost": 1}},
            "plans": {
                "lenient": {
                    "limits": [
                        {
                            "name": "calls",
                            "quota": "1000000/day",
                            "timezone": tz,
                            "on_error": "open",
                        }
                    ]
                },
                "strict": {
                    "limits": [
                        {
                            "name": "calls",
                            "quota": "1000000/day",
                            "timezone": tz,
                            "on_error": "closed",
                        }
                    ]
                },
            },
        }
    )


def chaos_worker(
    url: str, journal: str, ledger_url: str, stop: str, index: int, barrier: Any, results: Any
) -> None:
    try:
        tw = Tollway(chaos_policy(url, journal, ledger_url))
        allowed = {OPEN: 0, CLOSED: 0}
        degraded = 0
        latencies: list[float] = []
        barrier.wait()
        stop_file = Path(stop)
        (stop_file.parent / f"ready-{index}").touch()  # the chaos starts when all are
        for n in range(MAX_ROUNDS):
            if stop_file.exists():
                break
            for subject in (OPEN, CLOSED):
                ident = f"w{index}-{subject}-{n}" if n % 3 == 0 else None
                started = time.perf_counter()
                decision = tw.acquire(subject, "call", id=ident)
                latencies.append(time.perf_counter() - started)
                allowed[subject] += decision.allowed
                degraded += decision.degraded
            time.sleep(0.002)  # bounded traffic: about 8 x 400 calls a second
        replayed = tw.store.wait_replayed(60)
        tw.close()
        results.put(
            {"allowed": allowed, "degraded": degraded, "latencies": latencies, "replayed": replayed}
        )
    except BaseException as exc:  # the test reports it
        results.put(exc)
