"""``tollway admin token create|list|revoke`` and ``tollway audit verify|show``.

They act on the policy's ``[ledger] url`` (or ``--ledger URL``). The CLI acts as ``admin``
under the name ``cli:<OS user>``: whoever can run it with the policy can read the ledger
anyway. Creating and revoking a token are audit records like any change made by the API.
``token create`` prints the raw token alone on the last line of its output (so a script can
take ``| tail -n 1``); it is shown once, only its sha256 is kept.
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from tollway.admin.roles import ROLES, Principal, check_scope
from tollway.admin.store import AdminStore, system_clock
from tollway.admin.tokens import TokenInfo
from tollway.cli.commands import FAILED, OK, config_path
from tollway.cli.output import note, plural, table
from tollway.clock import utc
from tollway.errors import ConfigurationError, InvalidArgumentError
from tollway.metering.ledger import Ledger, open_ledger
from tollway.policy import load
from tollway.policy.admin import parse_span_s

__all__ = ["register"]

TAMPERED = 1
ADMIN_EXITS = """\
exit status:
  0  success
  2  usage error (an unknown role, a bad scope, name or lifetime), an unknown token id,
     an invalid policy, no [ledger] url
"""
VERIFY_EXITS = """\
exit status:
  0  the chain verifies: every record is there and unchanged
  1  tampered: the first bad seq and why are printed
  2  usage error, an invalid policy, no [ledger] url
"""


def register(sub: Any, add: Any) -> None:
    admin = sub.add_parser(
        "admin",
        help="admin tokens of the control plane (tollway serve)",
        description="Create, list and revoke the admin tokens of the control plane.",
    )
    admin.set_defaults(run=lambda args: _help(admin))
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="COMMAND")
    token = admin_sub.add_parser(
        "token",
        help="create, list and revoke admin tokens",
        description="Create, list and revoke admin tokens (kept as sha256 hashes).",
    )
    token.set_defaults(run=lambda args: _help(token))
    token_sub = token.add_subparsers(dest="token_command", metavar="COMMAND")

    create = add(
        "create",
        token_create,
        "create an admin token; the raw token is printed once, alone on the last line",
        parents=(),
        into=token_sub,
        exits=ADMIN_EXITS,
    )
    _common(create)
    create.add_argument("--role", required=True, choices=ROLES, help="the token's role")
    create.add_argument("--name", required=True, metavar="NAME", help="who or what holds it")
    create.add_argument(
        "--scope", metavar="PREFIX", type=_scope, help="only subjects starting with PREFIX"
    )
    create.add_argument(
        "--expires-in",
        metavar="SPAN",
        type=_span,
        default=...,
        help='lifetime like 30d, 12h, or "never" (default: [admin] token_ttl, 90d)',
    )
    listing = add(
        "list", token_list, "list admin tokens", parents=(), into=token_sub, exits=ADMIN_EXITS
    )
    _common(listing)
    revoke = add(
        "revoke", token_revoke, "revoke an admin token", parents=(), into=token_sub,
        exits=ADMIN_EXITS,
    )  # fmt: skip
    _common(revoke)
    revoke.add_argument("id", metavar="ID", help="the token's id (adm_...)")

    audit = sub.add_parser(
        "audit",
        help="verify and show the control plane's audit log",
        description="Verify the hash chain of the audit log, or show its newest records.",
    )
    audit.set_defaults(run=lambda args: _help(audit))
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND")
    verify = add(
        "verify",
        audit_verify,
        "check that no audit record was edited or deleted",
        description="Walk the audit log's hash chain from the first record to the head. "
        "Prints the head's seq and hash: keep them elsewhere to detect a rewrite later.",
        parents=(),
        into=audit_sub,
        exits=VERIFY_EXITS,
    )
    _common(verify)
    show = add(
        "show", audit_show, "print the newest audit records", parents=(), into=audit_sub,
        exits=ADMIN_EXITS,
    )  # fmt: skip
    _common(show)
    show.add_argument("--limit", type=_limit, default=20, metavar="N", help="default: 20")
    show.add_argument("--before", type=int, metavar="SEQ", help="only records before SEQ")
    show.add_argument("--json", action="store_true", help="one JSON document per line")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="the policy file")
    parser.add_argument("--ledger", metavar="URL", help="the ledger, instead of [ledger] url")


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return FAILED


def _scope(text: str) -> str:
    try:
        scope = check_scope(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert scope is not None
    return scope


def _span(text: str) -> int | None:
    if text == "never":
        return None
    try:
        return parse_span_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text[:20]!r}: expected a whole number 1..1000")
    return int(text)


def _open(args: argparse.Namespace) -> tuple[Ledger, int]:
    """The ledger, and the policy's token lifetime."""
    policy = load(config_path(args)) if args.config is not None or args.ledger is None else None
    ttl = policy.admin.token_ttl_s if policy is not None else 90 * 86_400
    url = args.ledger or (policy.ledger.url if policy is not None else None)
    if url is None:
        raise ConfigurationError(
            "no ledger: the policy has no [ledger] url; set it or pass --ledger URL"
        )
    return open_ledger(url), ttl


def cli_principal() -> Principal:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return Principal(token_id="cli", name=f"cli:{user}"[:64], role="admin")


def _when(us: int | None) -> str:
    return "-" if us is None else utc(us).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_create(args: argparse.Namespace) -> int:
    ledger, default_ttl = _open(args)
    with ledger:
        ttl = default_ttl if args.expires_in is ... else args.expires_in
        created = AdminStore(ledger).create_token(
            name=args.name, role=args.role, scope=args.scope, ttl_s=ttl, actor=cli_principal()
        )
    info = created.token
    print(
        f"created admin token {info.id} ({info.name}): role {info.role}, scope "
        f"{info.scope or 'every subject'}, expires "
        f"{'never' if info.expires_at_us is None else _when(info.expires_at_us)}"
    )
    print("the token is shown once, on the next line; only its sha256 is kept")
    print(created.raw)
    return OK


def _rows(tokens: list[TokenInfo], now_us: int) -> list[list[str]]:
    return [
        [
            t.id,
            t.name,
            t.role,
            t.scope or "*",
            t.status(now_us),
            _when(t.created_at_us),
            _when(t.expires_at_us),
            _when(t.last_used_at_us),
        ]
        for t in tokens
    ]


def token_list(args: argparse.Namespace) -> int:
    ledger, _ = _open(args)
    with ledger:
        tokens = AdminStore(ledger).list_tokens()
    headers = ["id", "name", "role", "scope", "status", "created", "expires", "last used"]
    for line in table(headers, _rows(tokens, system_clock())):
        print(line)
    note(plural(len(tokens), "admin token"))
    return OK


def token_revoke(args: argparse.Namespace) -> int:
    ledger, _ = _open(args)
    with ledger:
        info = AdminStore(ledger).revoke_token(args.id, actor=cli_principal())
    print(f"revoked admin token {info.id} ({info.name}) at {_when(info.revoked_at_us)}")
    return OK


def audit_verify(args: argparse.Namespace) -> int:
    ledger, _ = _open(args)
    with ledger:
        report = AdminStore(ledger).verify()
    head = f"head seq {report.head_seq} hash {report.head_hash}"
    if report.ok:
        print(f"ok: {plural(report.checked, 'record')} verified; {head}")
        return OK
    print(f"tampered: seq {report.first_bad_seq}: {report.reason}")
    print(f"{plural(report.checked, 'record')} verified before it; {head}")
    return TAMPERED


def audit_show(args: argparse.Namespace) -> int:
    ledger, _ = _open(args)
    with ledger:
        records = AdminStore(ledger).audit_log(args.limit, args.before)
    if args.json:
        for record in records:
            print(json.dumps(record.to_dict(), ensure_ascii=False))
        return OK
    rows = [
        [str(r.seq), _when(r.at_us), f"{r.actor_name} ({r.role})", r.action, r.target[:60]]
        for r in records
    ]
    for line in table(["seq", "at", "actor", "action", "target"], rows, right=(0,)):
        print(line)
    return OK
