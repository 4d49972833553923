"""``tollway keys``: create, list, revoke and rotate API keys in the store.

The pepper of the keyed hash comes from ``$TOLLWAY_KEY_SECRET`` (every process that verifies
keys needs the same one); without it every ``keys`` command exits 2 before touching the store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from tollway.cli.commands import FAILED, OK, config_path, open_tollway
from tollway.cli.output import note, print_json, table
from tollway.client import Tollway
from tollway.errors import ConfigurationError
from tollway.keys import SECRET_ENV, ApiKeys, IssuedKey, secret_from_env
from tollway.stores.memory import MemoryStore

Command = Callable[[argparse.Namespace], int]


class Add(Protocol):
    """The shape of `tollway.cli.main`'s subcommand helper."""

    def __call__(
        self,
        name: str,
        run: Command,
        help: str,
        *,
        description: str | None = ...,
        parents: Sequence[argparse.ArgumentParser] = ...,
        into: argparse._SubParsersAction[argparse.ArgumentParser] = ...,
    ) -> argparse.ArgumentParser: ...


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _time(when: datetime | None) -> str:
    return "-" if when is None else when.strftime("%Y-%m-%d %H:%M:%S")


def _show_issued(issued: IssuedKey, as_json: bool) -> None:
    """The key on stdout (alone, or as JSON), the warning on stderr."""
    if as_json:
        print_json(issued.to_dict())
    else:
        print(issued.key)
    until = f", valid until {_time(issued.expires_at)} UTC" if issued.expires_at else ""
    note(
        f"API key {issued.key_id} for {issued.subject}{until}: this is the only time it is "
        "shown; it cannot be shown again (only its keyed hash is stored). Store it now."
    )


def create(args: argparse.Namespace) -> int:
    secret = secret_from_env()
    with Tollway.from_file(config_path(args), store=args.store) as tw:
        if isinstance(tw.store, MemoryStore):
            # A key kept in this process's memory is gone when the command exits: printing it
            # would hand out a key that no server will ever accept.
            raise ConfigurationError(
                "keys create: the store is memory://, which lives only as long as this command: "
                "the key would be gone when it exits. Configure a Redis store: --store "
                'redis://HOST:PORT/DB, or [store] url = "redis://HOST:PORT/DB" in the policy'
            )
        issued = ApiKeys(tw, secret=secret).create(
            args.subject, label=args.label, expires_in=args.expires_in
        )
    _show_issued(issued, args.json)
    return OK


def list_keys(args: argparse.Namespace) -> int:
    secret = secret_from_env()
    with open_tollway(args) as tw:
        infos = ApiKeys(tw, secret=secret).list(args.subject)
    if args.json:
        print_json([info.to_dict() for info in infos])
        return OK
    if not infos:
        print(f"{args.subject}: no API keys")
        return OK
    rows = [
        [
            info.key_id,
            info.state,
            _time(info.created_at),
            _time(info.expires_at),
            _time(info.revoked_at),
            info.rotated_to or "-",
            info.label or "",
        ]
        for info in infos
    ]
    headers = ["KEY ID", "STATE", "CREATED (UTC)", "EXPIRES", "REVOKED", "ROTATED TO", "LABEL"]
    print("\n".join(table(headers, rows)))
    return OK


def revoke(args: argparse.Namespace) -> int:
    secret = secret_from_env()
    with open_tollway(args) as tw:
        info = ApiKeys(tw, secret=secret).revoke(args.key_id)
    print(f"revoked API key {info.key_id} of {info.subject} (at {_time(info.revoked_at)} UTC)")
    return OK


def rotate(args: argparse.Namespace) -> int:
    secret = secret_from_env()
    with open_tollway(args) as tw:
        keys = ApiKeys(tw, secret=secret)
        issued = keys.rotate(args.key_id, overlap=args.overlap, expires_in=args.expires_in)
        old = keys.get(args.key_id)
    _show_issued(issued, args.json)
    note(f"the old key {old.key_id} is refused from {_time(old.expires_at)} UTC")
    return OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add the ``keys`` group to the `tollway` parser."""
    group = sub.add_parser(
        "keys",
        help="create, list, revoke and rotate API keys",
        description="Create, list, revoke and rotate the API keys that map requests to "
        f"subjects. The keys are stored only as a keyed hash whose secret is ${SECRET_ENV} "
        "(required; the same in every process that verifies keys).",
    )

    def group_help(args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return FAILED

    group.set_defaults(run=group_help)
    keys_sub = group.add_subparsers(dest="keys_command", metavar="COMMAND")

    make = add(
        "create",
        create,
        "issue an API key for a subject; print it (once)",
        description="Issue an API key for SUBJECT and print it on stdout. It is shown this once "
        "only: the store keeps a keyed hash of it.",
        into=keys_sub,
    )
    make.add_argument("subject", metavar="SUBJECT")
    make.add_argument("--label", metavar="TEXT", help="a note shown by `keys list`")
    make.add_argument(
        "--expires-in",
        type=_seconds,
        metavar="SECONDS",
        help="refuse the key after this many seconds (default: valid until revoked)",
    )
    make.add_argument("--json", action="store_true", help="print the key and its details as JSON")

    listing = add(
        "list",
        list_keys,
        "list a subject's API keys (never the keys themselves)",
        into=keys_sub,
    )
    listing.add_argument("subject", metavar="SUBJECT")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    kill = add("revoke", revoke, "refuse an API key from now on", into=keys_sub)
    kill.add_argument("key_id", metavar="KEY_ID", help="the key's id, as `keys list` shows")

    turn = add(
        "rotate",
        rotate,
        "issue a replacement API key; the old one works for an overlap period",
        description="Issue a new API key for the same subject (and label) as KEY_ID and print "
        "it once; KEY_ID keeps working for --overlap more seconds, then is refused.",
        into=keys_sub,
    )
    turn.add_argument("key_id", metavar="KEY_ID", help="the key's id, as `keys list` shows")
    turn.add_argument(
        "--overlap",
        type=_seconds,
        required=True,
        metavar="SECONDS",
        help="how long the old key keeps working (0: it stops now)",
    )
    turn.add_argument(
        "--expires-in",
        type=_seconds,
        metavar="SECONDS",
        help="refuse the new key after this many seconds (default: valid until revoked)",
    )
    turn.add_argument("--json", action="store_true", help="print the key and its details as JSON")
