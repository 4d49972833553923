"""Stream entries in the format of `tollway.metering.entries`, written by XADD (what the step
script appends), and policies for the worker and reconcile tests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tollway.metering.entries import REGISTRY, slot_of, stream_key

US = 1_000_000


def usage_fields(
    subject: str,
    operation: str,
    quantity: int,
    at_us: int,
    *,
    ident: str | None = None,
    amount_micros: int | None = None,
    currency: str | None = None,
    plan: str | None = "free",
    limits: tuple[str, ...] = ("hourly",),
) -> dict[str, str]:
    template = [
        subject,
        operation,
        operation,
        quantity,
        amount_micros,
        currency,
        plan,
        "v1",
        list(limits),
    ]
    fields = {"k": "u", "t": str(at_us), "d": json.dumps(template)}
    if ident is not None:
        fields["i"] = ident
    return fields


def threshold_fields(subject: str, at_us: int, start_us: int, end_us: int) -> dict[str, str]:
    template = [subject, "geocode", "geocode", 1, None, None, "free", "v1", ["hourly"]]
    return {
        "k": "t",
        "t": str(at_us),
        "d": json.dumps(template),
        "f": "q:hourly",
        "n": "0",
        "s": str(start_us),
        "e": str(end_us),
        "v": "8",
    }


def add(client: Any, subject: str, fields: dict[str, str], *, cluster: bool = False) -> str:
    """XADD the entry to the subject's stream (registered first, as a client does)."""
    key = stream_key(subject, cluster=cluster, partitions=16)
    client.sadd(REGISTRY, key)
    entry_id = client.xadd(key, fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def add_many(
    client: Any, events: list[tuple[str, dict[str, str]]], *, cluster: bool = False
) -> None:
    """Many entries in one pipeline (per node on a cluster)."""
    keys = {stream_key(s, cluster=cluster, partitions=16) for s, _ in events}
    client.sadd(REGISTRY, *keys)
    pipe = client.pipeline(transaction=False)
    for subject, fields in events:
        pipe.xadd(stream_key(subject, cluster=cluster, partitions=16), fields)
    pipe.execute()


def subjects_on_distinct_slots(count: int, prefix: str = "acct") -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    n = 0
    while len(out) < count:
        subject = f"{prefix}_{n}"
        slot = slot_of(subject)
        if slot not in seen:
            seen.add(slot)
            out.append(subject)
        n += 1
    return out


POLICY = """\
[store]
url = "{store}"

[defaults]
plan = "free"

[operations]
geocode = {{ cost = 1, price = "0.001 USD" }}
search = {{ cost = 5, price = "0.002 USD" }}

[plans.free]
limits = [
  {{ name = "burst", rate = "1000/s", burst = 1000 }},
  {{ name = "hourly", quota = "100000/hour", thresholds = [0.8] }},
  {{ name = "searches", quota = "100000/day", operations = ["search"] }},
  {{ name = "spend", budget = "1000.00 USD/month" }},
]

[ledger]
url = "{ledger}"
"""


def write_policy(path: Path, store: str, ledger: str) -> Path:
    path.write_text(POLICY.format(store=store, ledger=ledger))
    return path


# --------------------------------------------------------------------------- PostgreSQL


def with_search_path(url: str, schema: str) -> str:
    from urllib.parse import quote, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "")
    query += urlencode({"options": f"-c search_path={schema}"}, quote_via=quote)
    return urlunsplit(parts._replace(query=query))


@contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """A schema of its own in a PostgreSQL (dropped afterwards), as a URL whose search_path
    is that schema: an empty ledger database."""
    import psycopg

    schema = f"w_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# --------------------------------------------------------------------------- subprocesses


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``condition`` until it is truthy (bounded); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def start_worker(config: Path, *args: str) -> subprocess.Popen[str]:
    """``tollway worker`` as a real process (``python -m tollway.cli worker``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tollway.cli", "worker", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[str], timeout: float = 20.0) -> tuple[int, str]:
    """SIGTERM, then its exit status and stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def events_drained(stderr: str) -> int:
    """The event count of the worker's last progress line."""
    found = re.findall(r"worker: (\d+) events", stderr)
    assert found, stderr
    return int(found[-1])


def group_pending(client: Any, keys: list[str]) -> int:
    total = 0
    for key in keys:
        try:
            total += int(client.xpending(key, "tollway")["pending"])
        except Exception as exc:  # no stream or no group yet: nothing pending there
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
    return total
