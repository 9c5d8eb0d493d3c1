"""Training throughput alone and beside a competing torch process, per thread policy, in one run.

    .venv/bin/python benchmarks/train_sharing.py [--epochs 8] [--policies default,lstmops]

Trains the default forecaster (params.yaml) for ``--epochs`` epochs in a fresh process, once alone
and once while another process multiplies small matrices with torch's default threads (what a
second training, a notebook or a server on the same machine does), for each thread policy:
  default  torch's own: as many intra-op threads as os.cpu_count(), fixed (train.adapt_threads=false)
  lstmops  what `lstmops train` does: threads from the CPU quota and affinity (cpus.configure_threads),
           then fewer while other processes use the cores, and back (cpus.ThreadGovernor)
  one      a single intra-op thread, fixed (the fairest share, slower alone)
  spin=N   fixed threads whose OpenMP waits spin N times before sleeping (GOMP_SPINCOUNT)
  passive  fixed threads whose OpenMP waits sleep at once (OMP_WAIT_POLICY=PASSIVE)
Prints training windows/s and the ratio beside/alone per policy, and each policy's solo rate
against the default's: a ratio from one run, not an absolute claim.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPETITOR = """
import torch
a, b = torch.randn(256, 256), torch.randn(256, 256)
while True:
    for _ in range(200):
        a = torch.tanh(a @ b)
"""


def child(epochs: int, policy: str) -> None:
    """Train in this process under ``policy`` and print the engine's windows/s as JSON."""
    if policy.startswith("spin="):  # OpenMP threads spin this many times before they sleep (GNU OpenMP)
        os.environ["GOMP_SPINCOUNT"] = policy.removeprefix("spin=")
    if policy == "passive":  # read when OpenMP starts: before torch loads
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if policy == "lstmops":
        from lstmops.cpus import configure_threads

        configure_threads()  # before torch starts its thread pool, as `lstmops train` does
    import tempfile
    from functools import partial

    import torch

    if policy == "one":
        torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from _common import ROOT, prepared_dir

    from lstmops import config, paths
    from lstmops.tasks.forecast import task
    from lstmops.train import fit

    fixed = [] if policy == "lstmops" else ["train.adapt_threads=false"]
    cfg = config.load(ROOT, [f"train.epochs={epochs}", f"train.patience={epochs}", "train.device=cpu", *fixed])
    with prepared_dir(cfg) as prepared, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / paths.PREPARED).parent.mkdir(parents=True)
        os.symlink(prepared, root / paths.PREPARED)
        _, summary = fit(cfg, partial(task.trainer, cfg, root), root / "checkpoint.pt")
    print(json.dumps({"windows_per_s": summary["windows_per_s"], "threads": torch.get_num_threads()}))


def train_once(epochs: int, policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, __file__, "--child", "--epochs", str(epochs), "--policy", policy],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def beside_competitor(epochs: int, policy: str) -> dict:
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
    try:
        time.sleep(2)  # its thread pool is up and spinning
        return train_once(epochs, policy)
    finally:
        competitor.kill()
        competitor.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--policies", default="default,lstmops,one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="lstmops", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.epochs, args.policy)
        return
    print(f"{os.cpu_count()} CPUs; default forecaster, {args.epochs} epochs per run; competitor: 256x256 matmuls, default threads")
    rows = {}
    for policy in args.policies.split(","):
        solo, shared = train_once(args.epochs, policy), beside_competitor(args.epochs, policy)
        rows[policy] = (solo["windows_per_s"], shared["windows_per_s"], solo["threads"])
    base = rows.get("default", next(iter(rows.values())))[0]
    print(f"{'policy':<10}{'threads':>8}{'alone w/s':>12}{'beside w/s':>12}{'beside/alone':>14}{'alone/default':>15}")
    for policy, (solo, shared, threads) in rows.items():
        print(f"{policy:<10}{threads:>8}{solo:>12,.0f}{shared:>12,.0f}{shared / solo:>14.3f}{solo / base:>15.3f}")


if __name__ == "__main__":
    main()
