"""CPU budget of this container, read from its cgroup rather than the host.

A pod limited to 2 CPUs on a 64-core node sees 64 cores in `os.cpu_count()`; sizing thread
pools from that makes XNNPACK and TensorFlow spin 64 threads on 2 CPUs of quota, and the CFS
throttling that follows multiplies tail latency. The quota is what the scheduler enforces.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 CFS files); None if unlimited."""
    v2 = root / "cpu.max"
    try:
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or "100000")
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def available_cpus() -> int:
    """CPUs this process may run on (affinity / cpuset), before any quota."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads(root: Path = CGROUP_ROOT) -> int:
    """Threads worth running: the quota rounded up, never more than the CPUs we may use."""
    cpus = available_cpus()
    quota = cpu_quota(root)
    if quota is None:
        return max(1, cpus)
    return max(1, min(cpus, math.ceil(quota)))
