"""The rolling-origin backtest: K expanding-window folds with the pipeline's split sizes, the last
one the pipeline's own split; every fold retrained from scratch and scored with the baselines."""

from __future__ import annotations

import json

import pytest

from lstmops.tasks.forecast.backtest import fold_splits, spread
from lstmops.tasks.forecast.prepare import chronological_split
from lstmops.errors import DataError

from .conftest import SMALL, lstmops


@pytest.mark.parametrize(("length", "folds"), [(17520, 4), (1200, 3), (1001, 5)])
def test_folds_expand_their_test_spans_tile_the_end_and_the_last_is_the_pipelines_split(length, folds):
    splits = fold_splits(length, 0.15, 0.15, folds)
    assert splits[-1] == chronological_split(length, 0.15, 0.15)
    test_rows = {s.length - s.val_end for s in splits}
    val_rows = {s.val_end - s.train_end for s in splits}
    assert len(test_rows) == 1 and len(val_rows) == 1  # the same sizes in every fold
    for earlier, later in zip(splits, splits[1:]):
        assert later.val_end == earlier.length  # test spans are back to back, no overlap, no hole
        assert later.train_end > earlier.train_end  # the training span only grows
    assert splits[-1].length == length


def test_spread_is_the_mean_and_sample_std_over_folds():
    folds = [{"metrics": {"lstm": {"rmse": r}}} for r in (1.0, 2.0, 3.0)]
    assert spread(folds) == {"lstm": {"rmse": {"mean": 2.0, "std": 1.0}}}


@pytest.mark.integration
def test_backtest_stage_retrains_each_fold_and_its_last_fold_is_the_pipelines_test_score(project, mlflow_server):
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    flags = [a for o in [*SMALL, "evaluate.backtest_folds=3"] for a in ("-S", o)]
    for stage in ("ingest", "validate", "prepare", "train", "evaluate", "backtest"):
        result = lstmops(project, env, stage, *flags)
        assert result.returncode == 0, f"{stage}: {result.stderr[-2000:]}"
    report = json.loads((project / "reports/backtest.json").read_text())
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [1, 2, 3]
    assert [f["train_rows"] for f in report["folds"]] == sorted({f["train_rows"] for f in report["folds"]})
    # The last fold trains what `lstmops train` trained (same rows, scaler, seed): CPU runs agree bit for bit.
    assert report["folds"][-1]["metrics"] == metrics["test"]
    assert set(report["summary"]) == {"lstm", "persistence", "seasonal_naive_day"}
    assert "backtest: 3 expanding-window folds, each retrained" in result.stdout
    assert "the LSTM beats the best naive baseline in" in result.stdout

    from mlflow.tracking import MlflowClient

    run_id = json.loads((project / "models/train.json").read_text())["run_id"]
    logged = MlflowClient(mlflow_server).get_run(run_id).data.metrics
    assert logged["backtest_lstm_rmse_mean"] == report["summary"]["lstm"]["rmse"]["mean"]
    history = MlflowClient(mlflow_server).get_metric_history(run_id, "backtest_lstm_rmse")
    assert [m.step for m in history] == [1, 2, 3]


def test_too_many_folds_for_the_data_are_refused_in_one_line(project):
    flags = [a for o in [*SMALL, "evaluate.backtest_folds=20"] for a in ("-S", o)]
    assert lstmops(project, {}, "ingest", *flags).returncode == 0
    result = lstmops(project, {}, "backtest", *flags)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "evaluate.backtest_folds=20: the first fold's training span has" in result.stderr
    assert not (project / "reports/backtest.json").exists()


def test_fold_sizes_follow_the_split_fractions():
    with pytest.raises(DataError):
        from lstmops.tasks.forecast.backtest import check_folds

        check_folds(fold_splits(1200, 0.15, 0.15, 20), 48, 12, 20)
