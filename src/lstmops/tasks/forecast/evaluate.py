"""Evaluate: the model against naive baselines on the test span, in original units.

Baselines (all computed from the same input windows the model sees):
- persistence: the last observed target value, repeated over the horizon;
- seasonal naive (one per period in params): the value one period before each target step.
A forecast is only worth deploying if it beats them; skill is reported against the best of them.

MASE divides each forecaster's MAE by the in-sample MAE of the seasonal naive forecast (period
``evaluate.mase_period``, default the first seasonal period) over the training span: below 1, a
forecaster beats on test what that naive forecast achieved in sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lstmops.tasks.forecast.prepare import Prepared
from lstmops.tasks.forecast.windows import origins
from lstmops.errors import DataError
from lstmops.plots import save_png

METRICS = ("rmse", "mae", "mape", "r2")


def error_metrics(
    actual: np.ndarray, forecast: np.ndarray, axis: int | None = None, scale: float | None = None
) -> dict[str, np.ndarray]:
    """RMSE, MAE, MAPE (%) and R² over ``axis`` (None: all values); MASE too, given its ``scale``."""
    err = forecast - actual
    nonzero = actual != 0
    ape = np.where(nonzero, np.abs(err) / np.where(nonzero, np.abs(actual), 1.0), np.nan)
    ss_res = np.sum(err**2, axis=axis)
    ss_tot = np.sum((actual - np.mean(actual, axis=axis, keepdims=axis is not None)) ** 2, axis=axis)
    metrics = {
        "rmse": np.sqrt(np.mean(err**2, axis=axis)),
        "mae": np.mean(np.abs(err), axis=axis),
        "mape": 100 * np.nanmean(ape, axis=axis),
        "r2": 1 - ss_res / ss_tot,
    }
    if scale is not None:
        metrics["mase"] = metrics["mae"] / scale
    return metrics


def seasonal_mae(target: np.ndarray, end: int, period: int, segments: list[list[int]] | None = None) -> float:
    """MASE's scale: mean |y[t] - y[t - period]| over the training span [0, end), pairs inside one
    of ``segments`` only (None: the whole span is one; a gap is not a step, a dropped segment is
    left out by not listing it)."""
    t = np.arange(period, end)
    if segments is not None:
        ids = np.full(end, -1)
        for k, (start, stop) in enumerate(segments):
            ids[start : min(stop, end)] = k
        t = t[(ids[t] >= 0) & (ids[t] == ids[t - period])]
    if len(t) == 0:
        return float("nan")
    return float(np.mean(np.abs(target[t] - target[t - period])))


def target_matrix(target: np.ndarray, test_origins: np.ndarray, horizon: int, shift: int = 0) -> np.ndarray:
    """(windows, horizon) matrix of ``target[t + h - shift]``; shift=0 gives the actuals."""
    return target[test_origins[:, None] + np.arange(horizon) - shift]


def baselines(
    target: np.ndarray, test_origins: np.ndarray, horizon: int, periods: dict[str, int]
) -> dict[str, np.ndarray]:
    """Naive forecasts for every test window; only values before each origin are used."""
    last = target[test_origins - 1][:, None].repeat(horizon, axis=1)
    forecasts = {"persistence": last}
    for name, period in periods.items():
        # Steps further ahead than one period would need the future: repeat the last known cycle.
        steps = np.arange(horizon)
        shift = period * (steps // period + 1)
        forecasts[name] = target[test_origins[:, None] + steps - shift]
    return forecasts


def predict_scaled(model, series: np.ndarray, test_origins: np.ndarray, meta: Prepared, batch: int = 512) -> np.ndarray:
    """Model forecasts (scaled units) for each origin, in batches."""
    import torch

    from lstmops.tasks.forecast.windows import gather

    tensor = torch.from_numpy(series)
    out = []
    with torch.no_grad():
        for chunk in torch.from_numpy(test_origins).split(batch):
            x, _ = gather(tensor, chunk, meta.input_steps, meta.horizon, meta.target_index)
            out.append(model(x).numpy())
    return np.concatenate(out)


def round_floats(values: dict[str, np.ndarray], digits: int = 6) -> dict[str, float]:
    """Rounded plain floats: stable JSON bytes and readable numbers."""
    return {k: float(f"{float(v):.{digits}g}") for k, v in values.items()}


def evaluate_forecasts(
    actual: np.ndarray, forecasts: dict[str, np.ndarray], scale: float | None = None
) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Overall metrics per forecaster, and a long table of metrics per horizon step (MASE too
    when its ``scale`` is given)."""
    overall = {name: round_floats(error_metrics(actual, f, scale=scale)) for name, f in forecasts.items()}
    rows = []
    for name, f in forecasts.items():
        per_step = error_metrics(actual, f, axis=0, scale=scale)
        for step in range(actual.shape[1]):
            rows.append({"forecaster": name, "step": step + 1, **{m: float(v[step]) for m, v in per_step.items()}})
    return overall, pd.DataFrame(rows)


def mase_scale(raw_target: np.ndarray, meta: Prepared, period: int) -> float:
    """The in-sample seasonal-naive MAE on the training span (rows of dropped segments left out)."""
    kept = None
    if meta.segments is not None:
        window = meta.input_steps + meta.horizon
        kept = [[a, b] for a, b in meta.segments if b - a >= window]
    scale = seasonal_mae(raw_target, meta.split.train_end, period, kept)
    if not scale > 0:  # no pair that far apart, or a flat series: MASE would be NaN or infinite
        raise DataError(
            f"evaluate.mase_period={period}: the seasonal naive in-sample MAE on the training span is {scale:g} "
            "(no two rows that far apart in one segment, or a constant target); set another period"
        )
    return float(f"{scale:.6g}")


def evaluate(
    model, meta: Prepared, series: np.ndarray, raw_target: np.ndarray, periods: dict[str, int],
    scale: float | None = None,
):  # fmt: skip
    """Test-span forecasts of the model and the baselines, in original units, with their metrics
    (MASE with ``scale``, see ``mase_scale``). Only windows inside one segment are scored."""
    test_origins = origins(meta.split, "test", meta.input_steps, meta.horizon, meta.segments)
    ti = meta.target_index
    lstm = predict_scaled(model, series, test_origins, meta) * meta.std[ti] + meta.mean[ti]
    forecasts = {"lstm": lstm.astype(np.float64), **baselines(raw_target, test_origins, meta.horizon, periods)}
    actual = target_matrix(raw_target, test_origins, meta.horizon)
    overall, per_step = evaluate_forecasts(actual, forecasts, scale)
    return test_origins, actual, forecasts, overall, per_step


def skill(overall: dict[str, dict[str, float]], reference: str) -> float:
    """1 - RMSE(model) / RMSE(reference): above 0 means the model beats the reference."""
    return float(f"{1 - overall['lstm']['rmse'] / overall[reference]['rmse']:.6g}")


def best_baseline(overall: dict[str, dict[str, float]]) -> str:
    """The naive forecaster with the lowest test RMSE (the first listed on a tie)."""
    return min((name for name in overall if name != "lstm"), key=lambda name: overall[name]["rmse"])


def write_plots(
    out_dir: Path, meta: Prepared, test_origins: np.ndarray, actual: np.ndarray,
    forecasts: dict[str, np.ndarray], per_step: pd.DataFrame, days: int,
) -> list[Path]:  # fmt: skip
    """Actual vs predicted, residual histogram, error by horizon step (PNG, no CDN needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    times = meta.timestamps()
    paths = []

    # Non-overlapping forecasts (one per horizon) chained into a continuous curve.
    picks = np.arange(0, len(test_origins), meta.horizon)[:days]
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, name in enumerate(("actual", "lstm", *[k for k in forecasts if k.startswith("seasonal")][:1])):
        values = actual if name == "actual" else forecasts[name]
        stamps = np.concatenate([times[test_origins[p] + np.arange(meta.horizon)] for p in picks])
        ax.plot(stamps, np.concatenate([values[p] for p in picks]), label=name, lw=1.2 if i < 2 else 0.8)
    ax.set(title=f"Test span: {meta.target}, day-ahead forecasts", ylabel=meta.target)
    ax.legend()
    paths.append(save_png(fig, out_dir / "forecast.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist((forecasts["lstm"] - actual).ravel(), bins=60)
    ax.set(title="LSTM residuals (forecast - actual), test span", xlabel=meta.target, ylabel="count")
    paths.append(save_png(fig, out_dir / "residuals.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, group in per_step.groupby("forecaster", sort=False):
        ax.plot(group["step"], group["rmse"], label=name)
    ax.set(title="Test RMSE by horizon step", xlabel="steps ahead", ylabel=f"RMSE ({meta.target})")
    ax.legend()
    paths.append(save_png(fig, out_dir / "error_by_step.png"))
    return paths


