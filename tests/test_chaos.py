"""Chaos, bounded: 8 processes acquire while Redis (AOF, fsync always) is killed with -9 and
restarted several times, then stopped (SIGSTOP) and resumed. Afterwards the counters, the
decisions the callers were given and the ledger agree exactly, for a fail-open and a
fail-closed subject, and acquires stayed bounded during the recoveries."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import redis

from chaos_support import CLOSED, OPEN, TIMEOUT_MS, chaos_policy, chaos_worker
from processes import run_together
from servers import RedisServer
from tollway import Tollway
from tollway.metering.drain import Drain
from tollway.metering.ledger import open_ledger

PROCESSES = 8


def _chaos(server: RedisServer, stop: Path, log: list[str], done: threading.Event) -> None:
    """Kill, restart, stop and resume Redis; then stay until ``done``: a server started by a
    thread is ended with it (the servers die with the thread that started them)."""
    try:
        deadline = time.monotonic() + 120
        while len(list(stop.parent.glob("ready-*"))) < PROCESSES:  # spawned workers import
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        for _ in range(3):
            server.kill()
            log.append("killed")
            time.sleep(0.3)
            server.start()
            log.append("restarted")
            time.sleep(0.7)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        log.append("stopped")
        time.sleep(0.5)
        os.kill(server.pid, signal.SIGCONT)
        log.append("resumed")
        time.sleep(0.8)
    finally:
        stop.touch()
    done.wait(600)


def test_counters_decisions_and_ledger_agree_through_kills_and_stops(tmp_path: Path) -> None:
    server = RedisServer(
        extra_args=["--appendonly", "yes", "--appendfsync", "always"],
        directory=tmp_path / "redis",
    ).start()
    done = threading.Event()
    try:
        journal = str(tmp_path / "journal")
        ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
        policy = chaos_policy(server.url, journal, ledger_url)
        with Tollway(policy) as tw:
            tw.assign(CLOSED, "strict")
        stop, log = tmp_path / "stop", []
        chaos = threading.Thread(target=_chaos, args=(server, stop, log, done), daemon=True)
        chaos.start()
        results = run_together(
            chaos_worker,
            [(server.url, journal, ledger_url, str(stop), n) for n in range(PROCESSES)],
            timeout=180,
        )
        assert log == ["killed", "restarted"] * 3 + ["stopped", "resumed"]
        assert all(r["replayed"] for r in results)
        assert sum(r["degraded"] for r in results) > 0  # the faults were felt

        allowed = {s: sum(r["allowed"][s] for r in results) for s in (OPEN, CLOSED)}
        with Tollway(policy) as tw:
            assert tw.store.wait_replayed(30)
            used = {s: tw.usage(s).limit("calls").used for s in (OPEN, CLOSED)}
        assert used == allowed

        with redis.Redis.from_url(server.url) as client, open_ledger(ledger_url) as ledger:
            drain = Drain(client, ledger, policy=policy, block_ms=0)
            drain.run(until_idle=True)
            billed = {
                s: sum(t.quantity for t in ledger.totals(s, 0, 2**62).values())
                for s in (OPEN, CLOSED)
            }
        assert billed == allowed

        latencies = sorted(x for r in results for x in r["latencies"])
        p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]
        assert p99 <= 2 * TIMEOUT_MS / 1000, f"p99 {p99 * 1000:.0f} ms"
    finally:
        done.set()
        server.stop()
