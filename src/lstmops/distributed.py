"""Data-parallel training when launched by ``torchrun`` (DistributedDataParallel).

NCCL on GPUs, gloo on CPU. Every rank draws the same global batches from the same seed and
trains on its own rows of each; gradients are averaged, so a global batch trains as it would in
one process. Only rank 0 logs and writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """This process's place in the job (a single process outside torchrun)."""
    if not (launched_by_torchrun() and torch.distributed.is_initialized()):
        return World()
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> World:
    """Join the process group torchrun set up (idempotent); a no-op outside torchrun."""
    if not launched_by_torchrun():
        return World()
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    world = current()
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's rows of a global batch."""
    return batch[world.rank :: world.size]


def wrap(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    if world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def barrier_and_close(world: World) -> None:
    if world.size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def torchrun(nproc: int, args: list[str], cwd: Path) -> None:
    """Run ``lstmops ARGS`` in ``cwd`` as ``nproc`` processes under torchrun on this machine (one
    per GPU; --standalone: the rendezvous is local). Their output passes through; a failed rank
    fails the whole job in one line, after the ranks' own messages."""
    from lstmops.errors import StageFailed

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lstmops.cli", *args]  # fmt: skip
    code = subprocess.run(command, cwd=cwd).returncode
    if code != 0:
        raise StageFailed(f"{args[0]}: torchrun --nproc_per_node {nproc} failed with exit code {code} (the ranks' errors are above)")
