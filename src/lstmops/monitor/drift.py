"""Input drift per feature: the newest days against the champion's training span.

PSI (population stability index) over the training span's quantile bins, the usual 0.1 / 0.2
reading (slight / significant shift), or the two-sample Kolmogorov-Smirnov statistic (scipy).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lstmops.monitor.settings import DriftSettings

EPS = 1e-4  # a bin empty on one side would make PSI infinite


def psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    """Sum over bins of (cur - ref) * ln(cur / ref), bins from the reference's quantiles (a feature
    with few distinct values, such as a 0/1 flag, gets one bin per value)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    ref, cur = np.clip(ref, EPS, None), np.clip(cur, EPS, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def drift(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings) -> dict[str, dict]:
    """Per feature: the statistic, its value, whether it crosses ``settings.threshold``, and the means."""
    out = {}
    for column in reference.columns:
        ref = reference[column].dropna().to_numpy(np.float64)
        cur = current[column].dropna().to_numpy(np.float64)
        if len(ref) == 0 or len(cur) == 0:
            continue
        if settings.test == "psi":
            value = psi(ref, cur, settings.bins)
        else:
            from scipy.stats import ks_2samp

            value = float(ks_2samp(ref, cur).statistic)
        out[column] = {"statistic": settings.test, "value": round(value, 6), "drifted": value > settings.threshold,
                       "reference_mean": round(float(ref.mean()), 6), "current_mean": round(float(cur.mean()), 6),
                       "current_rows": len(cur)}  # fmt: skip
    return out


def newest_days(features: pd.DataFrame, days: int) -> pd.DataFrame:
    """The rows of the last ``days`` days of data."""
    if features.empty:
        return features
    return features[features.index > features.index[-1] - pd.Timedelta(days=days)]
