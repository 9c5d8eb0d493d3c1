"""Data stages on small real data: ingest, validation, chronological split, train-only scaling, windows."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstmops import config
from lstmops.data.ingest import ingest
from lstmops.tasks.forecast.prepare import Prepared, chronological_split, prepare
from lstmops.data.validate import profile, validate, validate_frame
from lstmops.tasks.forecast.windows import gather, origins, window_view
from lstmops.errors import DataError, ValidationFailed

REPO = Path(__file__).resolve().parents[1]
CFG = config.load(REPO)


def write_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def data_cfg(source: Path):
    return CFG.data.model_copy(update={"source": str(source)})


# --- ingest -----------------------------------------------------------------------------------


def test_ingest_writes_a_parquet_snapshot_with_parsed_times(tmp_path, small_frame):
    src = write_csv(tmp_path, small_frame)
    out = tmp_path / "raw" / "snapshot.parquet"
    ingest(data_cfg(src), tmp_path, out)
    snap = pd.read_parquet(out)
    assert len(snap) == len(small_frame)
    assert pd.api.types.is_datetime64_any_dtype(snap["timestamp"])
    assert snap["demand_gw"].tolist() == small_frame["demand_gw"].tolist()


def test_ingest_reads_parquet_sources_too(tmp_path, small_frame):
    src = tmp_path / "data.parquet"
    small_frame.to_parquet(src)
    ingest(data_cfg(src), tmp_path, tmp_path / "snap.parquet")
    assert len(pd.read_parquet(tmp_path / "snap.parquet")) == len(small_frame)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "file is empty"),
        ("when,demand_gw\n2014-01-01 00:00,1\n", "time column 'timestamp' not found"),
        ("timestamp,demand_gw\n2014-01-01 00:00,1\nnot-a-date,2\n", "row 2: 'not-a-date' is not a timestamp"),
    ],
)
def test_ingest_refuses_unreadable_input_in_one_line_and_writes_nothing(tmp_path, content, message):
    src = tmp_path / "bad.csv"
    src.write_text(content)
    out = tmp_path / "raw" / "snapshot.parquet"
    with pytest.raises(DataError, match=message) as err:
        ingest(data_cfg(src), tmp_path, out)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_ingest_names_a_missing_source(tmp_path):
    with pytest.raises(DataError, match="source file not found"):
        ingest(data_cfg(tmp_path / "nope.csv"), tmp_path, tmp_path / "snap.parquet")


# --- validate ---------------------------------------------------------------------------------


def parsed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(timestamp=pd.to_datetime(frame["timestamp"]))


def test_real_data_passes_every_expectation(small_frame):
    checks, failures, _ = validate_frame(CFG.data, parsed(small_frame))
    assert failures == []
    kinds = {c["expectation"] for c in checks}
    assert {"expect_column_to_exist", "expect_column_values_to_not_be_null", "expect_column_values_to_be_unique",
            "expect_column_values_to_be_increasing", "expect_column_values_to_be_in_set",
            "expect_column_values_to_be_between", "expect_column_values_to_be_in_type_list"} <= kinds  # fmt: skip


def failures_for(frame: pd.DataFrame) -> list[str]:
    return validate_frame(CFG.data, parsed(frame))[1]


def test_null_in_target_names_column_count_and_row(small_frame):
    frame = small_frame.copy()
    frame.loc[9, "demand_gw"] = np.nan
    (line,) = failures_for(frame)
    assert line.startswith("column 'demand_gw': 1 null value(s): row 10")


def test_duplicated_timestamp_is_reported(small_frame):
    frame = small_frame.copy()
    frame.loc[5, "timestamp"] = frame.loc[4, "timestamp"]
    lines = failures_for(frame)
    assert any("2 duplicated timestamp(s): row 5" in line for line in lines)
    assert any("not after the previous row" in line for line in lines)


def test_irregular_step_and_out_of_bounds_values_are_reported(small_frame):
    frame = small_frame.drop(index=[100]).reset_index(drop=True)
    frame.loc[3, "temperature_c"] = 99.0
    lines = failures_for(frame)
    assert any("differ from 30min" in line and "row 101" in line for line in lines)
    assert any(line.startswith("column 'temperature_c': 1 value(s) outside [-10.0, 50.0]: row 4 (99.0)") for line in lines)


def test_non_numeric_feature_names_the_offending_row(small_frame):
    frame = small_frame.astype({"temperature_c": object})
    frame.loc[7, "temperature_c"] = "warm"
    (line,) = failures_for(frame)
    assert "column 'temperature_c': expected numbers" in line and "row 8 ('warm')" in line


def test_missing_column_is_one_failure_not_a_cascade(small_frame):
    (line,) = failures_for(small_frame.drop(columns=["workday"]))
    assert line.startswith("column 'workday': required column is missing")


def test_validate_writes_the_report_and_raises_on_failure(tmp_path, small_frame):
    frame = parsed(small_frame)
    frame.loc[0, "demand_gw"] = None
    report = tmp_path / "validation.json"
    with pytest.raises(ValidationFailed) as err:
        validate(CFG.data, frame, report, "data.csv")
    assert len(err.value.lines) == 1 and err.value.lines[0].startswith("data.csv: column 'demand_gw'")
    saved = json.loads(report.read_text())
    assert saved["success"] is False
    assert saved["failed"] == [line.split(": ", 1)[1] for line in err.value.lines]
    html = report.with_suffix(".html").read_text()
    assert "FAILED (1 checks)" in html and '<tr class="fail"><td>FAIL</td><td>demand_gw</td>' in html


# --- prepare and windows ------------------------------------------------------------------------


def test_split_is_chronological_and_covers_every_row():
    split = chronological_split(1000, 0.15, 0.15)
    assert (split.train_end, split.val_end, split.length) == (700, 850, 1000)


def test_scaler_uses_training_rows_only(tmp_path, small_frame):
    snap = tmp_path / "snap.parquet"
    frame = parsed(small_frame)
    cfg = config.load(REPO, ["window.input_steps=48", "window.horizon=12", "evaluate.seasonal_periods={d: 48}", "model.seasonal_skip=null"])
    split = chronological_split(len(frame), 0.15, 0.15)
    frame.loc[split.train_end :, "demand_gw"] += 100.0  # a huge shift after training must not leak in
    frame.to_parquet(snap)
    meta = prepare(cfg, snap, tmp_path / "prepared")
    train = frame["demand_gw"].iloc[: split.train_end]
    assert meta.mean[0] == pytest.approx(train.mean())
    assert meta.std[0] == pytest.approx(train.std(ddof=0))
    series = np.load(tmp_path / "prepared" / "series.npy")
    assert series.shape == (len(frame), 3) and series.dtype == np.float32
    assert Prepared.load(tmp_path / "prepared") == meta


def test_constant_target_over_training_span_is_refused(tmp_path, small_frame):
    frame = parsed(small_frame).assign(demand_gw=5.0)
    frame.to_parquet(tmp_path / "snap.parquet")
    with pytest.raises(DataError, match="'demand_gw' is constant over the training span"):
        prepare(CFG, tmp_path / "snap.parquet", tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_too_few_rows_for_one_window_is_refused(tmp_path, small_frame):
    parsed(small_frame).to_parquet(tmp_path / "snap.parquet")
    cfg = config.load(REPO, ["window.input_steps=800", "evaluate.seasonal_periods={d: 48}", "model.seasonal_skip=null"])
    with pytest.raises(DataError, match="training span has 840 rows, fewer than"):
        prepare(cfg, tmp_path / "snap.parquet", tmp_path / "prepared")


def test_window_origins_keep_targets_inside_their_span():
    split = chronological_split(1000, 0.15, 0.15)
    train, val, test = (origins(split, p, 48, 12) for p in ("train", "val", "test"))
    assert train[0] == 48 and train[-1] + 12 == split.train_end
    assert val[0] == split.train_end and val[-1] + 12 == split.val_end
    assert test[0] == split.val_end and test[-1] + 12 == split.length


def test_windows_are_views_and_batches_are_gathered_by_index():
    import torch

    series = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    view = window_view(series, 48)
    assert np.shares_memory(view, series)  # no (windows x 48 x 3) copy
    x, y = gather(torch.from_numpy(series), torch.tensor([48, 100]), 48, 12, target_index=0)
    assert x.shape == (2, 48, 3) and y.shape == (2, 12)
    assert torch.equal(x[1], torch.from_numpy(view[100 - 48].copy()))
    assert torch.equal(y[1], torch.from_numpy(series[100:112, 0]))


def test_ingest_selects_one_series_of_long_format_data(tmp_path, small_frame):
    other = small_frame.assign(demand_gw=small_frame["demand_gw"] * 10, region="NSW")
    panel = pd.concat([small_frame.assign(region="VIC"), other]).sort_values("timestamp", kind="stable")
    src = write_csv(tmp_path, panel)
    cfg = data_cfg(src).model_copy(update={"series_column": "region", "series_id": "VIC"})
    ingest(cfg, tmp_path, tmp_path / "snap.parquet")
    snap = pd.read_parquet(tmp_path / "snap.parquet")
    assert "region" not in snap.columns
    assert snap["demand_gw"].tolist() == small_frame["demand_gw"].tolist()

    missing = cfg.model_copy(update={"series_id": "QLD"})
    with pytest.raises(DataError, match="no rows with region = 'QLD' \\(ids include: NSW, VIC\\)"):
        ingest(missing, tmp_path, tmp_path / "other.parquet")


def test_series_column_without_an_id_is_a_config_error():
    from lstmops.errors import ConfigError

    with pytest.raises(ConfigError, match="series_column and data.series_id go together"):
        config.load(REPO, ["data.series_column=region"])


def test_resample_policy_fills_short_gaps_and_counts_them(tmp_path, small_frame):
    src = write_csv(tmp_path, small_frame.drop(index=[100, 101, 102]))
    cfg = data_cfg(src).model_copy(update={"irregular_index": "resample", "fill_limit": 3})
    snapshot = ingest(cfg, tmp_path, tmp_path / "snap.parquet")
    frame = pd.read_parquet(tmp_path / "snap.parquet")
    assert snapshot.filled_rows == 3 and snapshot.rows == len(frame) == len(small_frame)
    assert frame["demand_gw"].iloc[101] == pytest.approx(
        (small_frame["demand_gw"].iloc[99] + 2 * (small_frame["demand_gw"].iloc[103] - small_frame["demand_gw"].iloc[99]) / 4)
    )
    assert validate_frame(CFG.data, frame)[1] == []


def test_resample_policy_refuses_a_gap_longer_than_the_fill_limit(tmp_path, small_frame):
    src = write_csv(tmp_path, small_frame.drop(index=[100, 101, 102]))
    cfg = data_cfg(src).model_copy(update={"irregular_index": "resample", "fill_limit": 2})
    with pytest.raises(DataError, match="gap of 3 steps starting 2014-01-03 02:00:00 exceeds data.fill_limit=2"):
        ingest(cfg, tmp_path, tmp_path / "snap.parquet")
    assert not (tmp_path / "snap.parquet").exists()


def test_outliers_by_robust_z_score_and_warn_only_severity(small_frame):
    frame = parsed(small_frame)
    frame.loc[[10, 20], "demand_gw"] = 14.0  # inside the bounds, far outside the bulk
    cfg = CFG.data.model_copy(update={"outlier_z": 8.0, "outlier_max_share": 0.001})
    _, errors, warnings = validate_frame(cfg, frame)
    assert errors == ["column 'demand_gw': 2 value(s) with robust z-score above 8 (at most 0.1% allowed): row 11 (14.0), row 21 (14.0)"]
    relaxed = cfg.model_copy(update={"outlier_max_share": 0.01})
    assert validate_frame(relaxed, frame)[1] == []  # 2 of 1200 rows is within 1%
    warned = cfg.model_copy(update={"warn_only": ["outliers"]})
    _, errors, warnings = validate_frame(warned, frame)
    assert errors == [] and len(warnings) == 1 and "robust z-score" in warnings[0]


# --- drift against the last accepted snapshot -----------------------------------------------------


def test_unchanged_data_shows_no_drift(small_frame):
    frame = parsed(small_frame)
    checks, errors, warnings = validate_frame(CFG.data, frame, profile(frame))
    assert errors == [] and warnings == []
    assert {"drift_columns", "drift_dtypes", "drift_stats"} <= {c["check"] for c in checks}


def test_added_removed_column_and_dtype_change_are_errors(small_frame):
    reference = profile(parsed(small_frame))
    frame = parsed(small_frame).drop(columns=["workday"]).assign(humidity=0.5)
    frame["temperature_c"] = frame["temperature_c"].astype(str)
    _, errors, _ = validate_frame(CFG.data.model_copy(update={"features": ["demand_gw"]}), frame, reference)
    assert any(e.startswith("columns differ from the accepted snapshot: added ['humidity'], removed ['workday']") for e in errors)
    assert any(e.startswith("column 'temperature_c': dtype str differs from the accepted snapshot's float64") for e in errors)
    assert all("delete data/accepted_profile.json to accept the new layout" in e for e in errors if "accepted" in e)


def test_a_shifted_mean_or_std_is_a_warning_by_default_and_an_error_on_request(small_frame):
    reference = profile(parsed(small_frame))
    frame = parsed(small_frame).assign(demand_gw=lambda f: f["demand_gw"] + 1.0, temperature_c=lambda f: f["temperature_c"] * 2)
    cfg = CFG.data.model_copy(update={"bounds": {}})  # doubled temperatures leave the declared range
    _, errors, warnings = validate_frame(cfg, frame, reference)
    assert errors == []
    assert [w.split(" drifted")[0].rsplit(" ", 1)[0] for w in warnings] == [
        "column 'demand_gw': mean", "column 'temperature_c': mean", "column 'temperature_c': standard deviation"
    ]
    assert "(accepted snapshot's value +/- data.drift_threshold=0.25)" in warnings[0]
    strict = cfg.model_copy(update={"warn_only": []})
    assert len(validate_frame(strict, frame, reference)[1]) == 3
    off = cfg.model_copy(update={"drift_threshold": None})
    assert validate_frame(off, frame, reference)[2] == []


def test_a_passing_snapshot_becomes_the_reference_and_a_failing_one_does_not(tmp_path, small_frame):
    accepted, report = tmp_path / "accepted_profile.json", tmp_path / "validation.json"
    frame = parsed(small_frame)
    validate(CFG.data, frame, report, "data.csv", accepted)
    assert json.loads(accepted.read_text()) == json.loads(json.dumps(profile(frame)))
    before = accepted.read_bytes()
    with pytest.raises(ValidationFailed, match="added \\['extra'\\]"):
        validate(CFG.data, frame.assign(extra=1.0), report, "data.csv", accepted)
    assert accepted.read_bytes() == before
    assert json.loads(report.read_text())["drift_reference"] == str(accepted)
    validate(CFG.data, frame.head(600), report, "other.csv", accepted, accept=False)  # a standalone check
    assert accepted.read_bytes() == before
