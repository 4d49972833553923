"""The `tollway` command: the parser, and the one place errors become exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from tollway import __version__
from tollway.cli import admin as admin_cli
from tollway.cli import billing as billing_cli
from tollway.cli import commands, keys
from tollway.cli import demo as demo_cli
from tollway.cli import geocode as geocode_cli
from tollway.cli import hooks as hooks_cli
from tollway.cli import reconcile as reconcile_cli
from tollway.cli import serve as serve_cli
from tollway.cli import worker as worker_cli
from tollway.cli.output import PROG, error
from tollway.errors import PolicyError, StoreError, TollwayError

Command = Callable[[argparse.Namespace], int]

EXIT_CODES = """\
exit status (each command's --help gives its own):
  0  success
  1  acquire: denied; policy check: the policy has problems; reconcile: a counter drifts
  2  usage error, invalid policy or setting, unknown subject, plan, operation or limit
  3  the store could not be reached, or refused a command
"""

STORE_EXITS = """\
exit status:
  0  success
  2  usage error, invalid policy or setting, unknown subject, plan, operation or limit
  3  the store could not be reached, or refused a command
"""

ACQUIRE_EXITS = """\
exit status:
  0  allowed
  1  denied (the decision, printed, names every violated limit)
  2  usage error, invalid policy or setting, unknown subject, plan or operation
  3  the store could not be reached, or refused a command
"""

CHECK_EXITS = """\
exit status:
  0  the policy is valid
  1  the policy has problems (every one listed on stderr)
  2  usage error, or no policy file to check
"""

SCHEMA_EXITS = """\
exit status:
  0  the schema was printed
"""

CONFIG_HELP = f"the policy file (default: ./{commands.DEFAULT_CONFIG})"
STORE_HELP = (
    "store URL, overriding the policy's [store] url: memory://, "
    "redis://HOST:PORT/DB, rediss://..., redis+cluster://HOST:PORT"
)


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount; expected e.g. 0.25")
    return value


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph texts; keeps a text with line breaks (the exit status table) as is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _store_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    common.add_argument("--store", metavar="URL", help=STORE_HELP)
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fair-usage control: rate limits, quotas and money budgets, on Redis or "
        "in memory. Inspect and operate the counters of a tollway policy.",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _store_options()

    def add(
        name: str,
        run: Command,
        help: str,
        *,
        description: str | None = None,
        parents: Sequence[argparse.ArgumentParser] = (common,),
        into: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
        exits: str = STORE_EXITS,
    ) -> argparse.ArgumentParser:
        command = into.add_parser(
            name,
            help=help,
            description=description or help,
            parents=list(parents),
            epilog=exits,
            formatter_class=_Formatter,
        )
        command.set_defaults(run=run)
        return command

    demo_cli.register(sub, add)

    policy = sub.add_parser(
        "policy",
        help="check a policy file, or print its JSON Schema",
        description="Check a policy file, or print its JSON Schema.",
    )
    policy.set_defaults(run=lambda args: _help(policy))
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND")
    check = add(
        "check",
        commands.policy_check,
        "validate a policy file, listing every problem",
        description="Validate a policy file. Prints 'ok: FILE (...)', or every problem, one per "
        "line, on stderr as FILE: KEY.PATH: what is wrong.",
        parents=(),
        into=policy_sub,
        exits=CHECK_EXITS,
    )
    check.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help=f"the policy file (default: --config, else ./{commands.DEFAULT_CONFIG})",
    )
    check.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    add(
        "schema",
        commands.policy_schema_command,
        "print the JSON Schema of policy files",
        parents=(),
        into=policy_sub,
        exits=SCHEMA_EXITS,
    )

    acquire = add(
        "acquire",
        commands.acquire,
        "take units of an operation for a subject; print the decision as JSON",
        description="Take COST units of OPERATION for SUBJECT under every limit of its plan, or "
        "none, and print the decision as JSON. Exit status 0 when allowed, 1 when "
        "denied.",
        exits=ACQUIRE_EXITS,
    )
    acquire.add_argument("subject", metavar="SUBJECT")
    acquire.add_argument("operation", metavar="OPERATION")
    acquire.add_argument(
        "--cost", type=int, metavar="N", help="units to take (default: the operation's cost)"
    )
    acquire.add_argument(
        "--amount",
        type=_decimal,
        metavar="DECIMAL",
        help="money to count against budgets (default: cost x price)",
    )

    usage = add(
        "usage",
        commands.usage,
        "print where every limit of a subject stands, as JSON",
        description="Print where every limit of SUBJECT's plan stands, as JSON, consuming "
        "nothing: per limit its kind, limit, used, remaining, reset_after (seconds until it is "
        "whole again) and used_up (nothing left of it now; a quota's grace may still let a "
        "little through).",
    )
    usage.add_argument("subject", metavar="SUBJECT")

    reset = add(
        "reset",
        commands.reset,
        "clear a subject's counters",
        description="Clear SUBJECT's counters in their current windows (of one limit with "
        "--limit) and print how many were cleared.",
    )
    reset.add_argument("subject", metavar="SUBJECT")
    reset.add_argument("--limit", metavar="NAME", help="clear only this limit's counter")

    assign = add(
        "assign",
        commands.assign,
        "put a subject on a plan",
        description="Put SUBJECT on PLAN (- or --default: back to the policy's default plan) and "
        "print the plan now in force.",
    )
    assign.add_argument("subject", metavar="SUBJECT")
    assign.add_argument("plan", nargs="?", metavar="PLAN", help="a plan of the policy, or -")
    assign.add_argument(
        "--default",
        action="store_true",
        help="clear the assignment: the subject gets the default plan",
    )
    keys.register(sub, add)
    geocode_cli.register(sub, add)
    worker_cli.register(sub, add)
    reconcile_cli.register(sub, add)
    hooks_cli.register(sub, add)
    billing_cli.register(sub, add)
    admin_cli.register(sub, add)
    serve_cli.register(sub, add)
    return parser


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return commands.FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (argparse's own exits included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else commands.FAILED
    run: Command | None = getattr(args, "run", None)
    if run is None:
        return _help(parser)
    try:
        return run(args)
    except PolicyError as exc:
        for issue in exc.issues:
            error(issue)
        return commands.FAILED
    except StoreError as exc:
        error(exc)
        return commands.STORE_FAILED
    except TollwayError as exc:
        error(exc)
        return commands.FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `tollway policy schema | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
