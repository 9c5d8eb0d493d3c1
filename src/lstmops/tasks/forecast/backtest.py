"""Rolling-origin backtest: is the test score a typical one, or one lucky span?

``evaluate.backtest_folds`` = K expanding-window folds with the pipeline's own split sizes. Fold
k's test span is the k-th of the K spans of ``test_fraction`` rows that end at the series' end
(the last fold's test span is the pipeline's test span); its validation span, of
``val_fraction`` rows, comes just before, and it trains on every row before that:

    fold 1  [train............][val][test]
    fold 2  [train.................][val][test]
    fold K  [train.......................][val][test]   = the pipeline's own split

Each fold is **retrained from scratch** with the run's settings and seed: its scaler is fitted
on its own training span and nothing it learns comes from after its cutoff. (Fine-tuning the
pipeline's model would be cheaper, but that model has trained on rows after every earlier
fold's cutoff, so those folds' scores would leak the future.) The model and the naive
baselines are scored on each fold's test windows in original units, as ``evaluate`` scores the
test span; the report gives each fold's metrics and their mean and spread per forecaster.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lstmops import paths
from lstmops.tasks.forecast.settings import Settings
from lstmops.tasks.forecast.prepare import Split, check_sizes
from lstmops.errors import DataError


def fold_splits(length: int, val_fraction: float, test_fraction: float, folds: int) -> list[Split]:
    """The K folds' boundaries, oldest first; each fold's rows are [0, split.length)."""
    test_rows, val_rows = round(length * test_fraction), round(length * val_fraction)
    splits = []
    for k in range(folds):
        end = length - (folds - 1 - k) * test_rows
        splits.append(Split(train_end=end - test_rows - val_rows, val_end=end - test_rows, length=end))
    return splits


def check_folds(splits: list[Split], input_steps: int, horizon: int, folds: int) -> None:
    try:
        check_sizes(splits[0], input_steps, horizon)
    except DataError as exc:
        raise DataError(f"evaluate.backtest_folds={folds}: the first fold's {exc} (use fewer folds)") from None


def run_fold(cfg: Settings, root: Path, split: Split, raw_target: np.ndarray, scratch: Path) -> dict:
    """Prepare the fold's rows, train from scratch, score the model and baselines on its test span."""
    from lstmops.tasks.forecast.prepare import prepare
    from lstmops.tasks.forecast.evaluate import evaluate, mase_scale
    from lstmops.tasks.forecast.task import ForecastTrainer, load_model, mase_period
    from lstmops.train import fit

    prepared = scratch / "prepared"
    meta = prepare(cfg, root / paths.SNAPSHOT, prepared, split)
    _, summary = fit(cfg, lambda device: ForecastTrainer(cfg, prepared, device), scratch / "checkpoint.pt")
    model, _ = load_model(scratch / "checkpoint.pt")
    target = raw_target[: split.length]
    scale = mase_scale(target, meta, mase_period(cfg))
    series = np.load(prepared / "series.npy")
    test_origins, _, _, overall, _ = evaluate(model, meta, series, target, cfg.evaluate.seasonal_periods, scale)
    return {
        "test_start": str(meta.timestamps()[split.val_end]),
        "train_rows": split.train_end,
        "test_windows": len(test_origins),
        "fit_seconds": summary["fit_seconds"],
        "best_epoch": summary["best_epoch"],
        "metrics": overall,
    }


def spread(folds: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard deviation (ddof=1: the folds are a sample of spans) of every metric."""
    names = folds[0]["metrics"]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, metrics in names.items():
        summary[name] = {}
        for metric in metrics:
            values = np.array([f["metrics"][name][metric] for f in folds])
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[name][metric] = {"mean": float(f"{values.mean():.6g}"), "std": float(f"{std:.6g}")}
    return summary


def backtest(cfg: Settings, root: Path) -> dict:
    """Run every fold; the report (also reports/backtest.json) has the folds and their spread."""
    k = cfg.evaluate.backtest_folds
    raw_target = pd.read_parquet(root / paths.SNAPSHOT, columns=[cfg.data.target])[cfg.data.target].to_numpy(np.float64)
    splits = fold_splits(len(raw_target), cfg.split.val_fraction, cfg.split.test_fraction, k)
    check_folds(splits, cfg.window.input_steps, cfg.window.horizon, k)
    folds = []
    for number, split in enumerate(splits, start=1):
        with tempfile.TemporaryDirectory(prefix="lstmops-backtest-") as scratch:
            folds.append({"fold": number, **run_fold(cfg, root, split, raw_target, Path(scratch))})
    summary = spread(folds)
    beats = sum(f["metrics"]["lstm"]["rmse"] < min(m["rmse"] for n, m in f["metrics"].items() if n != "lstm") for f in folds)
    return {"folds": folds, "summary": summary, "lstm_beats_best_baseline": beats, "target": cfg.data.target}


def report_lines(report: dict) -> list[str]:
    """Per fold: test start and RMSE of each forecaster; then mean ± std over the folds."""
    folds, summary = report["folds"], report["summary"]
    names = list(summary)
    head = f"  {'fold':<6}{'test from':<22}" + "".join(f"{n:>22}" for n in names)
    lines = [f"backtest: {len(folds)} expanding-window folds, each retrained; test RMSE ({report['target']})", head]
    for f in folds:
        lines.append(f"  {f['fold']:<6}{f['test_start'][:16]:<22}" + "".join(f"{f['metrics'][n]['rmse']:>22.4f}" for n in names))
    cells = "".join(f"{summary[n]['rmse']['mean']:>13.4f} ± {summary[n]['rmse']['std']:<6.4f}" for n in names)
    lines.append(f"  {'mean ± std':<28}{cells}")
    lines.append(f"  the LSTM beats the best naive baseline in {report['lstm_beats_best_baseline']} of {len(folds)} folds")
    return lines
