"""The forecaster's diagnostics (diagnostics.py) on toy forecasters with known answers: no
training, no servers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lstmops.tasks.forecast import diagnostics as diag
from lstmops.tasks.forecast.evaluate import target_matrix

HORIZON = 4


def test_ljung_box_statistic_matches_a_hand_computed_value():
    x = np.array([1.0, -1.0, 1.0, -1.0])
    # mean 0, sum of squares 4: r1 = (-1 - 1 - 1) / 4, r2 = (1 + 1) / 4
    np.testing.assert_allclose(diag.acf(x, 2), [-0.75, 0.5])
    q, p = diag.ljung_box(x, 2)
    assert q == pytest.approx(4 * 6 * (0.75**2 / 3 + 0.5**2 / 2))  # 7.5
    assert p == pytest.approx(np.exp(-q / 2))  # chi-squared with 2 degrees of freedom: sf = exp(-q/2)


def test_white_noise_passes_and_ar1_residuals_fail_ljung_box():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(2000)
    assert diag.ljung_box(noise, 48)[1] > 0.05
    ar = np.zeros(2000)
    for t in range(1, len(ar)):
        ar[t] = 0.5 * ar[t - 1] + noise[t]
    assert diag.ljung_box(ar, 48)[1] < 1e-3


def test_a_model_with_a_planted_lag_has_autocorrelated_one_step_residuals():
    rng = np.random.default_rng(1)
    y = rng.standard_normal(1200)
    origins = np.arange(100, 1100)
    actual = target_matrix(y, origins, HORIZON)
    good = actual + 0.1 * rng.standard_normal(actual.shape)  # white errors
    lagged = target_matrix(y, origins, HORIZON, shift=1)  # the actual one step late: errors y[t-1] - y[t]
    residuals, at = diag.one_step_residuals(origins, good, actual)
    assert diag.ljung_box(residuals, 48)[1] > 0.05 and at.tolist() == origins.tolist()
    residuals, _ = diag.one_step_residuals(origins, lagged, actual)
    q, p = diag.ljung_box(residuals, 48)
    assert p < 1e-3
    assert diag.acf(residuals, 1)[0] == pytest.approx(-0.5, abs=0.06)  # an MA(1) of white noise


def test_one_step_residuals_keep_the_longest_run_of_consecutive_origins():
    origins = np.array([10, 11, 12, 40, 41, 42, 43, 44, 90])
    actual = np.zeros((len(origins), HORIZON))
    forecast = origins[:, None] + np.zeros(HORIZON)
    residuals, at = diag.one_step_residuals(origins, forecast, actual)
    assert at.tolist() == [40, 41, 42, 43, 44] and residuals.tolist() == [40, 41, 42, 43, 44]


def test_planted_errors_at_one_hour_show_up_at_that_hour_and_step():
    times = pd.date_range("2024-01-01", periods=600, freq="30min")
    hours = times.hour.to_numpy()
    origins = np.arange(100, 500)
    at = diag.target_hours(hours, origins, HORIZON)
    errors = np.where(at == 7, 2.0, 0.0)
    by_hour = diag.rmse_by_group(errors, at, 24)
    assert by_hour[7] == pytest.approx(2.0)
    assert np.all(np.delete(by_hour, 7) == 0)
    steps = np.zeros((len(origins), HORIZON))
    steps[:, 2] = 3.0
    assert diag.rmse_by_step(steps).tolist() == [0.0, 0.0, 3.0, 0.0]


def only_feature_0(x: np.ndarray) -> np.ndarray:
    """A toy forecaster that reads feature 0 alone (its mean over the history)."""
    return np.repeat(x[:, :, 0].mean(axis=1, keepdims=True), HORIZON, axis=1)


def last_step_only(x: np.ndarray) -> np.ndarray:
    """A toy forecaster that reads the last step alone (the sum of its features)."""
    return np.repeat(x[:, -1, :].sum(axis=1, keepdims=True), HORIZON, axis=1)


def test_permutation_importance_credits_only_the_feature_the_model_reads():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 20, 3)).astype(np.float32)
    actual = only_feature_0(x) + 0.01 * rng.standard_normal((64, HORIZON))
    importance = diag.permutation_importance(only_feature_0, x, actual, only_feature_0(x), seed=0)
    assert importance[0] > 0.1
    assert importance[1:].tolist() == [0.0, 0.0]
    # Seeded: the same shuffles give the same numbers.
    assert diag.permutation_importance(only_feature_0, x, actual, only_feature_0(x), seed=0).tolist() == importance.tolist()


def test_history_parts_follow_the_frequency_and_the_history_length():
    assert diag.history_parts("30min", 336) == {
        "last_hour": (1, 2), "rest_of_last_day": (3, 48), "same_time_last_week": (334, 336),
    }  # fmt: skip
    assert diag.history_parts("1h", 48) == {"last_hour": (1, 1), "rest_of_last_day": (2, 24)}  # no week of history
    assert diag.history_parts("1h", 200) == {"last_hour": (1, 1), "rest_of_last_day": (2, 24), "same_time_last_week": (167, 169)}


def test_perturbing_the_history_moves_only_the_parts_a_last_step_model_reads():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 336, 3)).astype(np.float32)
    base = last_step_only(x)
    parts = diag.history_parts("30min", 336)
    moved = diag.history_sensitivity(last_step_only, x, base, parts)
    assert moved["last_hour"] == pytest.approx(3.0)  # +1 std on each of 3 features at the last step
    assert moved["rest_of_last_day"] == 0.0 and moved["same_time_last_week"] == 0.0
    np.testing.assert_allclose(diag.feature_sensitivity(last_step_only, x, base), [1.0, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(diag.feature_sensitivity(only_feature_0, x, only_feature_0(x)), [1.0, 0.0, 0.0], rtol=1e-6)


def test_the_model_adapter_reproduces_evaluations_forecasts_in_original_units():
    import torch

    from lstmops.tasks.forecast.windows import gather
    from lstmops.tasks.forecast.evaluate import predict_scaled
    from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec

    torch.manual_seed(0)
    model = LSTMForecaster(ModelSpec(n_features=2, hidden_size=4, num_layers=1, dropout=0.0, horizon=HORIZON)).eval()
    series = np.random.default_rng(4).standard_normal((120, 2)).astype(np.float32)
    meta = SimpleNamespace(input_steps=24, horizon=HORIZON, target_index=0)
    origins = np.arange(24, 117)
    x, _ = gather(torch.from_numpy(series), torch.from_numpy(origins), 24, HORIZON, 0)
    forecast = diag.model_forecast(model, mean=5.0, std=2.0, batch=10)
    np.testing.assert_allclose(forecast(x.numpy()), predict_scaled(model, series, origins, meta) * 2.0 + 5.0, rtol=1e-5)


def test_spread_picks_evenly_spaced_windows():
    assert diag.spread(10, 4).tolist() == [0, 3, 6, 9]
    assert diag.spread(3, 512).tolist() == [0, 1, 2]


def toy_report() -> diag.Diagnostics:
    rng = np.random.default_rng(5)
    times = pd.Series(pd.date_range("2024-01-01", periods=800, freq="30min"))
    y = rng.standard_normal(800)
    origins = np.arange(400, 796)
    actual = target_matrix(y, origins, HORIZON)
    x = rng.standard_normal((32, 336, 3)).astype(np.float32)
    return diag.diagnose(
        last_step_only, x, actual[:32], origins, actual, actual + 0.1 * rng.standard_normal(actual.shape),
        times.dt.hour.to_numpy(), times.to_numpy(), target="demand", features=["demand", "temp", "workday"],
        parts=diag.history_parts("30min", 336), max_lag=96, seed=0, smooth=48,
    )  # fmt: skip


def test_the_report_renders_a_page_naming_every_png_and_the_numbers(tmp_path):
    d = toy_report()
    files = diag.render(tmp_path / "diagnostics", d)
    page = (tmp_path / "diagnostics" / "index.html").read_text()
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) == 6
    for png in pngs:
        assert png.stat().st_size > 1000 and f'src="{png.name}"' in page
    numbers = json.loads((tmp_path / "diagnostics" / "diagnostics.json").read_text())
    assert numbers["one_step_residuals"]["ljung_box"]["lags"] == 96
    assert set(numbers["perturbation"]["history"]) == {"last_hour", "rest_of_last_day", "same_time_last_week"}
    assert set(numbers["rmse_by_hour"]) == {str(h) for h in range(24)}
    metrics = d.metrics()
    assert {"diag_ljung_box_p", "diag_residual_acf_lag1", "diag_permutation_demand"} <= set(metrics)
    assert d.line(tmp_path / "index.html").startswith("diagnostics: Ljung-Box p=")


def test_the_settings_default_on_and_params_yaml_carries_them():
    from pathlib import Path

    from lstmops import config

    settings = config.load(Path(__file__).resolve().parents[1]).evaluate.diagnostics
    assert settings.enabled and settings.windows == 512 and settings.max_lag == 96
    from lstmops.tasks.forecast.settings import DiagnosticsConfig

    assert DiagnosticsConfig() == settings


def test_a_test_span_of_one_window_gives_no_ljung_box_rather_than_a_failed_stage(tmp_path):
    times = pd.Series(pd.date_range("2024-01-01", periods=400, freq="30min"))
    y = np.random.default_rng(6).standard_normal(400)
    origins = np.array([380])
    actual = target_matrix(y, origins, HORIZON)
    x = np.zeros((1, 336, 2), dtype=np.float32)
    d = diag.diagnose(
        last_step_only, x, actual, origins, actual, actual + 1.0, times.dt.hour.to_numpy(), times.to_numpy(),
        target="y", features=["y", "z"], parts=diag.history_parts("30min", 336), max_lag=96, seed=0,
    )  # fmt: skip
    diag.render(tmp_path, d)
    assert json.loads((tmp_path / "diagnostics.json").read_text())["one_step_residuals"]["ljung_box"]["p"] is None
