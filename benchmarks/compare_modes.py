"""Validation and test RMSE (original units) of full training runs, per configuration and seed.

    .venv/bin/python benchmarks/compare_modes.py [--seeds 42,1,2] [NAME:KEY=VALUE;KEY=VALUE ...]

Each configuration is params.yaml plus overrides of `seed`, `model.*` or `train.*` (the data is
prepared once, with the defaults). Each run is `lstmops.train.fit` as `lstmops train` does it (early
stopping, best weights kept); the kept weights are then scored on the validation and test windows
with exactly `window.input_steps` of history, the windows the evaluate stage scores. The README's
table of training modes comes from:

    .venv/bin/python benchmarks/compare_modes.py default: \\
        "window:train.mode=window;train.epochs=8;train.patience=3" \\
        "previous:train.spans_per_batch=4;train.positions=336;train.backprop_burn_in=true;train.epochs=80"
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import ROOT, load_prepared, prepared_dir

from lstmops import config
from lstmops.tasks.forecast.prepare import Prepared
from lstmops.tasks.forecast.windows import origins
from lstmops.tasks.forecast.task import ForecastTrainer, load_model, mean_loss
from lstmops.train import fit

TUNABLE = ("seed", "model.", "train.")  # what may change between runs sharing one prepared dataset


def rmse(model, series: torch.Tensor, meta: Prepared, part: str) -> float:
    """RMSE in the target's original units over one span's windows."""
    at = torch.from_numpy(origins(meta.split, part, meta.input_steps, meta.horizon))
    return math.sqrt(mean_loss(model, series, at, meta, 512)) * meta.std[meta.target_index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=["default:"], help="NAME:KEY=VALUE;KEY=VALUE")
    parser.add_argument("--seeds", default="42,1,2")
    args = parser.parse_args()
    with prepared_dir(config.load(ROOT)) as directory:
        meta, host_series = load_prepared(directory)
        series = torch.from_numpy(host_series)
        checkpoint = directory.parent / "checkpoint.pt"
        for spec in args.configs:
            name, _, rest = spec.partition(":")
            overrides = [o for o in rest.split(";") if o]
            if bad := [o for o in overrides if not o.startswith(TUNABLE)]:
                parser.error(f"{name}: only seed, model.* and train.* can change here, not {bad[0]!r}")
            scores = []
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = config.load(ROOT, [*overrides, f"seed={seed}"])
                _, summary = fit(cfg, lambda device: ForecastTrainer(cfg, directory, device), checkpoint)
                model, _ = load_model(checkpoint)
                scores.append((rmse(model, series, meta, "val"), rmse(model, series, meta, "test")))
                print(f"{name} seed {seed}: val RMSE {scores[-1][0]:.4f}  test RMSE {scores[-1][1]:.4f}  "
                      f"fit {summary['fit_seconds']} s  {summary['windows_per_s']:,} windows/s  "
                      f"best epoch {summary['best_epoch']}/{summary['epochs_run']}", flush=True)  # fmt: skip
            val, test = (sum(s[i] for s in scores) / len(scores) for i in (0, 1))
            print(f"{name} mean: val RMSE {val:.4f}  test RMSE {test:.4f}", flush=True)


if __name__ == "__main__":
    main()
