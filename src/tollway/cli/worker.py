"""``tollway worker``: drain the event streams into the ledger (`tollway.metering.drain`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tollway.cli.commands import OK, config_path
from tollway.cli.output import PROG, note
from tollway.errors import ConfigurationError, LedgerUnavailableError
from tollway.policy import load

if TYPE_CHECKING:
    from tollway.metering.drain import Drain, DrainStats
    from tollway.metering.ledger import Ledger
    from tollway.policy.model import Policy

__all__ = ["open_drain", "register", "worker"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def register(sub: Any, add: Any) -> None:
    command = add(
        "worker",
        worker,
        "drain the store's event streams into the ledger",
        description="Read every usage event and limit notice the store's steps appended to its "
        "Redis Streams, through the consumer group 'tollway', and commit them to the policy's "
        "[ledger] (acknowledged only once committed; a dead worker's entries are taken over by "
        "another; entries that are not events go to tw:events:bad). Run as many as you like. "
        "Stops cleanly on SIGTERM or SIGINT.",
    )
    command.add_argument(
        "--consumer",
        metavar="NAME",
        help="this worker's name in the group (default: HOST-PID); a stable name re-reads "
        "what a previous run under it left pending",
    )
    command.add_argument(
        "--batch", type=_count, metavar="N", help="events per commit (default: [ledger] batch)"
    )
    command.add_argument(
        "--block-ms",
        type=_count,
        default=1000,
        metavar="N",
        help="how long one read waits for new entries (default: 1000)",
    )
    command.add_argument(
        "--claim-idle-ms",
        type=_count,
        default=30_000,
        metavar="N",
        help="take over another worker's entries pending this long (default: 30000)",
    )
    command.add_argument(
        "--until-idle", action="store_true", help="exit once the streams have nothing left"
    )
    command.add_argument(
        "--max-seconds", type=float, metavar="S", help="exit after S seconds at most"
    )
    command.add_argument(
        "--progress-s",
        type=float,
        default=10.0,
        metavar="S",
        help="print counts and lag on stderr every S seconds (default: 10)",
    )
    command.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _store_url(args: argparse.Namespace, policy: Policy) -> str:
    url: str = args.store or policy.store.url
    if url.startswith("memory:"):
        raise ConfigurationError(
            f"tollway worker: the store is {url}: there are no streams to drain; with the "
            "memory store (embedded mode) the process that acquires writes its events to the "
            "ledger itself. Pass --store redis://HOST:PORT/DB (or set [store] url)"
        )
    return url


def _ledger_url(policy: Policy) -> str:
    url = policy.ledger.url
    if url is None:
        raise ConfigurationError(
            "tollway worker: the policy has no [ledger] url, so there is nowhere to drain to; "
            'set e.g. url = "postgresql://user@host/db" or "sqlite:///tollway.db" in [ledger]'
        )
    return url


def _open_ledger(url: str, stop: threading.Event, quiet: bool) -> Ledger | None:
    """The ledger, waiting for its database to come up (None: stopped meanwhile)."""
    from tollway.metering.drain import Backoff
    from tollway.metering.ledger import open_ledger

    backoff = Backoff(0.2, 5.0)
    while not stop.is_set():
        try:
            return open_ledger(url)
        except LedgerUnavailableError as exc:
            wait = backoff.next()
            if not quiet:
                note(f"worker: {exc}; trying again in {wait:.1f} s")
            stop.wait(wait)
    return None


def open_drain(
    args: argparse.Namespace, policy: Policy, ledger: Ledger, stop: threading.Event
) -> Drain:
    """A `Drain` for the parsed options of ``tollway worker`` (``reconcile --drain-first``)."""
    from tollway.metering.drain import Drain
    from tollway.metering.streams import connect

    block_ms = getattr(args, "block_ms", 1000)
    client, cluster = connect(_store_url(args, policy), timeout_s=block_ms / 1000 + 5)
    return Drain(
        client,
        ledger,
        cluster=cluster,
        policy=policy,
        consumer=getattr(args, "consumer", None),
        batch=getattr(args, "batch", None) or None,
        block_ms=block_ms,
        claim_idle_ms=getattr(args, "claim_idle_ms", 30_000),
        sleep=stop.wait,
        stop=stop.is_set,
    )


@contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop``: the batch in hand is finished and acknowledged, and the
    hooks' attempts in flight are cut short and handed back (`Drain.close`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def _line(stats: DrainStats, elapsed: float) -> str:
    inserted = f" ({stats.inserted} new)" if stats.inserted is not None else ""
    rate = stats.events / elapsed if elapsed > 0 else 0.0
    return (
        f"{PROG}: worker: {stats.events} events{inserted}, {stats.notices} notices, "
        f"{stats.bad} bad, {stats.claimed} claimed, {stats.commit_failures} failed commits, "
        f"{stats.redis_failures} store failures; lag {stats.lag_s:.3f} s "
        f"(max {stats.max_lag_s:.3f} s); {stats.streams} streams; {rate:.0f} events/s"
    )


def worker(args: argparse.Namespace) -> int:
    policy = load(config_path(args))
    _store_url(args, policy)
    ledger_url = _ledger_url(policy)
    stop = threading.Event()
    with _stopping_on_signals(stop):
        ledger = _open_ledger(ledger_url, stop, args.quiet)
        if ledger is None:
            return OK
        with ledger, open_drain(args, policy, ledger, stop) as drain:
            if not args.quiet:
                where = _redacted(args.store or policy.store.url)
                note(f"worker {drain.consumer}: draining {where} into {ledger.url}")
            started = time.monotonic()
            end = None if args.max_seconds is None else started + args.max_seconds
            report_at = started + args.progress_s
            while not stop.is_set():
                handled = drain.run_once()
                now = time.monotonic()
                if not args.quiet and now >= report_at:
                    print(_line(drain.stats(), now - started), file=sys.stderr, flush=True)
                    report_at = now + args.progress_s
                if args.until_idle and handled == 0 and drain.idle:
                    # The hooks' deliveries due now too, unless stopped meanwhile.
                    drain.settle_hooks(None if end is None else max(0.0, end - now))
                    break
                if end is not None and now >= end:
                    break
            # Leaving the block stops the hooks at once: an attempt in flight is handed back.
            if not args.quiet:
                print(_line(drain.stats(), time.monotonic() - started), file=sys.stderr, flush=True)
    return OK
