"""Validation and test RMSE (original units) of full training runs, per configuration and seed.

    .venv/bin/python benchmarks/compare_modes.py [--seeds 42,1,2] [NAME:KEY=VALUE;KEY=VALUE ...]

Each configuration is params.yaml plus its overrides (none: the defaults). Each run is
`lstmops.train.fit` as `lstmops train` does it (early stopping, best weights kept); the kept weights
are then scored on the validation and test windows with exactly `window.input_steps` of history, as
the evaluate stage does. This is how the README's table of training modes was measured, e.g.:

    .venv/bin/python benchmarks/compare_modes.py default: \\
        "window:train.mode=window;train.epochs=8;train.patience=3"
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from lstmops import config
from lstmops.data.ingest import ingest
from lstmops.data.prepare import Prepared, prepare
from lstmops.data.windows import origins
from lstmops.train import fit, load_model, mean_loss

ROOT = Path(__file__).resolve().parents[1]


def rmse(model, series: torch.Tensor, meta: Prepared, part: str) -> float:
    """RMSE in the target's original units over one span's windows."""
    at = torch.from_numpy(origins(meta.split, part, meta.input_steps, meta.horizon))
    return math.sqrt(mean_loss(model, series, at, meta, 512)) * meta.std[meta.target_index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=["default:"], help="NAME:KEY=VALUE;KEY=VALUE")
    parser.add_argument("--seeds", default="42,1,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = config.load(ROOT)
        ingest(cfg.data, ROOT, work / "snapshot.parquet")
        prepare(cfg, work / "snapshot.parquet", work / "prepared")
        meta = Prepared.load(work / "prepared")
        series = torch.from_numpy(np.load(work / "prepared" / "series.npy"))
        for spec in args.configs:
            name, _, rest = spec.partition(":")
            overrides = [o for o in rest.split(";") if o]
            scores = []
            for seed in (int(s) for s in args.seeds.split(",")):
                run_cfg = config.load(ROOT, [*overrides, f"seed={seed}"])
                _, summary = fit(run_cfg, work / "prepared", work / "checkpoint.pt")
                model, _ = load_model(work / "checkpoint.pt")
                scores.append((rmse(model, series, meta, "val"), rmse(model, series, meta, "test")))
                print(f"{name} seed {seed}: val RMSE {scores[-1][0]:.4f}  test RMSE {scores[-1][1]:.4f}  "
                      f"fit {summary['fit_seconds']} s  {summary['windows_per_s']:,} windows/s  "
                      f"best epoch {summary['best_epoch']}/{summary['epochs_run']}", flush=True)  # fmt: skip
            val, test = (sum(s[i] for s in scores) / len(scores) for i in (0, 1))
            print(f"{name} mean: val RMSE {val:.4f}  test RMSE {test:.4f}", flush=True)


if __name__ == "__main__":
    main()
