"""Run one function in several spawned processes, released together by a barrier, and collect
what each put on its result queue (an exception a worker put there fails the test)."""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable, Sequence
from typing import Any


def run_together(
    target: Callable[..., None], arg_sets: Sequence[tuple[Any, ...]], timeout: float = 120
) -> list[Any]:
    """``target(*args, barrier, results)`` in one process per ``args``; what each put on
    ``results``, in the order they came. Every process must exit 0."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(arg_sets), timeout=60)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for args in arg_sets]
    for proc in procs:
        proc.start()
    got: list[Any] = []
    try:
        for _ in procs:
            item = results.get(timeout=timeout)
            if isinstance(item, BaseException):
                raise AssertionError(f"a worker failed: {item!r}") from item
            got.append(item)
    except queue.Empty:
        raise AssertionError(f"the workers did not finish within {timeout:.0f} s") from None
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():  # only our own children, by their handle
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    return got
