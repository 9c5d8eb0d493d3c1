"""torch threads for the server: its share of the CPUs this process may use (``lstmops.cpus``)."""

from __future__ import annotations

from lstmops.cpus import available_cpus, cgroup_quota  # noqa: F401  (the server's own imports)


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
