"""Realized error: stored forecasts joined on time with the actuals that have arrived since.

Labels arrive late, so the join is on each forecast's target time, and an origin counts only once
every step of its horizon has its actual: a day's figure never changes as more data lands. The
naive forecasts are scored on the same origins and steps, so the comparison is like for like.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MODEL = "model"  # the forecaster column's name for the champion's (or any version's) own forecasts


def realized(forecasts: pd.DataFrame, actuals: pd.Series) -> pd.DataFrame:
    """Forecast rows with their ``actual``, for the (version, origin) pairs whose every step has arrived."""
    joined = forecasts.assign(actual=actuals.reindex(pd.DatetimeIndex(forecasts.target_time)).to_numpy())
    complete = joined.actual.notna().groupby([joined.version, joined.origin]).transform("all")
    return joined[complete.to_numpy(dtype=bool)].reset_index(drop=True)


def long_form(scored: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """(version, origin, step, forecaster, forecast, actual): each version's forecasts and, on the
    same origins and steps, every naive forecast."""
    own = scored.assign(forecaster=MODEL)[["version", "origin", "step", "forecaster", "prediction", "actual"]]
    if baselines.empty:
        return own
    on = scored[["version", "origin", "step", "actual"]]
    naive = on.merge(baselines.assign(origin=pd.DatetimeIndex(baselines.origin)), on=["origin", "step"], how="inner")
    return pd.concat([own, naive[own.columns]], ignore_index=True)


def errors(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """RMSE and MAE of ``forecast`` against ``actual`` per group."""
    err = frame.prediction - frame.actual
    grouped = pd.DataFrame({**{k: frame[k] for k in by}, "se": err**2, "ae": err.abs()}).groupby(by, sort=True)
    out = grouped.agg(rmse=("se", "mean"), mae=("ae", "mean"), n=("se", "size")).reset_index()
    out["rmse"] = np.sqrt(out["rmse"])
    return out


def by_day(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (version, origin, forecaster): the day's RMSE and MAE over its horizon."""
    return errors(frame, ["version", "origin", "forecaster"])


def by_step(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (version, step, forecaster) over every scored origin."""
    return errors(frame, ["version", "step", "forecaster"])
