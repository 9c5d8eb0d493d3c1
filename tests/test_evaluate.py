"""Metrics in original units, and naive baselines that only look at the past."""

import numpy as np
import pytest

from lstmops.tasks.forecast.evaluate import baselines, error_metrics, evaluate_forecasts, target_matrix


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


def test_mase_scale_is_the_in_sample_seasonal_naive_error_inside_segments():
    from lstmops.tasks.forecast.evaluate import seasonal_mae

    target = np.arange(10, dtype=float)
    target[5:] += 100  # a jump where a gap splits the series
    assert seasonal_mae(target, 10, 1) == pytest.approx((8 * 1 + 101) / 9)
    assert seasonal_mae(target, 10, 1, [[0, 5], [5, 10]]) == pytest.approx(1.0)  # the gap is not a step
    assert seasonal_mae(target, 10, 1, [[5, 10]]) == pytest.approx(1.0)  # a dropped segment is left out
    assert seasonal_mae(target, 4, 2) == pytest.approx(2.0)  # training span only
    actual, forecast = np.array([[1.0, 2.0]]), np.array([[2.0, 4.0]])
    assert error_metrics(actual, forecast, scale=3.0)["mase"] == pytest.approx(1.5 / 3.0)
    assert "mase" not in error_metrics(actual, forecast)


def test_skill_is_against_the_best_baseline_not_the_first_listed():
    from lstmops.tasks.forecast.evaluate import best_baseline

    overall = {"lstm": {"rmse": 0.9}, "seasonal_naive_day": {"rmse": 1.2}, "persistence": {"rmse": 1.0}}
    assert best_baseline(overall) == "persistence"


def test_the_summary_line_reports_skill_against_the_best_baseline():
    from lstmops.tasks.forecast.task import metrics_lines

    row = lambda rmse: {"rmse": rmse, "mae": rmse, "mape": 1.0, "r2": 0.5, "mase": rmse / 2}  # noqa: E731
    metrics = {"test": {"lstm": row(0.92), "persistence": row(1.0), "seasonal_naive_day": row(1.2)}, "target": "t",
               "skill_vs_persistence": 0.08, "skill_vs_seasonal_naive_day": 0.233333, "best_baseline": "persistence",
               "skill_vs_best_baseline": 0.08, "mase_scale": {"period": 48, "train_mae": 2.0}}  # fmt: skip
    lines = "\n".join(metrics_lines(metrics)).splitlines()
    assert "skill vs the best naive baseline, persistence: +8.0% (RMSE reduction)" in lines
    assert not any("seasonal naive day:" in line for line in lines)
    assert lines[1].split() == ["forecaster", "RMSE", "MAE", "MAPE%", "R2", "MASE"]
