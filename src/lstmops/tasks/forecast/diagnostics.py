"""The forecaster's diagnostics report: are the residuals white, where is the error (hour of day,
horizon step), and what does the forecast react to (perturbations, permutation importance).

The numbers are pure functions over numpy arrays. The model enters as a ``Forecast`` callable:
scaled input windows (windows, steps, features) in, forecasts in original target units
(windows, horizon) out. Scaled inputs make "+1 training std" simply +1.0, and a toy forecaster
(numpy or a small torch module) can stand in for the LSTM in tests. ``render`` writes the page
(index.html), its PNGs and diagnostics.json; ``for_forecaster`` is the evaluate stage's glue.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import chi2

Forecast = Callable[[np.ndarray], np.ndarray]

PERTURBATION = 1.0  # added to scaled inputs: one training standard deviation of each feature


# --- residual autocorrelation ------------------------------------------------------------------


def acf(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample autocorrelations r_1..r_max_lag, each over the full-series variance (the estimator
    Ljung-Box is defined with; it keeps the ACF a positive-definite sequence)."""
    d = np.asarray(x, dtype=np.float64) - np.mean(x)
    denom = float(np.dot(d, d))
    if denom == 0:  # a constant series has no autocorrelation to speak of
        return np.zeros(max_lag)
    return np.array([np.dot(d[:-k], d[k:]) / denom for k in range(1, max_lag + 1)])


def ljung_box(x: np.ndarray, lags: int) -> tuple[float, float]:
    """Ljung-Box Q = n (n + 2) sum_k r_k^2 / (n - k) over lags 1..``lags``, and its p-value under
    the null of no autocorrelation (Q ~ chi-squared with ``lags`` degrees of freedom)."""
    n = len(x)
    if not 1 <= lags < n:
        raise ValueError(f"Ljung-Box needs 1 <= lags < n, got lags={lags} for n={n}")
    r = acf(x, lags)
    q = float(n * (n + 2) * np.sum(r**2 / (n - np.arange(1, lags + 1))))
    return q, float(chi2.sf(q, lags))


def one_step_residuals(test_origins: np.ndarray, forecast: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The h=1 residuals (forecast - actual) of the longest run of consecutive origins, and those
    origins: one residual per target time, in time order.

    Why h=1 only: the windows overlap, so one target time's error appears in up to ``horizon``
    windows, and even an optimal h-step forecast has errors that follow an MA(h-1) process.
    Multi-step residuals are autocorrelated by construction and a whiteness test would reject
    for any model. The 1-step errors of a good forecaster are white; autocorrelation there is
    structure the model left unused. Why one run: a lag must mean the same time distance (with
    ``data.gaps: segment`` the origins jump at a gap).
    """
    breaks = np.flatnonzero(np.diff(test_origins) != 1) + 1
    runs = np.split(np.arange(len(test_origins)), breaks)
    longest = max(runs, key=len)
    return forecast[longest, 0] - actual[longest, 0], test_origins[longest]


# --- where the error is ---------------------------------------------------------------------------


def rmse_by_group(errors: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """RMSE of ``errors`` per integer group 0..n_groups-1 (NaN for a group without values)."""
    g = np.asarray(groups).ravel()
    sums = np.bincount(g, weights=np.asarray(errors, dtype=np.float64).ravel() ** 2, minlength=n_groups)
    counts = np.bincount(g, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sums / counts)


def target_hours(hours: np.ndarray, test_origins: np.ndarray, horizon: int) -> np.ndarray:
    """(windows, horizon) hour of day of each forecast's target time; ``hours``: one per series row."""
    return hours[test_origins[:, None] + np.arange(horizon)]


def rmse_by_step(errors: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.asarray(errors, dtype=np.float64) ** 2, axis=0))


# --- what the forecast reacts to ---------------------------------------------------------------


def spread(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced indices into ``n`` windows (all of them if k >= n): every part of the
    test span is represented, and the same windows are picked on every run."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def steps_in(span: str, frequency: str) -> int:
    """How many steps of ``frequency`` make ``span`` (at least one)."""
    return max(1, round(pd.Timedelta(span) / pd.Timedelta(frequency)))


def history_parts(frequency: str, input_steps: int) -> dict[str, tuple[int, int]]:
    """The parts of the history that are perturbed, as inclusive lag ranges (lag k: row t - k):
    the last hour; the rest of the last day (disjoint from the last hour, so each part says what
    it adds); the steps within an hour of t - 1 week, only if the history reaches that far."""
    hour, day, week = (steps_in(span, frequency) for span in ("1h", "1D", "7D"))
    parts = {"last_hour": (1, min(hour, input_steps))}
    if day > hour and hour < input_steps:
        parts["rest_of_last_day"] = (hour + 1, min(day, input_steps))
    if week <= input_steps and week - hour > day:
        parts["same_time_last_week"] = (week - hour, min(week + hour, input_steps))
    return parts


def mean_change(forecast: Forecast, x: np.ndarray, base: np.ndarray) -> float:
    """Mean absolute change of the forecast from ``base`` (original target units)."""
    return float(np.mean(np.abs(forecast(x) - base)))


def feature_sensitivity(forecast: Forecast, x: np.ndarray, base: np.ndarray, step: float = PERTURBATION) -> np.ndarray:
    """Per feature: the mean |change| of the forecast when ``step`` is added to that feature over
    the whole history (scaled inputs: step 1.0 is one training std)."""
    out = []
    for f in range(x.shape[2]):
        moved = x.copy()
        moved[:, :, f] += step
        out.append(mean_change(forecast, moved, base))
    return np.array(out)


def history_sensitivity(
    forecast: Forecast, x: np.ndarray, base: np.ndarray, parts: dict[str, tuple[int, int]], step: float = PERTURBATION
) -> dict[str, float]:
    """Per history part (lag range): the mean |change| of the forecast when ``step`` is added to
    every feature at those lags."""
    steps = x.shape[1]
    out = {}
    for name, (first, last) in parts.items():
        moved = x.copy()
        moved[:, steps - last : steps - first + 1] += step
        out[name] = mean_change(forecast, moved, base)
    return out


def rmse(forecast: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(forecast, dtype=np.float64) - actual) ** 2)))


def permutation_importance(forecast: Forecast, x: np.ndarray, actual: np.ndarray, base: np.ndarray, seed: int) -> np.ndarray:
    """Per feature: test RMSE increase when that feature's histories are shuffled across windows
    (seeded), breaking its link to the target while keeping its distribution."""
    rng = np.random.default_rng(seed)
    reference = rmse(base, actual)
    out = []
    for f in range(x.shape[2]):
        shuffled = x.copy()
        shuffled[:, :, f] = x[rng.permutation(len(x)), :, f]
        out.append(rmse(forecast(shuffled), actual) - reference)
    return np.array(out)


# --- the report ----------------------------------------------------------------------------------


@dataclass
class Diagnostics:
    target: str
    features: list[str]
    one_step: np.ndarray  # h=1 residuals of the longest run of consecutive origins
    one_step_times: np.ndarray  # their target times
    acf: np.ndarray  # lags 1..len(acf)
    ljung_box: tuple[float, float]  # (Q, p) over lags 1..len(acf)
    residuals: np.ndarray  # (windows, horizon) forecast - actual, every test window
    predicted: np.ndarray  # (windows, horizon)
    by_hour: np.ndarray  # (24,) RMSE by the target's hour of day
    by_step: np.ndarray  # (horizon,)
    subset: int  # windows of the perturbation and permutation parts
    feature_sensitivity: np.ndarray
    history_sensitivity: dict[str, float]
    parts: dict[str, tuple[int, int]]
    permutation: np.ndarray
    seed: int
    smooth: int  # steps of the moving mean drawn over the 1-step residuals (a day)

    def numbers(self) -> dict:
        """diagnostics.json: every number of the page (rounded: stable bytes)."""
        r = lambda v: None if not np.isfinite(v) else float(f"{float(v):.6g}")  # noqa: E731
        q, p = self.ljung_box
        return {
            "target": self.target,
            "units": "original target units",
            "test_windows": int(len(self.residuals)),
            "one_step_residuals": {
                "n": int(len(self.one_step)), "mean": r(np.mean(self.one_step)), "std": r(np.std(self.one_step)),
                "ljung_box": {"lags": int(len(self.acf)), "q": r(q), "p": r(p)},
                "acf": [r(v) for v in self.acf],
            },
            "rmse_by_hour": {str(h): r(v) for h, v in enumerate(self.by_hour) if np.isfinite(v)},
            "rmse_by_step": [r(v) for v in self.by_step],
            "perturbation": {
                "windows": self.subset, "added": "+1 training std (to every step of a feature, or to every feature in a part of the history)",
                "metric": "mean absolute change of the forecast",
                "features": {f: r(v) for f, v in zip(self.features, self.feature_sensitivity, strict=True)},
                "history": {k: {"lags": list(self.parts[k]), "mean_abs_change": r(v)} for k, v in self.history_sensitivity.items()},
            },
            "permutation_importance": {
                "windows": self.subset, "seed": self.seed, "metric": "test RMSE increase",
                "features": {f: r(v) for f, v in zip(self.features, self.permutation, strict=True)},
            },
        }  # fmt: skip

    def metrics(self) -> dict[str, float]:
        """A few scalars for MLflow."""
        q, p = self.ljung_box
        out = {"diag_ljung_box_q": q, "diag_ljung_box_p": p, "diag_residual_acf_lag1": float(self.acf[0])}
        for f, v in zip(self.features, self.permutation, strict=True):
            out[f"diag_permutation_{metric_name(f)}"] = float(v)
        for f, v in zip(self.features, self.feature_sensitivity, strict=True):
            out[f"diag_sensitivity_{metric_name(f)}"] = float(v)
        for part, v in self.history_sensitivity.items():
            out[f"diag_sensitivity_history_{part}"] = float(v)
        return out

    def line(self, page: Path) -> str:
        q, p = self.ljung_box
        return (
            f"diagnostics: Ljung-Box p={p:.3f} on 1-step residuals (lag 1 ACF {self.acf[0]:.2f}, "
            f"{len(self.acf)} lags) -> {page}"
        )


def metric_name(name: str) -> str:
    """A feature name as an MLflow metric key allows it."""
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", name)


def diagnose(
    forecast: Forecast, x: np.ndarray, x_actual: np.ndarray, test_origins: np.ndarray, actual: np.ndarray,
    predicted: np.ndarray, hours: np.ndarray, times: np.ndarray, *, target: str, features: list[str],
    parts: dict[str, tuple[int, int]], max_lag: int, seed: int, smooth: int = 1,
) -> Diagnostics:  # fmt: skip
    """Everything on the page. ``actual``/``predicted``: (windows, horizon) of every test window;
    ``x``/``x_actual``: the scaled inputs and actuals of the subset the model is rerun on;
    ``hours``/``times``: hour of day and timestamp of every series row."""
    one_step, at = one_step_residuals(test_origins, predicted, actual)
    lags = min(max_lag, len(one_step) - 1)
    # A test span of one or two windows has no autocorrelation to test: NaN, not a failed stage.
    r, q_p = (acf(one_step, lags), ljung_box(one_step, lags)) if lags >= 1 else (np.full(1, np.nan), (np.nan, np.nan))
    base = forecast(x)
    residuals = predicted - actual
    return Diagnostics(
        target=target, features=list(features), one_step=one_step, one_step_times=times[at],
        acf=r, ljung_box=q_p, residuals=residuals, predicted=predicted,
        by_hour=rmse_by_group(residuals, target_hours(hours, test_origins, actual.shape[1]), 24),
        by_step=rmse_by_step(residuals), subset=len(x),
        feature_sensitivity=feature_sensitivity(forecast, x, base),
        history_sensitivity=history_sensitivity(forecast, x, base, parts), parts=parts,
        permutation=permutation_importance(forecast, x, x_actual, base, seed), seed=seed, smooth=smooth,
    )  # fmt: skip


def render(out_dir: Path, d: Diagnostics) -> list[Path]:
    """Write index.html, the PNGs and diagnostics.json into ``out_dir``; return the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from lstmops.plots import save_png
    from lstmops.io import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    unit = d.target
    figures: list[tuple[str, str]] = []  # (file, caption)

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [2, 1]})
    a.plot(d.one_step_times, d.one_step, lw=0.5)
    if 1 < d.smooth < len(d.one_step):  # a moving mean shows drifts that single residuals hide
        mean = pd.Series(d.one_step).rolling(d.smooth, center=True).mean()
        a.plot(d.one_step_times, mean, lw=1.5, label=f"{d.smooth}-step moving mean")
        a.legend()
    a.axhline(0, color="k", lw=0.6)
    a.set(title="1-step-ahead residual per test origin", ylabel=f"forecast - actual ({unit})")
    a.xaxis.set_major_formatter(mdates.ConciseDateFormatter(a.xaxis.get_major_locator()))
    rng = np.random.default_rng(0)  # a fixed sample keeps the scatter (and the PNG) stable
    pick = rng.choice(d.residuals.size, min(d.residuals.size, 20_000), replace=False)
    b.scatter(d.predicted.ravel()[pick], d.residuals.ravel()[pick], s=2, alpha=0.2)
    b.axhline(0, color="k", lw=0.6)
    b.set(title="Residual vs predicted, all steps", xlabel=f"predicted ({unit})", ylabel="residual")
    figures.append((save_png(fig, out_dir / "residuals.png").name, "Residuals over time (1-step ahead) and against the predicted value"))

    q, p = d.ljung_box
    fig, ax = plt.subplots(figsize=(10, 3.5))
    lags = np.arange(1, len(d.acf) + 1)
    ax.bar(lags, d.acf, width=0.8)
    band = 1.96 / np.sqrt(len(d.one_step))  # white-noise 95% band
    ax.axhspan(-band, band, color="grey", alpha=0.2)
    ax.set(title=f"ACF of 1-step residuals; Ljung-Box Q={q:.1f} over {len(d.acf)} lags, p={p:.3g}", xlabel="lag (steps)")
    figures.append((save_png(fig, out_dir / "residual_acf.png").name, "Autocorrelation of the 1-step residuals, 95% white-noise band"))

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(np.arange(24), np.nan_to_num(d.by_hour))
    ax.set(title="Test RMSE by hour of day (target time), all steps", xlabel="hour", ylabel=f"RMSE ({unit})")
    figures.append((save_png(fig, out_dir / "error_by_hour.png").name, "RMSE by the hour of day being forecast"))

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(np.arange(1, len(d.by_step) + 1), d.by_step, marker=".")
    ax.set(title="Test RMSE by horizon step", xlabel="steps ahead", ylabel=f"RMSE ({unit})")
    figures.append((save_png(fig, out_dir / "error_by_step.png").name, "RMSE by horizon step"))

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.5), layout="constrained")
    a.barh(d.features, d.feature_sensitivity)
    a.set(title="+1 std on a feature, whole history", xlabel=f"mean |change| of forecast ({unit})")
    labels = [f"{k.replace('_', ' ')} (lags {d.parts[k][0]}-{d.parts[k][1]})" for k in d.history_sensitivity]
    b.barh(labels, list(d.history_sensitivity.values()))
    b.set(title="+1 std on every feature, part of the history", xlabel=f"mean |change| of forecast ({unit})")
    figures.append((save_png(fig, out_dir / "sensitivity.png").name, f"Perturbation sensitivity on {d.subset} test windows"))

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(d.features, d.permutation)
    ax.set(title="Permutation importance", xlabel=f"test RMSE increase ({unit})")
    figures.append((save_png(fig, out_dir / "permutation.png").name, f"Permutation importance on {d.subset} test windows (seed {d.seed})"))

    numbers = d.numbers()
    write_json(out_dir / "diagnostics.json", numbers)
    (out_dir / "index.html").write_text(page(numbers, figures))
    return [out_dir / "index.html", out_dir / "diagnostics.json", *(out_dir / f for f, _ in figures)]


def page(numbers: dict, figures: list[tuple[str, str]]) -> str:
    """A self-contained page: the key numbers, then each PNG with its caption."""
    e = html.escape
    one = numbers["one_step_residuals"]
    lb = one["ljung_box"]
    rows = [
        ("test windows", numbers["test_windows"]),
        ("1-step residuals (longest run of consecutive origins)", one["n"]),
        (f"Ljung-Box Q over {lb['lags']} lags", lb["q"]),
        ("Ljung-Box p-value (H0: no autocorrelation)", lb["p"]),
        ("ACF at lag 1", one["acf"][0]),
    ]
    for name, v in numbers["perturbation"]["features"].items():
        rows.append((f"+1 std on {name}: mean |change| ({numbers['target']})", v))
    for name, v in numbers["perturbation"]["history"].items():
        rows.append((f"+1 std on {name.replace('_', ' ')} (lags {v['lags'][0]}-{v['lags'][1]}): mean |change|", v["mean_abs_change"]))
    for name, v in numbers["permutation_importance"]["features"].items():
        rows.append((f"permutation importance of {name}: RMSE increase", v))
    table = "\n".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in rows)
    imgs = "\n".join(f'<figure><img src="{e(f)}" alt="{e(c)}"><figcaption>{e(c)} ({e(f)})</figcaption></figure>' for f, c in figures)
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Forecaster diagnostics</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td{padding:2px 12px}"
        "img{max-width:100%}figure{margin:2em 0}</style></head><body>\n"
        f"<h1>Forecaster diagnostics: {e(numbers['target'])}</h1>\n"
        f"<p>Test windows, original units. Numbers: <a href=\"diagnostics.json\">diagnostics.json</a>.</p>\n"
        f"<table>\n{table}\n</table>\n{imgs}\n</body></html>\n"
    )


# --- the forecaster's evaluate stage ---------------------------------------------------------------


def model_forecast(model, mean: float, std: float, batch: int = 512) -> Forecast:
    """The eager model as a ``Forecast``: scaled windows in, original target units out."""
    import torch

    def forecast(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = [model(torch.from_numpy(chunk)).numpy() for chunk in np.split(x, range(batch, len(x), batch))]
        return np.concatenate(out).astype(np.float64) * std + mean

    return forecast


def for_forecaster(
    settings, meta, series: np.ndarray, model, test_origins: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
    times: pd.Series, out_dir: Path,
) -> tuple[Diagnostics, list[Path]]:  # fmt: skip
    """The evaluate stage's report: compute, render into ``out_dir`` (replaced as a whole, so no
    PNG of an earlier run survives), return the numbers and the files. The model is rerun only on
    ``settings.windows`` test windows (perturbations, permutations); the residual parts use every
    window's forecast from evaluation (``predicted``, original units)."""
    import torch

    from lstmops.tasks.forecast.windows import gather
    from lstmops.io import atomic_dir

    pick = spread(len(test_origins), settings.windows)
    x, _ = gather(torch.from_numpy(series), torch.from_numpy(test_origins[pick]), meta.input_steps, meta.horizon, meta.target_index)
    ti = meta.target_index
    d = diagnose(
        model_forecast(model, meta.mean[ti], meta.std[ti]), x.numpy(), actual[pick], test_origins, actual, predicted,
        times.dt.hour.to_numpy(), times.to_numpy(), target=meta.target, features=meta.features,
        parts=history_parts(meta.frequency, meta.input_steps), max_lag=settings.max_lag, seed=settings.seed,
        smooth=steps_in("1D", meta.frequency),
    )  # fmt: skip
    with atomic_dir(out_dir) as tmp:
        written = render(tmp, d)
    return d, [out_dir / f.name for f in written]


def placeholder(out_dir: Path, reason: str) -> None:
    """A page saying why there is no report: dvc.yaml lists the directory as an output of every
    task's evaluate, and a report of an earlier run must not pass for this one's."""
    from lstmops.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        (tmp / "index.html").write_text(f"<!doctype html>\n<p>{html.escape(reason)}</p>\n")
