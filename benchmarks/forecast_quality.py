"""Forecast quality of the forecast task's settings: test RMSE per seed, fit time, backtest mean.

    .venv/bin/python benchmarks/forecast_quality.py                      # params.yaml as it is
    .venv/bin/python benchmarks/forecast_quality.py -S model.seasonal_skip=null -S model.hidden_size=64
    .venv/bin/python benchmarks/forecast_quality.py -P tune/best_params.yaml --seeds 42
    .venv/bin/python benchmarks/forecast_quality.py --before --series taylor     # needs the bench extra

``--before`` first runs the settings the defaults had before tuning (``BEFORE``), then the ones
given, and prints the ratio of their means. ``--series taylor`` replaces the embedded data with
the half-hourly electricity demand of England and Wales, 5 June - 27 August 2000 (Taylor 2003),
which ``pmdarima`` ships inside its wheel (``pmdarima.datasets.load_taylor``; ``pip install -e
'.[bench]'``): written to a scratch CSV and read through ``-S`` overrides only, as a user would.

For each seed, the source is ingested (params + overrides) into a scratch directory once and the
rolling-origin backtest runs as ``lstmops backtest`` does (``backtest.run_fold``: every fold
prepared and retrained from scratch, scored with the baselines). The last fold is the pipeline's
own split, so its score is the test RMSE ``lstmops run`` reports for that seed (CPU runs are
bit-identical). Printed: per seed the test RMSE, the last fold's fit seconds and the backtest
mean; then the means over seeds, and the LSTM's ratio to the best naive baseline on both.
Nothing is logged to MLflow and the project is not touched.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lstmops import config, paths  # noqa: E402
from lstmops.tasks.forecast.backtest import fold_splits, run_fold  # noqa: E402
from lstmops.data.ingest import ingest  # noqa: E402
from lstmops.tasks.forecast.tune import read_params_file  # noqa: E402


def one_seed(cfg: config.Config, folds: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="lstmops-quality-") as scratch:
        root = Path(scratch)
        snapshot = root / paths.SNAPSHOT
        ingest(cfg.data, ROOT, snapshot)
        # run_fold reads the snapshot under its root and the source's target from it.
        target = pd.read_parquet(snapshot, columns=[cfg.data.target])[cfg.data.target].to_numpy(np.float64)
        splits = fold_splits(len(target), cfg.split.val_fraction, cfg.split.test_fraction, folds)
        results = []
        for k, split in enumerate(splits, start=1):
            with tempfile.TemporaryDirectory(dir=root) as fold_dir:
                results.append({"fold": k, **run_fold(cfg, root, split, target, Path(fold_dir))})
        return results


# The forecaster's defaults before `lstmops tune` (issue 12): params.yaml's values until then.
BEFORE = [
    "model.seasonal_skip=null", "model.hidden_size=64", "model.num_layers=2", "model.dropout=0.1",
    "train.learning_rate=0.003", "train.weight_decay=0.0", "train.positions=84", "train.spans_per_batch=16",
    "train.ema_decay=0.995",
]  # fmt: skip


def taylor_overrides(scratch: Path) -> list[str]:
    """The Taylor (2003) series as a CSV with a time column, and the -S overrides that read it."""
    from pmdarima.datasets import load_taylor

    demand = load_taylor()
    times = pd.date_range("2000-06-05 00:00", periods=len(demand), freq="30min")
    path = scratch / "taylor_demand.csv"
    pd.DataFrame({"timestamp": times, "demand_mw": demand}).to_csv(path, index=False)
    return [
        f"data.source={path}", "data.target=demand_mw", "data.features=[demand_mw]",
        "data.bounds={demand_mw: [0.0, 100000.0]}", "mlflow.model_name=lstmops-taylor",
    ]  # fmt: skip


def measure(overrides: list[str], seeds: list[int], folds: int) -> tuple[float, float, float]:
    """Print a line per seed and the means; return (mean test RMSE, mean backtest RMSE, max fit s)."""
    print(f"settings: params.yaml {' '.join('-S ' + o for o in overrides) or '(as is)'}; folds {folds}", flush=True)
    rows = []
    for seed in seeds:
        cfg = config.load(ROOT, [*overrides, f"seed={seed}"])
        results = one_seed(cfg, folds)
        last = results[-1]
        test = last["metrics"]["lstm"]["rmse"]
        backtest = statistics.mean(f["metrics"]["lstm"]["rmse"] for f in results)
        base_name, base_test = best_baseline_rmse(last)
        base_backtest = statistics.mean(best_baseline_rmse(f)[1] for f in results)
        rows.append((seed, test, last["fit_seconds"], backtest, base_test, base_backtest))
        per_fold = " ".join(f"{f['metrics']['lstm']['rmse']:.4f}" for f in results)
        print(
            f"seed {seed:>3}: test RMSE {test:.4f}  fit {last['fit_seconds']:5.1f} s (epoch {last['best_epoch']})  "
            f"backtest mean {backtest:.4f}  folds {per_fold}  "
            f"best baseline {base_name} test {base_test:.4f}",
            flush=True,
        )
    mean_test, mean_backtest = statistics.mean(r[1] for r in rows), statistics.mean(r[3] for r in rows)
    max_fit = max(r[2] for r in rows)
    print(
        f"mean over seeds {', '.join(str(r[0]) for r in rows)}: test RMSE {mean_test:.4f}, backtest mean {mean_backtest:.4f}, "
        f"fit {statistics.mean(r[2] for r in rows):.1f} s (max {max_fit:.1f} s)"
    )
    base_test, base_backtest = rows[0][4], rows[0][5]  # the baselines do not depend on the seed
    print(
        f"best naive baseline: test RMSE {base_test:.4f}, backtest mean {base_backtest:.4f}; LSTM / baseline: "
        f"test {mean_test / base_test:.3f}, backtest {mean_backtest / base_backtest:.3f}",
        flush=True,
    )
    return mean_test, mean_backtest, max_fit


def best_baseline_rmse(fold: dict) -> tuple[str, float]:
    name = min((n for n in fold["metrics"] if n != "lstm"), key=lambda n: fold["metrics"][n]["rmse"])
    return name, fold["metrics"][name]["rmse"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-P", "--params-file", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--folds", type=int, default=4, help="backtest folds; 1: the test split only")
    parser.add_argument("--before", action="store_true", help="also run the pre-tuning defaults first, and compare")
    parser.add_argument("--series", choices=["default", "taylor"], default="default")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lstmops-series-") as scratch:
        series = taylor_overrides(Path(scratch)) if args.series == "taylor" else []
        given = [*series, *(read_params_file(args.params_file) if args.params_file else []), *args.set]
        if args.before:
            before = measure([*given, *BEFORE], args.seeds, args.folds)
        after = measure(given, args.seeds, args.folds)
    if args.before:
        print(
            f"after / before: test RMSE {after[0] / before[0]:.3f} ({before[0]:.4f} -> {after[0]:.4f}), "
            f"backtest mean {after[1] / before[1]:.3f} ({before[1]:.4f} -> {after[1]:.4f})"
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
