"""How many CPUs this process may use: the default number of encoder sessions.

One session per CPU, each with one intra-op thread: on the project's 2-core machines two sessions
embed 1.8-2.0x the texts of one in large calls (``benchmarks/encoder_sessions.py``), while one
session with two intra-op threads gains little on the small runs a router makes. The count is the
process's CPU affinity, capped by its cgroup's CPU quota (a container limited to 1.5 CPUs gets one
session), so a replica neither idles cores it has nor oversubscribes a quota it cannot see in the
affinity mask.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


def cgroup_quota(v2: Path = CGROUP_V2_MAX, v1: Path = CGROUP_V1) -> float | None:
    """The CPUs the process's cgroup may use (quota over period), or None when it is not limited."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def available_cpus() -> int:
    """CPUs this process may run on, capped by its cgroup quota (rounded down), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        count = min(count, math.floor(quota))
    return max(1, min(count, 64))
