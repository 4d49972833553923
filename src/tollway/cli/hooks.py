"""``tollway hooks list|retry|replay``: look at and act on the hook messages in the ledger.

The messages are the ledger's (``[ledger] url`` of the policy, or ``--ledger URL``); these
commands only change their state (due now, a new round, a replay), and a running dispatcher
(`tollway.metering.hooks.Dispatcher`) sends them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from tollway.cli.commands import OK, config_path
from tollway.cli.output import note, plural, table
from tollway.errors import ConfigurationError
from tollway.metering.ledger import Ledger, open_ledger
from tollway.metering.ledger.outbox import HookMessage
from tollway.policy import load

__all__ = ["hooks_list", "hooks_replay", "hooks_retry", "register"]

STATUSES = ("pending", "delivered", "dead")
ERROR_CHARS = 60


def register(sub: Any, add: Any) -> None:
    hooks = sub.add_parser(
        "hooks",
        help="list, retry, replay and prune the messages of the policy's hooks",
        description="List the hook messages kept in the ledger, make them due now (retry), "
        "send delivered and dead ones again under the same webhook-id (replay), or delete old "
        "delivered ones (prune).",
    )
    hooks.set_defaults(run=lambda args: _help(hooks))
    hooks_sub = hooks.add_subparsers(dest="hooks_command", metavar="COMMAND")

    listing = add(
        "list",
        hooks_list,
        "list hook messages: id, hook, type, status, attempts, next attempt, last error",
        parents=(),
        into=hooks_sub,
    )
    _common(listing)
    listing.add_argument("--status", choices=STATUSES, help="only messages in this status")
    listing.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N messages (default: 100)"
    )

    retry = add(
        "retry",
        hooks_retry,
        "make pending or dead messages due now",
        description="Make messages due now: --id (pending or dead; a dead one starts a new "
        "round of its schedule), --all-dead (every dead message), or --hook alone (every "
        "pending message of that hook). A running dispatcher sends them on its next pass.",
        parents=(),
        into=hooks_sub,
    )
    _common(retry)
    retry.add_argument("--id", action="append", default=[], metavar="ID", help="a message id")
    retry.add_argument("--all-dead", action="store_true", help="every dead message")

    replay = add(
        "replay",
        hooks_replay,
        "send dead or delivered messages again under the same webhook-id",
        description="Send messages again as fresh deliveries (a new schedule) with the same "
        "webhook-id and body, so a receiver that already has one dedupes it: --id (dead or "
        "delivered) or --dead (every dead message, of --hook when given).",
        parents=(),
        into=hooks_sub,
    )
    _common(replay)
    replay.add_argument("--id", action="append", default=[], metavar="ID", help="a message id")
    replay.add_argument("--dead", action="store_true", help="every dead message")

    prune = add(
        "prune",
        hooks_prune,
        "delete delivered messages older than some days",
        description="Delete the messages delivered (with --dead, also those dead) and last "
        "changed more than --older-than days ago, of --hook when given. Pending messages are "
        "never deleted; usage events are not touched.",
        parents=(),
        into=hooks_sub,
    )
    _common(prune)
    prune.add_argument(
        "--older-than", type=_days, required=True, metavar="DAYS", help="age in days (>= 0)"
    )
    prune.add_argument("--dead", action="store_true", help="dead messages too")


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0 or days == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days >= 0")
    return days


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="the policy file (default: ./tollway.toml)"
    )
    parser.add_argument("--ledger", metavar="URL", help="the ledger, overriding [ledger] url")
    parser.add_argument("--hook", metavar="NAME", help="only the messages of this hook")


def _help(parser: argparse.ArgumentParser) -> int:
    import sys

    parser.print_help(sys.stderr)
    return 2


def open_hooks_ledger(args: argparse.Namespace) -> Ledger:
    """The ledger of ``--ledger``, else of the policy's ``[ledger] url``; ``--hook`` must name a
    hook of the policy (unless --ledger is given without a policy)."""
    policy = None
    if args.config is not None or args.ledger is None:
        policy = load(config_path(args))
    known = {hook.name for hook in policy.hooks} if policy is not None else None
    if known is not None and args.hook is not None and args.hook not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ConfigurationError(
            f"--hook {args.hook!r}: the policy has no such hook; its hooks: {names}"
        )
    url = args.ledger or (policy.ledger.url if policy is not None else None)
    if url is None:
        raise ConfigurationError(
            "no ledger: the policy has no [ledger] url; set it or pass --ledger URL"
        )
    return open_ledger(url)


def _when(us: int | None) -> str:
    if us is None:
        return "-"
    moment = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(text: str | None) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def render(messages: Sequence[HookMessage]) -> list[str]:
    rows = [
        [
            m.id,
            m.hook,
            m.type,
            m.status + (f" ({m.dead_reason})" if m.dead_reason else ""),
            str(len(m.attempts)),
            _when(m.next_at_us) if m.status == "pending" else "-",
            _short(m.last_error),
        ]
        for m in messages
    ]
    return table(
        ["id", "hook", "type", "status", "attempts", "next attempt", "last error"],
        rows,
        right={4},
    )


def hooks_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigurationError(f"--limit {args.limit}: expected a whole number >= 1")
    with open_hooks_ledger(args) as ledger:
        messages = ledger.hook_messages(hook=args.hook, status=args.status, limit=args.limit)
    if not messages:
        print("no hook messages" + (f" of hook {args.hook}" if args.hook else ""))
        return OK
    for line in render(messages):
        print(line)
    return OK


def _now_us() -> int:
    return time.time_ns() // 1000


def _missing(ledger: Ledger, ids: Sequence[str], hook: str | None) -> list[str]:
    found = {m.id for m in ledger.hook_messages(hook=hook, ids=ids, limit=10**9)}
    return [i for i in ids if i not in found]


def hooks_retry(args: argparse.Namespace) -> int:
    if not (args.id or args.all_dead or args.hook):
        raise ConfigurationError(
            "hooks retry: say which messages: --id ID, --all-dead, or --hook NAME (its pending "
            "messages)"
        )
    with open_hooks_ledger(args) as ledger:
        unknown = _missing(ledger, args.id, args.hook) if args.id else []
        if unknown:
            raise ConfigurationError(f"no hook message with id {', '.join(map(repr, unknown))}")
        done = ledger.retry_hook_messages(
            _now_us(), hook=args.hook, ids=args.id, all_dead=args.all_dead
        )
    skipped = sorted(set(args.id) - {m.id for m in done})
    for ident in skipped:
        note(f"message {ident!r} is delivered: nothing to retry (use hooks replay to send again)")
    print(f"made {plural(len(done), 'message')} due now")
    for message in done:
        print(f"  {message.hook}  {message.id}  (was {message.status})")
    return OK


def hooks_replay(args: argparse.Namespace) -> int:
    if not (args.id or args.dead):
        raise ConfigurationError("hooks replay: say which messages: --id ID or --dead")
    with open_hooks_ledger(args) as ledger:
        unknown = _missing(ledger, args.id, args.hook) if args.id else []
        if unknown:
            raise ConfigurationError(f"no hook message with id {', '.join(map(repr, unknown))}")
        done = ledger.replay_hook_messages(_now_us(), hook=args.hook, ids=args.id, dead=args.dead)
    for ident in sorted(set(args.id) - {m.id for m in done}):
        note(f"message {ident!r} is still pending: not replayed (use hooks retry)")
    print(f"replaying {plural(len(done), 'message')} (same webhook-id, a new schedule)")
    for message in done:
        print(f"  {message.hook}  {message.id}  (was {message.status})")
    return OK


def hooks_prune(args: argparse.Namespace) -> int:
    before = _now_us() - round(args.older_than * 86_400 * 1_000_000)
    with open_hooks_ledger(args) as ledger:
        removed = ledger.prune_hook_messages(before, hook=args.hook, dead=args.dead)
    kinds = "delivered or dead" if args.dead else "delivered"
    print(f"deleted {plural(removed, 'message')} {kinds} more than {args.older_than:g} days ago")
    return OK
