"""``python -m tollway.outbound.geocode.stubs``: the local provider stubs, on their own.

Starts one stub per provider kind on 127.0.0.1 (loopback only), prints where each listens and
what a policy needs to use them (its providers' key variables, and ``domain`` / ``scheme``
pointing at the stubs), then serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tollway.errors import TollwayError
from tollway.outbound.geocode.stubs.server import KINDS, StubServer, stop_stubs
from tollway.policy import load
from tollway.policy.model import Policy

PROG = "python -m tollway.outbound.geocode.stubs"
SERVING = "# serving until Ctrl-C or SIGTERM"
"""The last line printed before serving (what a script waits for)."""
STUB_KEY = "stub-key"
"""What the printed ``export`` lines set: a stub takes any non-empty key."""
SUGGESTED_ENV = {
    "google": "GOOGLE_MAPS_API_KEY",
    "opencage": "OPENCAGE_API_KEY",
    "here": "HERE_API_KEY",
    "mapbox": "MAPBOX_API_KEY",
}
"""Key variables for a policy written for the stubs (google and opencage: as in
``examples/tollway.toml``); nominatim takes no key."""

EPILOG = f"""\
provider keys: a stub accepts any non-empty key, so the variables a policy's api_key_env
names only need a value (the printed export lines set them to "{STUB_KEY}"). OpenCage's test
keys 4372eff77b8343cebfc843eb4da4ddc4 and 2e10e5e828262eb243ec0b54681d699a always get its 402
(quota used up) and 403 (key disabled) answers.

example:
  {PROG} --config tollway.toml     # start the stubs, print what to set
  export OPENCAGE_API_KEY={STUB_KEY} GOOGLE_MAPS_API_KEY={STUB_KEY}
  # add the printed domain/scheme lines to the policy's providers, then:
  tollway geocode addresses.csv -o out.csv --config tollway.toml

exit status: 0 when stopped by Ctrl-C or SIGTERM; 2 for a usage error or a policy that
cannot be read; 3 when a port cannot be bound.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve local stand-ins for paid geocoding APIs (each speaking its "
        "provider's real wire format) on 127.0.0.1, print the environment and the policy keys "
        "that point tollway at them, and run until Ctrl-C or SIGTERM.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a policy: serve one stub per kind of its providers and print their key "
        "variables and the domain/scheme lines for each provider",
    )
    parser.add_argument(
        "--kinds",
        metavar="KIND,...",
        help=f"the stubs to serve, comma-separated, of {', '.join(KINDS)} (default: the "
        "policy's kinds with --config, else all)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        metavar="N",
        help="the first stub's port, the next ones N+1, N+2... (default: free ports)",
    )
    return parser


class _UsageError(Exception):
    pass


def _kinds(args: argparse.Namespace, policy: Policy | None) -> list[str]:
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise _UsageError(
                f"--kinds: {', '.join(unknown) or 'none given'}; expected some of "
                f"{', '.join(KINDS)}"
            )
        return list(dict.fromkeys(kinds))
    if policy is None:
        return list(KINDS)
    found = [p.client.kind for p in policy.providers.values() if p.client.kind in KINDS]
    if not found:
        raise _UsageError(f"{args.config}: no provider has a kind of {', '.join(KINDS)}")
    return list(dict.fromkeys(k for k in found if k is not None))


def _start(kinds: list[str], first_port: int) -> dict[str, StubServer]:
    stubs: dict[str, StubServer] = {}
    try:
        for i, kind in enumerate(kinds):
            stubs[kind] = StubServer(kind, port=first_port + i if first_port else 0).start()
    except BaseException:
        stop_stubs(stubs)
        raise
    return stubs


def describe(stubs: dict[str, StubServer], policy: Policy | None) -> list[str]:
    """What the command prints: where each stub listens, then what a policy needs."""
    lines = ["geocoding stubs on 127.0.0.1 (loopback only); Ctrl-C or SIGTERM stops them"]
    lines += [f"  {kind:<10} {stub.url}" for kind, stub in stubs.items()]
    exports: dict[str, None] = {}
    providers: list[tuple[str, StubServer]] = []
    if policy is None:
        exports.update(dict.fromkeys(SUGGESTED_ENV[k] for k in stubs if k in SUGGESTED_ENV))
        providers = list(stubs.items())
    else:
        for name, provider in policy.providers.items():
            kind = provider.client.kind
            if kind in stubs:
                providers.append((name, stubs[kind]))
                if provider.client.api_key_env is not None:
                    exports.setdefault(provider.client.api_key_env)
    lines += ["", "# the environment the policy needs: its providers' keys (a stub takes any)"]
    lines += [f"export {name}={STUB_KEY}" for name in exports] or ["# (none: no key needed)"]
    lines += ["", "# and in the policy, each provider pointed at its stub:"]
    for i, (name, stub) in enumerate(providers):
        if i:
            lines.append("")
        if policy is None:
            lines += [f"[providers.{name}]", f'kind = "{name}"']
            if name in SUGGESTED_ENV:
                lines.append(f'api_key_env = "{SUGGESTED_ENV[name]}"')
        else:
            lines.append(f"[providers.{name}]  # kind {stub.kind}")
        lines += [f'domain = "{stub.domain}"', f'scheme = "{stub.scheme}"']
    return [*lines, "", SERVING]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535 - len(KINDS):
        print(f"{PROG}: error: --port: {args.port} is out of range", file=sys.stderr)
        return 2
    try:
        policy = load(Path(args.config)) if args.config else None
    except TollwayError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        kinds = _kinds(args, policy)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        stubs = _start(kinds, args.port)
    except OSError as exc:
        print(f"{PROG}: error: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 3
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print("\n".join(describe(stubs, policy)), flush=True)
        while not stop.wait(0.5):  # a timeout, so signals are handled promptly everywhere
            pass
    finally:
        stop_stubs(stubs)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
