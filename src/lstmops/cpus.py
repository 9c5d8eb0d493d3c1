"""How many CPUs this process may really use, and torch threads that fit them.

A container limited to 2 CPUs on a 64-core node sees 64 in ``os.cpu_count()``, and torch starts
that many intra-op threads; OpenMP's waiting threads then spin on cores that other processes need.
Shared by training (``configure_threads``) and serving (``serve/runtime.py``). No torch import at
module level: ``configure_threads`` must run before torch's OpenMP pool starts.
"""

from __future__ import annotations

import os
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
    share of them per local rank), and OpenMP threads
    that sleep when they wait instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, unless set).

    Spinning is what makes a training 17x slower beside one other torch process on 2 cores: each
    side's waiting threads burn the cores the other needs (``benchmarks/train_sharing.py``). The
    wait policy is read when torch's OpenMP runtime loads, so call this before ``import torch``
    (the train stage does); afterwards only the thread count takes effect. Returns the count.
    """
    # Under torchrun every rank on this machine shares the CPUs: each takes its part.
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cpus = cpus or max(1, available_cpus() // ranks)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(cpus)
    return cpus
