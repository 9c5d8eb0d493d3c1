"""The forecaster's side of batch prediction and monitoring (``tasks.base.Predicts``, ``Monitors``):
which origins a forecast starts from, the windows the champion reads, and the naive forecasts on
the same origins. The monitor (``lstmops.monitor``) joins what these return with the actuals.

An origin is the time of a forecast's first step: the model reads the ``input_steps`` rows
before it and forecasts ``horizon`` rows from it. ``monitor.every`` chooses the origins (``1D``:
each midnight), so a daily ``lstmops predict`` after the day's data has landed forecasts the next
day, and every origin since the last run when runs were missed (at most ``monitor.max_origins``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lstmops.errors import DataError
from lstmops.tasks.base import Observed
from lstmops.tasks.forecast.settings import Settings


def newest_data(cfg: Settings, root: Path) -> pd.DataFrame:
    """The pipeline's source as it is now, indexed by time: the feature columns that exist."""
    from lstmops.data.ingest import load_frame

    frame = load_frame(cfg.data, cfg.source, root)
    times = pd.DatetimeIndex(frame[cfg.data.time_column])
    if not times.is_monotonic_increasing or times.has_duplicates:
        bad = int(np.flatnonzero(np.diff(times.asi8) <= 0)[0]) + 1
        raise DataError(f"{cfg.source}: {cfg.data.time_column} does not increase at row {bad + 1} ({times[bad]})")
    columns = [c for c in cfg.data.features if c in frame.columns]
    return frame[columns].set_axis(times)


def candidate_origins(times: pd.DatetimeIndex, input_steps: int, step: pd.Timedelta, every: pd.Timedelta) -> np.ndarray:
    """Rows k (origin: the time of row k, or just after the last row for k = len) with ``input_steps``
    evenly spaced rows before them, whose time of day is a multiple of ``every``."""
    n = len(times)
    if n < input_steps:
        return np.empty(0, dtype=np.int64)
    at = origin_times(times, np.arange(input_steps, n + 1), step)
    rows = np.arange(input_steps, n + 1)
    # the history of origin k is rows [k - L, k): evenly spaced when its first and last rows are (L - 1) steps apart
    spaced = (times[rows - 1] - times[rows - input_steps]) == (input_steps - 1) * step
    aligned = ((at - at.normalize()) % every) == pd.Timedelta(0)
    # an origin inside the data must also come one step after its history (no gap at the origin)
    follows = np.append((times[rows[:-1]] - times[rows[:-1] - 1]) == step, True)
    return rows[np.asarray(spaced & aligned & follows)]


def origin_times(times: pd.DatetimeIndex, rows: np.ndarray, step: pd.Timedelta) -> pd.DatetimeIndex:
    """The time of each origin row; row len(times) is one step after the last row."""
    extended = times.append(pd.DatetimeIndex([times[-1] + step]))
    return extended[rows]


def predict(cfg: Settings, root: Path, model, after: pd.Timestamp | None, limit: int) -> pd.DataFrame:
    """The model's forecasts from each new origin of the newest data (see the module's docstring)."""
    import torch

    from lstmops.serve.loader import InputError

    frame = newest_data(cfg, root)
    missing = [f for f in model.features if f not in frame.columns]
    if missing:
        raise DataError(
            f"{cfg.source}: no column {missing[0]!r}, which the champion (version {model.version}) reads "
            f"(it reads {', '.join(model.features)})"
        )
    step, every = pd.Timedelta(cfg.data.frequency), pd.Timedelta(cfg.monitor.every)
    history = int(model.input_steps)
    rows = candidate_origins(frame.index, history, step, every)
    if len(rows) == 0:
        raise DataError(
            f"{cfg.source}: no origin at a multiple of monitor.every={cfg.monitor.every} with {history} evenly spaced "
            f"rows before it (the champion, version {model.version}, reads {history} steps of history)"
        )
    at = origin_times(frame.index, rows, step)
    if after is not None:
        keep = at > after
        rows, at = rows[keep], at[keep]
    rows, at = rows[-limit:], at[-limit:]
    if len(rows) == 0:
        return pd.DataFrame({"origin": pd.DatetimeIndex([]), "step": np.empty(0, np.int64),
                             "target_time": pd.DatetimeIndex([]), "prediction": np.empty(0)})  # fmt: skip
    values = frame[model.features].to_numpy(np.float32)
    windows = np.stack([values[k - history : k] for k in rows])
    x = torch.from_numpy(windows)
    try:
        model.check(x)
    except InputError as exc:
        # the artifact names the window by position: say which origin that is
        text = str(exc)
        where = next((f" (origin {at[int(w)]})" for w in text.split("window ")[1:2] if w.strip().isdigit()), "")
        raise DataError(f"{cfg.source}: the champion (version {model.version}) cannot read this data: {text}{where}") from None
    out = model.predict(x).numpy().astype(np.float64)
    horizon = out.shape[1]
    steps = np.tile(np.arange(1, horizon + 1), len(rows))
    origin = np.repeat(at.values, horizon)
    return pd.DataFrame({
        "origin": origin, "step": steps, "target_time": origin + (steps - 1) * step.to_timedelta64(),
        "prediction": out.reshape(-1),
    })  # fmt: skip


def naive_forecasts(actuals: pd.Series, origins: pd.DatetimeIndex, horizon: int, step: pd.Timedelta,
                    periods: dict[str, int]) -> pd.DataFrame:  # fmt: skip
    """Persistence and the seasonal naive forecasts (as ``evaluate.baselines``, by time rather than by
    row): only values before each origin; an origin whose needed values are missing gets none."""
    steps = np.arange(horizon)
    shifts = {"persistence": np.ones_like(steps), **{name: period * (steps // period + 1) - steps for name, period in periods.items()}}
    frames = []
    for name, back in shifts.items():
        # step s (0-based) of origin o reads the value at o + s - shift(s), i.e. back(s) steps before o
        when = origins.values[:, None] - back[None, :] * step.to_timedelta64()
        values = actuals.reindex(pd.DatetimeIndex(when.reshape(-1))).to_numpy().reshape(len(origins), horizon)
        complete = np.isfinite(values).all(axis=1)
        if not complete.any():
            continue
        values = values[complete]
        frames.append(pd.DataFrame({
            "origin": np.repeat(origins.values[complete], horizon), "step": np.tile(steps + 1, int(complete.sum())),
            "forecaster": name, "prediction": values.reshape(-1),
        }))  # fmt: skip
    if not frames:
        return pd.DataFrame(columns=["origin", "step", "forecaster", "prediction"])
    return pd.concat(frames, ignore_index=True)


def observe(cfg: Settings, root: Path) -> Observed:
    from lstmops.data.split import chronological_split

    frame = newest_data(cfg, root)
    actuals = frame[cfg.data.target].astype(np.float64)
    step = pd.Timedelta(cfg.data.frequency)

    def baselines(origins: pd.DatetimeIndex, horizon: int) -> pd.DataFrame:
        return naive_forecasts(actuals, pd.DatetimeIndex(origins), horizon, step, cfg.evaluate.seasonal_periods)

    def reference(trained_rows: int | None) -> pd.DataFrame:
        # the champion's training span: the first rows of the data it was trained on, split as params say
        rows = min(trained_rows or len(frame), len(frame))
        end = chronological_split(rows, cfg.split.val_fraction, cfg.split.test_fraction).train_end
        return frame.iloc[:end]

    return Observed(actuals, frame, baselines, reference, cfg.data.frequency)
