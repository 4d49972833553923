"""End to end over the wire: real servers on loopback ports, real clients, the real Redis.

- uvicorn with 4 worker processes serving ``tests.apps.asgi_app`` (Starlette behind the ASGI
  middleware, an `AsyncTollway` on Redis): hundreds of concurrent requests against one quota,
  exactly the quota served.
- waitress serving ``tests.apps.wsgi_app`` (Flask behind the WSGI middleware, a sync `Tollway`
  on Redis): the same, smaller.

Each server is a subprocess started from the repository's root, waited for (at most
`START_TIMEOUT` seconds; its output is shown when it does not come up), and always stopped by
its pid: SIGTERM, then SIGKILL of its process group.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import http_sf
import httpx
import pytest
import redis

from tollway import Tollway

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
POLICY = """\
[store]
url = "memory://"     # replaced by $TOLLWAY_APP_STORE
timeout_ms = 2000     # a loaded test machine must not turn decisions into degraded ones,
on_error = "closed"   # and if one were, it would be a 503, never an extra 2xx

[defaults]
plan = "free"

[operations]
geocode = {{ cost = 1, endpoints = ["GET /v1/geocode"] }}

[plans.free]
limits = [{{ name = "hourly", quota = "{quota}/hour" }}]
"""
SUBJECT = "ip:127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parsed(value: str) -> dict[str, dict[str, Any]]:
    items = http_sf.parse(value.encode(), tltype="list")
    return {item[0]: item[1] for item in items}


def clear_of_the_hour_edge(margin: float = 20.0) -> None:
    """Hourly windows end on the hour (UTC): a run that straddles one would see two windows.
    Wait (at most ``margin`` seconds) until the next edge is further away than ``margin``."""
    left = 3600 - time.time() % 3600
    if left < margin:
        time.sleep(left + 0.5)


@contextmanager
def server(
    args: list[str], tmp_path: Path, quota: int, redis_url: str, *, workers: int = 1
) -> Iterator[str]:
    """Run ``python ARGS`` (it must listen on the port in ``{port}``); yield its base URL once
    ``workers`` distinct worker processes have answered."""
    port = free_port()
    policy = tmp_path / "tollway.toml"
    policy.write_text(POLICY.format(quota=quota))
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TOLLWAY_APP_POLICY": str(policy),
        "TOLLWAY_APP_STORE": redis_url,
        "XDG_STATE_HOME": str(state),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *(arg.format(port=port) for arg in args)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers are in its process group, stopped with it
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_it_answers(proc, base, log_path, workers)
        yield base
    finally:
        stop(proc)


def wait_until_it_answers(
    proc: subprocess.Popen[bytes], base: str, log: Path, workers: int
) -> None:
    """Poll ``/health`` (a new connection each time, so that any worker may take it) until
    ``workers`` distinct ``X-Worker-Pid`` values have answered, at most `START_TIMEOUT` s."""
    deadline = time.monotonic() + START_TIMEOUT
    last: object = None
    pids: set[str] = set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            answer = httpx.get(f"{base}/health", timeout=1.0)
        except httpx.HTTPError as exc:
            last = exc
        else:
            last = answer
            if answer.status_code == 200:
                pids.add(answer.headers.get("x-worker-pid", "-"))
                if len(pids) >= workers:
                    return
                continue
        time.sleep(0.05)
    output = log.read_text(errors="replace")
    pytest.fail(
        f"the server at {base} did not answer from {workers} worker(s) within "
        f"{START_TIMEOUT} s (workers seen: {len(pids)}, exit code {proc.poll()}, "
        f"last answer {last!r}); its output:\n{output}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
    # The server's process group (its workers): SIGKILL whatever is left of it.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(STOP_TIMEOUT)


def check_run(answers: list[httpx.Response], quota: int) -> None:
    """Exactly ``quota`` 2xx, every other answer a 429; the RateLimit fields count down
    through every remaining value once; Retry-After never earlier than the violated ``t``."""
    statuses = [a.status_code for a in answers]
    served = [a for a in answers if 200 <= a.status_code < 300]
    denied = [a for a in answers if a.status_code == 429]
    assert len(served) == quota, sorted(set(statuses))
    assert len(served) + len(denied) == len(answers), sorted(set(statuses))
    for answer in answers:
        assert parsed(answer.headers["ratelimit-policy"]) == {"hourly": {"q": quota, "w": 3600}}
    remaining = sorted(parsed(a.headers["ratelimit"])["hourly"]["r"] for a in served)
    assert remaining == list(range(quota))  # quota-1 .. 0, each exactly once
    resets = [parsed(a.headers["ratelimit"])["hourly"]["t"] for a in answers]
    assert all(0 < t <= 3600 for t in resets)
    assert max(resets) - min(resets) <= 60  # one window, counted down on one clock
    for answer in denied:
        item = parsed(answer.headers["ratelimit"])["hourly"]
        assert item["r"] == 0
        assert int(answer.headers["retry-after"]) >= item["t"] > 0
        body = json.loads(answer.content)
        assert answer.headers["content-type"] == "application/problem+json"
        assert body["violated-policies"] == ["hourly"]


def used(policy: Path, redis_url: str) -> int:
    """How much of the quota the store says was used (asked through a tollway of our own)."""
    with Tollway(policy, store=redis_url) as tw:
        return tw.usage(SUBJECT).limit("hourly").used


# =========================================================================== uvicorn, 4 workers

UVICORN = [
    "-m",
    "uvicorn",
    "tests.apps.asgi_app:app",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
    "--workers",
    "4",
    "--no-access-log",
    "--log-level",
    "warning",
]


def test_uvicorn_workers_serve_exactly_the_quota_to_concurrent_clients(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    quota, total, concurrency = 100, 300, 50
    clear_of_the_hour_edge()
    with server(UVICORN, tmp_path, quota, redis_url, workers=2) as base:
        answers = asyncio.run(hammer(base, total, concurrency))
        after = httpx.get(f"{base}/v1/geocode", timeout=10.0)
    assert len(answers) == total
    check_run(answers, quota)
    pids = {a.headers["x-worker-pid"] for a in answers if a.status_code == 200}
    assert len(pids) >= 2, pids  # the quota was shared by several processes
    assert after.status_code == 429
    assert used(tmp_path / "tollway.toml", redis_url) == quota


async def hammer(base: str, total: int, concurrency: int) -> list[httpx.Response]:
    """``total`` GETs from ``concurrency`` concurrent clients, each on its own connection."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    answers: list[httpx.Response] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=20.0) as http:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                answers.append(await http.get("/v1/geocode"))

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), 45.0)
    return answers


# =========================================================================== waitress

WAITRESS = [
    "-m",
    "waitress",
    "--listen=127.0.0.1:{port}",
    "--threads=8",
    "tests.apps.wsgi_app:app",
]


def test_waitress_serves_exactly_the_quota(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    quota, total = 20, 50
    clear_of_the_hour_edge()
    with server(WAITRESS, tmp_path, quota, redis_url) as base:

        def get(_: int) -> httpx.Response:
            return httpx.get(f"{base}/v1/geocode", timeout=20.0)

        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(get, range(total)))
        health = httpx.get(f"{base}/health", timeout=10.0)
    assert len(answers) == total
    check_run(answers, quota)
    assert health.status_code == 200 and "ratelimit" not in health.headers
    assert used(tmp_path / "tollway.toml", redis_url) == quota
