"""``tollway serve``: the control plane (admin API, OpenAPI document) on uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tollway.cli.commands import OK, config_path

__all__ = ["register"]

SERVE_EXITS = """\
exit status:
  0  the server stopped (Ctrl-C)
  2  usage error; an invalid policy; a policy without [ledger]; a missing certificate file
  3  the store could not be reached
"""


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; expected 1..65535")
    return int(text)


def register(sub: Any, add: Any) -> None:
    command = add(
        "serve",
        run,
        "run the control plane: the admin API (/v1, /openapi.json) on uvicorn",
        description=(
            "Serve the admin API over the policy's store and ledger: subjects and their "
            "standing, plans, resets, credits, admin tokens and the audit log. Every request "
            "needs an admin token (tollway admin token create); every change is audited."
        ),
        exits=SERVE_EXITS,
    )
    command.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    command.add_argument("--port", type=_port, default=8700, help="port (default: 8700)")
    command.add_argument("--ssl-certfile", metavar="FILE", help="serve HTTPS with this cert")
    command.add_argument("--ssl-keyfile", metavar="FILE", help="the certificate's key")


def run(args: argparse.Namespace) -> int:
    from tollway.admin.server import build, serve
    from tollway.errors import ConfigurationError

    for name in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise ConfigurationError(f"--{name.replace('_', '-')}: {path!r} is not a file")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise ConfigurationError("--ssl-certfile and --ssl-keyfile go together")
    admin = build(config_path(args), getattr(args, "store", None))
    serve(
        admin,
        host=args.host,
        port=args.port,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return OK
