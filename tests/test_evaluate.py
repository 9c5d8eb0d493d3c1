"""Metrics in original units, and naive baselines that only look at the past."""

import numpy as np
import pytest

from lstmops.evaluate import baselines, error_metrics, evaluate_forecasts, target_matrix


def test_error_metrics_on_known_values():
    actual = np.array([[1.0, 2.0], [3.0, 4.0]])
    forecast = np.array([[2.0, 2.0], [3.0, 2.0]])
    m = error_metrics(actual, forecast)
    assert m["rmse"] == pytest.approx(np.sqrt((1 + 0 + 0 + 4) / 4))
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["mape"] == pytest.approx(100 * (1 / 1 + 0 + 0 + 2 / 4) / 4)
    assert m["r2"] == pytest.approx(1 - 5 / 5)
    per_step = error_metrics(actual, forecast, axis=0)
    assert per_step["mae"].tolist() == [0.5, 1.0]


def test_baselines_use_only_values_before_the_origin():
    target = np.arange(100, dtype=float)
    test_origins = np.array([50, 60])
    f = baselines(target, test_origins, horizon=6, periods={"day": 4})
    assert f["persistence"][0].tolist() == [49.0] * 6
    # seasonal naive with period 4: steps 0..3 repeat t-4..t-1, steps 4..5 repeat that cycle again
    assert f["day"][0].tolist() == [46.0, 47.0, 48.0, 49.0, 46.0, 47.0]
    assert (f["day"] < test_origins[:, None]).all() and (f["persistence"] < test_origins[:, None]).all()


def test_a_perfect_forecast_scores_zero_error_and_r2_one():
    target = np.sin(np.arange(300) / 5)
    test_origins = np.arange(200, 290)
    actual = target_matrix(target, test_origins, 10)
    overall, per_step = evaluate_forecasts(actual, {"lstm": actual.copy()})
    assert overall["lstm"]["rmse"] == 0 and overall["lstm"]["r2"] == 1
    assert len(per_step) == 10 and set(per_step.columns) == {"forecaster", "step", "rmse", "mae", "mape", "r2"}
