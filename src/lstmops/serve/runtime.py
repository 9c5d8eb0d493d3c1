"""How many CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota
(a container limited to 2 CPUs on a 64-core node sees 64 in ``os.cpu_count()``)."""

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


def default_threads(cpus: int, workers: int) -> int:
    """torch threads per worker: its share of the CPUs less one for its event loop (HTTP, JSON),
    at least one. Measured on 2 cores: a second intra-op thread, competing with the event loop,
    made batched forward passes several times slower (OpenMP threads wait on each other), so
    on small machines one thread per worker serves more and faster (benchmarks/serve_load.py)."""
    return max(1, cpus // max(1, workers) - 1)


def configure_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormal floats slow an LSTM several-fold on CPU
