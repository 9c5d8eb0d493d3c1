"""Is one forecaster really better than another? The Diebold–Mariano test on per-window losses.

Pure numpy/scipy, no lstmops imports: ``lstmops compare`` and the promotion gate
(``promote.require_significance``) both call it.

The test (Diebold & Mariano 1995) asks whether the mean of the loss differences
``d_t = loss_A(t) - loss_B(t)`` over the hold-out windows is zero. Its statistic is
``mean(d) / sqrt(LRV / T)``, where LRV is the long-run variance of ``d``: the loss differences of
consecutive windows are correlated, so their plain variance would understate the uncertainty of
the mean. It assumes ``d`` is (covariance-)stationary, with autocorrelation that dies out after a
few lags, and it compares forecasts, not models: the result holds for these windows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Loss = Literal["mse", "mae", "mape"]
# The per-window loss whose mean orders forecasters as the gate's metric does.
LOSS_OF_METRIC: dict[str, Loss] = {"rmse": "mse", "mae": "mae", "mape": "mape"}


def window_losses(actual: np.ndarray, forecast: np.ndarray, loss: Loss = "mse") -> np.ndarray:
    """One loss per window from (windows, horizon) arrays: the mean over the horizon of the
    squared error (mse), the absolute error (mae) or the absolute percentage error (mape, %;
    steps whose actual is 0 are left out)."""
    err = np.asarray(forecast, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    if loss == "mse":
        return np.mean(err**2, axis=1)
    if loss == "mae":
        return np.mean(np.abs(err), axis=1)
    if loss == "mape":
        actual = np.asarray(actual, dtype=np.float64)
        nonzero = actual != 0
        ape = np.where(nonzero, np.abs(err) / np.where(nonzero, np.abs(actual), 1.0), np.nan)
        with np.errstate(invalid="ignore"):  # a window of zero actuals gives NaN, refused by the test
            return 100 * np.nanmean(ape, axis=1)
    raise ValueError(f"unknown loss {loss!r}; expected mse, mae or mape")


def hac_variance(d: np.ndarray, lag: int) -> float:
    """Newey–West (Bartlett-kernel) long-run variance of the series ``d``:
    ``gamma_0 + 2 * sum_{k=1..lag} (1 - k / (lag + 1)) * gamma_k``, with the autocovariances
    ``gamma_k = sum_t (d_t - mean)(d_{t-k} - mean) / T``. With ``lag=0`` it is the plain
    (population) variance. The Bartlett weights keep it non-negative, which the unweighted sum of
    the original DM test does not guarantee."""
    d = np.asarray(d, dtype=np.float64)
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    n = len(d)
    centred = d - d.mean()
    variance = float(centred @ centred) / n
    for k in range(1, min(lag, n - 1) + 1):
        gamma = float(centred[k:] @ centred[:-k]) / n
        variance += 2 * (1 - k / (lag + 1)) * gamma
    return variance


@dataclass(frozen=True)
class DieboldMariano:
    """The test's result. ``d = loss_a - loss_b``: positive when B has the lower loss."""

    statistic: float  # HLN-corrected; +inf/-inf when every window's difference is the same non-zero value
    p_two_sided: float  # H1: the expected losses differ
    p_b_better: float  # one-sided, H1: B's expected loss is lower than A's
    p_a_better: float  # one-sided, H1: A's expected loss is lower than B's
    df: int  # of the t distribution: windows - 1
    lag: int  # of the HAC variance: horizon - 1
    windows: int
    mean_loss_a: float
    mean_loss_b: float
    mean_difference: float  # mean(loss_a - loss_b)
    note: str | None = None  # why the test is degenerate (identical or constant differences)

    def as_dict(self) -> dict:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in asdict(self).items()}


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, horizon: int = 1) -> DieboldMariano:
    """Diebold–Mariano test of equal expected loss, with the Harvey–Leybourne–Newbold (1997)
    small-sample correction and t(T-1) p-values.

    ``horizon``: steps each window forecasts. The windows start one step apart, so two windows
    less than ``horizon`` steps apart forecast some of the same target steps: their loss
    differences are autocorrelated up to lag ``horizon - 1`` even for optimal forecasts (an
    MA(h-1) process). The long-run variance therefore uses Newey–West with lag ``horizon - 1``,
    the lag the HLN correction factor ``sqrt((T + 1 - 2h + h(h-1)/T) / T)`` is derived for (HLN
    use the unweighted sum; the Bartlett weights here make the test slightly more conservative
    and never give a negative variance).
    """
    from scipy import stats

    a, b = np.asarray(loss_a, dtype=np.float64), np.asarray(loss_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-d loss arrays of one length, got shapes {a.shape} and {b.shape}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    n, h = len(a), horizon
    if n < max(3, 2 * h):
        raise ValueError(f"{n} windows are too few for the Diebold-Mariano test at horizon {h} (at least {max(3, 2 * h)})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("the per-window losses contain NaN or infinite values")
    d = a - b
    mean = float(d.mean())
    base = dict(df=n - 1, lag=h - 1, windows=n, mean_loss_a=float(a.mean()), mean_loss_b=float(b.mean()),
                mean_difference=mean)  # fmt: skip
    if np.all(d == d[0]):  # zero variance: no sampling uncertainty left to test
        if d[0] == 0:
            return DieboldMariano(0.0, 1.0, 1.0, 1.0, **base, note="identical per-window losses")
        better_b = d[0] > 0
        return DieboldMariano(math.copysign(math.inf, d[0]), 0.0, 0.0 if better_b else 1.0, 1.0 if better_b else 0.0,
                              **base, note="the loss difference is the same in every window")  # fmt: skip
    variance_of_mean = hac_variance(d, h - 1) / n
    dm = mean / math.sqrt(variance_of_mean)
    hln = math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)  # > 0 for n > h
    stat = dm * hln
    t = stats.t(df=n - 1)
    return DieboldMariano(stat, float(2 * t.sf(abs(stat))), float(t.sf(stat)), float(t.cdf(stat)), **base)


def level_text(level: float) -> str:
    return f"{level * 100:g}%"


def verdict(result: DieboldMariano, level: float = 0.05, a: str = "A", b: str = "B") -> str:
    """One plain-English line. "B better than A" is the one-sided hypothesis under test (B is the
    candidate, A the reference); the reverse is claimed only by the two-sided test."""
    if result.p_b_better < level:
        return f"{b} is better than {a} at the {level_text(level)} level (one-sided p={result.p_b_better:.2g})"
    if result.p_two_sided < level and result.mean_difference < 0:
        return f"{a} is better than {b} at the {level_text(level)} level (two-sided p={result.p_two_sided:.2g})"
    note = f"; {result.note}" if result.note else ""
    return f"no significant difference at the {level_text(level)} level (two-sided p={result.p_two_sided:.2g}{note})"
