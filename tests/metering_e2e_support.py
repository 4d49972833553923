"""Helpers of `test_metering_e2e`: a policy written as a TOML file, `tollway worker` run as a real
process with the hooks' secret in its environment, and a callable hook sink.

The callable sink is ``metering_e2e_support:receive`` in a policy: this module is importable by
name because ``tests/`` is on ``sys.path`` (the rootdir conftest puts it there), and the
embedded drain thread imports it from the same ``sys.modules`` the test reads `CALLS` from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tollway.metering.sinks import Message

SECRET_ENV = "TOLLWAY_E2E_HOOK_SECRET"
CALLABLE = "metering_e2e_support:receive"

# --------------------------------------------------------------------------- callable sink

CALLS: list[Message] = []
"""Every message the callable hook was given, in order."""
_lock = threading.Lock()


def receive(message: Message) -> None:
    with _lock:
        CALLS.append(message)


def take_calls() -> list[Message]:
    """The messages received so far (and forget them)."""
    with _lock:
        got = list(CALLS)
        CALLS.clear()
    return got


# --------------------------------------------------------------------------- policy files


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string (the escapes agree for these texts)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """A policy document (nested dicts; ``hooks`` a list of tables) as TOML text."""
    lines: list[str] = []

    def table(path: str, t: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, Mapping)}
        if scalars or all(not isinstance(v, Mapping) for v in t.values()):
            lines.append(f"[{path}]")
            lines.extend(f"{k} = {_value(v)}" for k, v in scalars.items())
        for key, sub in t.items():
            if isinstance(sub, Mapping):
                table(f"{path}.{key}", sub)

    for key, value in doc.items():
        if isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {_value(v)}" for k, v in item.items())
        else:
            table(key, value)
    return "\n".join(lines) + "\n"


def write_policy(path: Path, doc: Mapping[str, Any]) -> Path:
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the worker


def _command(config: Path, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "tollway.cli", "worker", "--config", str(config), *args]


def _env(secret: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if secret is not None:
        env[SECRET_ENV] = secret
    return env


def run_worker(config: Path, *args: str, secret: str | None, timeout: float = 30.0) -> str:
    """``tollway worker --until-idle`` as a real process; its stderr (it must exit 0)."""
    done = subprocess.run(
        _command(config, ("--until-idle", "--block-ms", "20", *args)),
        check=False,
        env=_env(secret),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def start_worker(config: Path, *args: str, secret: str | None) -> subprocess.Popen[str]:
    """``tollway worker`` as a real process, running until `stop_worker`."""
    return subprocess.Popen(
        _command(config, ("--block-ms", "20", *args)),
        env=_env(secret),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """SIGTERM (a clean stop); its stderr (it must exit 0)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the worker did not stop on SIGTERM: {err}") from None
    assert proc.returncode == 0, err
    return err
