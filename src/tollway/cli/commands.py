"""What each subcommand does, given its parsed arguments; each returns the exit status."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tollway.cli.output import note, plural, print_json
from tollway.client import Tollway
from tollway.errors import ConfigurationError, PolicyError, StoreUnavailableError
from tollway.policy import load, policy_schema
from tollway.policy.model import Policy
from tollway.usage import Usage

DEFAULT_CONFIG = "tollway.toml"

OK = 0
DENIED = 1
"""``acquire``: the decision was a denial; ``policy check``: the policy has problems."""
FAILED = 2
"""A usage error, a bad policy or setting, an unknown name: the caller's to fix."""
STORE_FAILED = 3
"""The store could not be reached, or refused a command."""


def positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def config_path(args: argparse.Namespace) -> Path:
    """``--config``, else ``./tollway.toml`` when it exists."""
    if args.config is not None:
        return Path(args.config)
    default = Path(DEFAULT_CONFIG)
    if default.is_file():
        return default
    raise ConfigurationError(
        f"no policy file: --config was not given and {Path.cwd() / DEFAULT_CONFIG} does not "
        "exist; pass --config FILE"
    )


def open_tollway(args: argparse.Namespace) -> Tollway:
    tw = Tollway.from_file(config_path(args), store=args.store)
    if tw.store.url.startswith("memory:"):
        note(
            "the store is memory://: counters live in this process only and are gone when "
            "it ends; pass --store redis://HOST:PORT/DB (or set [store] url) to act on "
            "shared ones"
        )
    return tw


def _reach(tw: Tollway, subject: str) -> None:
    """Read the subject's plan: an unreachable store fails here, before `acquire` would take a
    fail-open decision and journal it on this machine."""
    tw.plan_of(subject)


def acquire(args: argparse.Namespace) -> int:
    with open_tollway(args) as tw:
        _reach(tw, args.subject)
        decision = tw.acquire(args.subject, args.operation, args.cost, amount=args.amount)
        if decision.degraded:
            raise StoreUnavailableError(decision.reason or "the store did not answer")
        print_json(decision.to_dict())
    return OK if decision.allowed else DENIED


def usage_document(usage: Usage) -> dict[str, Any]:
    """`Usage.to_dict` without what a read of zero units cannot tell: its ``allowed`` and
    ``retry_after`` say whether a step of cost 0 would pass (always), not whether the limit has
    room. ``used_up`` says that: nothing of the limit is left (a quota's grace, if it has one,
    may still let a little through; ``reset_after`` says when it is whole again)."""
    document = usage.to_dict()
    for state, limit in zip(usage.limits, document["limits"], strict=True):
        limit.pop("allowed", None)
        limit.pop("retry_after", None)
        limit["used_up"] = state.remaining <= 0
    return document


def usage(args: argparse.Namespace) -> int:
    with open_tollway(args) as tw:
        print_json(usage_document(tw.usage(args.subject)))
    return OK


def reset(args: argparse.Namespace) -> int:
    with open_tollway(args) as tw:
        cleared = tw.reset(args.subject, args.limit)
    which = f" (limit {args.limit})" if args.limit else ""
    print(f"cleared {plural(cleared, 'counter')} of {args.subject}{which}")
    return OK


def assign(args: argparse.Namespace) -> int:
    if args.default == (args.plan is not None):
        raise ConfigurationError("assign: give either PLAN (- for the default) or --default")
    plan = None if args.default or args.plan == "-" else args.plan
    with open_tollway(args) as tw:
        tw.assign(args.subject, plan)
        now = tw.plan_of(args.subject)
    if plan is not None:
        print(f"{args.subject}: {now}")
    elif now is None:
        print(f"{args.subject}: no plan (the policy has no default plan)")
    else:
        print(f"{args.subject}: {now} (the default plan)")
    return OK


def _summary(policy: Policy) -> str:
    limits = sum(len(plan.limits) for plan in policy.plans.values())
    limits += sum(len(provider.limits) for provider in policy.providers.values())
    parts = [
        plural(len(policy.plans), "plan"),
        plural(len(policy.operations), "operation"),
        plural(limits, "limit"),
        plural(len(policy.providers), "provider"),
        plural(len(policy.routes), "route"),
    ]
    if policy.defaults.plan is not None:
        parts.append(f"default plan {policy.defaults.plan}")
    parts.append(f"store {policy.store.url}")
    return ", ".join(parts)


def policy_check(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file is not None else config_path(args)
    try:
        policy = load(path)
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return DENIED
    print(f"ok: {path} ({_summary(policy)})")
    return OK


def policy_schema_command(args: argparse.Namespace) -> int:
    print_json(policy_schema())
    return OK
