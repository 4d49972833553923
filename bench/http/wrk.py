"""Run wrk pinned to a CPU and parse its text output."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}  # to milliseconds


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def version() -> str:
    path = shutil.which("wrk")
    if path is None:
        return "not installed"
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else "?"


def command(url: str, *, duration: int, connections: int, cpu: int | None) -> list[str]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def parse(text: str) -> dict[str, Any]:
    """requests/s, p50/p99 (ms), requests, non-2xx (wrk counts status >= 400 there) and socket
    errors. Raises ValueError when the output is not a finished wrk run."""
    out: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise ValueError("no 'Requests/sec' line in wrk output")
    out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", text)
    if not m:
        raise ValueError("no 'N requests in' line in wrk output")
    out["requests"] = int(m.group(1))
    out["elapsed_ms"] = _ms(m.group(2))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.MULTILINE)
        if not m:
            raise ValueError(f"no {pct}% latency line (was --latency given?)")
        out[f"p{pct}_ms"] = _ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    out["socket_errors_text"] = m.group(0) if m else ""
    return out
