"""How much CPU *other* processes used while a worker ran (this VM is shared and noisy).

foreign = machine busy time (/proc/stat) - our workers - our redis-server - this process.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_s() -> float:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK  # guest time is already inside user


def pid_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _ours_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Sample:
    wall: float
    busy: float
    ours: float


def sample(server_pid: int | None) -> Sample:
    return Sample(time.monotonic(), busy_s(), _ours_s() + pid_cpu_s(server_pid))


def foreign_share(a: Sample, b: Sample) -> float | None:
    """CPU used by other processes between two samples, as a fraction of one CPU."""
    wall = b.wall - a.wall
    if wall <= 0 or b.busy == 0:
        return None
    return max(0.0, (b.busy - a.busy) - (b.ours - a.ours)) / wall
