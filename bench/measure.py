"""Timing loops: one ``perf_counter_ns()`` per call, latency = gap between consecutive stamps."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any


def summarize(gaps: list[int], n: int, elapsed_ns: int, denied: int) -> dict[str, Any]:
    gaps.sort()
    return {
        "n": n,
        "calls_per_s": n / (elapsed_ns / 1e9) if elapsed_ns > 0 else 0.0,
        "p50_us": gaps[len(gaps) // 2] / 1000 if gaps else 0.0,
        "p99_us": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] / 1000 if gaps else 0.0,
        "denied": denied,
    }


def time_sync(call: Callable[[], object], n: int, warm: int) -> dict[str, Any]:
    """``call()`` returns a truthy value when allowed; any falsy return counts as a denial."""
    denied = 0
    for _ in range(warm):
        if not call():
            denied += 1
    gc.collect()
    pc = time.perf_counter_ns
    stamps = [0] * (n + 1)
    stamps[0] = pc()
    for i in range(1, n + 1):
        if not call():
            denied += 1
        stamps[i] = pc()
    gaps = [stamps[i] - stamps[i - 1] for i in range(1, n + 1)]
    return {**summarize(gaps, n, stamps[n] - stamps[0], denied), "calls_total": n + warm}


async def time_async(
    call: Callable[[], Awaitable[object]], n: int, warm: int, tasks: int
) -> dict[str, Any]:
    """``tasks`` concurrent tasks share ``n`` calls; a call's latency is the gap within its task."""
    denied = [0]

    async def one_task(count: int, gaps: list[int] | None) -> None:
        pc = time.perf_counter_ns
        t = pc()
        for _ in range(count):
            if not await call():
                denied[0] += 1
            if gaps is not None:
                t2 = pc()
                gaps.append(t2 - t)
                t = t2

    per_task, warm_per_task = max(1, n // tasks), max(1, warm // tasks)
    await asyncio.gather(*(one_task(warm_per_task, None) for _ in range(tasks)))
    gc.collect()
    gaps: list[int] = []
    start = time.perf_counter_ns()
    await asyncio.gather(*(one_task(per_task, gaps) for _ in range(tasks)))
    elapsed = time.perf_counter_ns() - start
    total = (per_task + warm_per_task) * tasks
    return {**summarize(gaps, per_task * tasks, elapsed, denied[0]), "calls_total": total}
