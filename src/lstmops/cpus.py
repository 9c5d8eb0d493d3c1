"""How many CPUs this process may really use, and torch threads that fit them.

A container limited to 2 CPUs on a 64-core node sees 64 in ``os.cpu_count()``, and torch starts
that many intra-op threads; OpenMP's waiting threads then spin on cores that other processes need.
Shared by training (``configure_threads``, ``ThreadGovernor``) and serving (``serve/runtime.py``).
No torch import at module level (the server's start-up and the CLI stay light).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_quota(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> float | None:
    """CPUs allowed by the cgroup quota, or None when unlimited or unknown."""
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if v1[0].is_file():
            quota, period = int(v1[0].read_text()), int(v1[1].read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """Whole CPUs this process can use. A fractional quota is rounded down: threads beyond it
    are throttled by the kernel scheduler, which costs more latency than an idle fraction."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, cpus)


def configure_threads(cpus: int | None = None) -> int:
    """Intra-op threads = the CPUs this process may use (quota and affinity; under torchrun, its
    share of them per local rank), not ``os.cpu_count()``: a container limited to 2 CPUs on a
    64-core node would otherwise start 64 threads that the kernel throttles. Returns the count.
    (``ThreadGovernor`` then lowers it while other processes use the CPUs.)"""
    # Under torchrun every rank on this machine shares the CPUs: each takes its part.
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cpus = cpus or max(1, available_cpus() // ranks)
    import torch

    torch.set_num_threads(cpus)
    return cpus


def busy_seconds(cpus: frozenset[int], stat: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds ``cpus`` have spent busy, from their ``cpuN`` lines, or None where /proc is
    not there. Only those CPUs: load on others the process may not run on is none of its business."""
    busy, found = 0, 0
    try:
        for line in stat.read_text().splitlines()[1:]:
            name, *values = line.split()
            if not name.startswith("cpu"):
                break  # the per-CPU lines come first, then intr, ctxt, ...
            if int(name[3:]) in cpus:
                fields = [int(v) for v in values]
                busy += sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # less idle, iowait
                found += 1
    except (OSError, ValueError):
        return None
    return busy / os.sysconf("SC_CLK_TCK") if found else None


class ThreadGovernor:
    """Fits training's intra-op threads to what the other processes leave free on this process's
    CPUs, judged again at most every ``every_s`` seconds from those CPUs' busy time less this
    process's own.

    Why: torch's OpenMP threads spin while they wait for each other, so two processes that each
    run as many threads as there are cores slow each other down many times over (beside a
    competing torch process the default kept 0.07 to 0.21 of its solo speed on 2 cores,
    benchmarks/train_sharing.py); one thread per free core does not. When the CPUs are free
    again, the threads come back. On CPU the forecaster's weights are bitwise the same with 1 or
    2 threads (tests/test_training_engine.py), so this changes speed, never results.
    """

    def __init__(self, most: int, every_s: float = 1.0) -> None:
        self.most, self.every_s = max(1, most), every_s
        self.cpus = frozenset(os.sched_getaffinity(0))
        self.last = self.sample()

    @staticmethod
    def applies() -> bool:
        """Whether the busy time of this process's CPUs says anything about its own share. Not
        under a CPU quota smaller than those CPUs (the quota is its share, whatever runs beside
        it), nor for one of several torchrun ranks on a machine (configure_threads already split
        the CPUs between them, and each would count the others as competition)."""
        quota = cgroup_quota()
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        return ranks <= 1 and (quota is None or quota >= len(os.sched_getaffinity(0)))

    def sample(self) -> tuple[float, float | None, float]:
        times = os.times()
        return time.monotonic(), busy_seconds(self.cpus), times.user + times.system

    @staticmethod
    def others(before: tuple, now: tuple) -> float | None:
        """CPUs the other processes used between two samples."""
        wall = now[0] - before[0]
        if before[1] is None or now[1] is None or wall <= 0:
            return None
        return max(0.0, (now[1] - before[1]) - (now[2] - before[2])) / wall

    def adjust(self) -> int | None:
        """Set the thread count for the next stretch; returns it when it changed."""
        # Called every batch: only a clock read until a judgement is due (no /proc read per batch).
        if time.monotonic() - self.last[0] < self.every_s:
            return None
        now = self.sample()
        others, self.last = self.others(self.last, now), now
        if others is None:
            return None
        import torch

        # A thread is given up only for most of a core in use elsewhere: a light background load
        # (a shell, a monitoring agent) or the noise of 1 s of jiffies does not cost a thread.
        threads = max(1, min(self.most, self.most - int(others + 0.25)))
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads
