"""A messy 5-minute sensor export, as real exports come: duplicated timestamps, rows out of order,
jittered steps (4 and 6 minutes), placeholders (`nil`, `-`) in a numeric column and gaps (two
days, one hour). With the cleaning policies on it goes through ingest, validate, prepare and a
short train and evaluate; each count must equal what the generator planted, and no window or
span may cross a gap (checked on the rows the real gather functions read). With the default
(strict) settings the same file is refused at validation, naming each problem."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lstmops import config, paths, stages
from lstmops.tasks.forecast.prepare import Prepared
from lstmops.tasks.forecast.windows import gather, gather_spans, origins
from lstmops.errors import ConfigError, ValidationFailed
from lstmops.io import read_json
from lstmops.tasks.forecast import task as forecast

REPO = Path(__file__).resolve().parents[1]
STEP = pd.Timedelta("5min")
L, H = 24, 6  # window of the small model below: 2 hours of history, half an hour ahead
SOURCE = Path("data/source/sensor_export.csv")

# Grid steps of the clean series, and what is planted in it (indices are grid steps).
N_STEPS = 3000
GAPS = [(1500, 576), (2096, 12)]  # (first missing step, length): two days, then one hour
SHORT_SEGMENT = (2076, 2096)  # 20 rows between the gaps: too short for one window (L + H = 30)
JITTER = {200: -60, 450: 60, 700: -60, 950: 60, 1200: -60, 2300: 60, 2600: -60}  # seconds off the grid
PLACEHOLDERS = {300: "nil", 800: "nil", 2500: "nil", 1100: "-"}  # in the numeric column temp
DUPLICATES = [120, 620, 1320, 2200, 2800]  # each followed by a second row at its timestamp (level + 1)
SWAPS = [50, 1000, 2400, 2900]  # rows i and i + 1 written in reverse order

POLICIES = [
    "data.irregular_index=resample", "data.fill_limit=2", "data.gaps=segment", "data.snap_tolerance=90s",
    "data.na_values=[nil, NA, '-']",
]  # fmt: skip
BASE = [
    f"data.source={SOURCE}", "data.time_column=time", "data.target=level", "data.features=[level, temp]",
    "data.frequency=5min", "data.bounds={}", f"window.input_steps={L}", f"window.horizon={H}",
    "evaluate.seasonal_periods={naive_hour: 12}", "evaluate.plot_days=2", "model.hidden_size=8", "model.num_layers=1", "model.seasonal_skip=null",
    "train.epochs=2", "train.positions=16", "train.spans_per_batch=4", "train.batch_size=32", "train.warmup_steps=0",
    "train.patience=2", "train.device=cpu",
]  # fmt: skip


@dataclass
class Planted:
    frame: pd.DataFrame  # the rows as written (in file order)
    clean: pd.DataFrame  # the grid rows that exist, before any mess


def messy_sensor_frame() -> Planted:
    rng = np.random.default_rng(7)
    i = np.arange(N_STEPS)
    clean = pd.DataFrame({
        "time": pd.Timestamp("2024-03-01") + i * STEP,
        "level": 50 + 10 * np.sin(2 * np.pi * i / 288) + rng.normal(0, 0.5, N_STEPS),
        "temp": 15 + 5 * np.sin(2 * np.pi * (i - 40) / 288) + rng.normal(0, 0.2, N_STEPS),
    })  # fmt: skip
    missing = np.zeros(N_STEPS, dtype=bool)
    for start, length in GAPS:
        missing[start : start + length] = True
    rows = []
    for k in np.flatnonzero(~missing):
        row = clean.iloc[k].to_dict()
        row["time"] = row["time"] + pd.Timedelta(seconds=JITTER.get(k, 0))
        row["temp"] = PLACEHOLDERS.get(k, f"{row['temp']:.4f}")
        rows.append(row)
        if k in DUPLICATES:
            rows.append({**row, "level": row["level"] + 1.0})
    frame = pd.DataFrame(rows)
    order = list(range(len(frame)))
    for k in SWAPS:
        at = int(np.flatnonzero(frame["time"].to_numpy() == clean["time"].iloc[k].to_datetime64())[0])
        order[at], order[at + 1] = order[at + 1], order[at]
    return Planted(frame.iloc[order].reset_index(drop=True), clean[~missing].reset_index(drop=True))


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, Planted]:
    planted = messy_sensor_frame()
    (tmp_path / SOURCE).parent.mkdir(parents=True)
    as_text = planted.frame.assign(time=planted.frame["time"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    as_text.to_csv(tmp_path / SOURCE, index=False)
    return tmp_path, planted


def run_data_stages(root: Path, overrides: list[str]) -> tuple[config.Config, list[str]]:
    cfg = config.load(REPO, BASE + overrides)
    return cfg, [stages.RUNNERS[name](cfg, root) for name in ("ingest", "validate", "prepare")]


def test_default_settings_refuse_the_file_naming_each_problem(messy):
    root, _ = messy
    cfg = config.load(REPO, BASE)
    stages.ingest(cfg, root)
    with pytest.raises(ValidationFailed) as failed:
        stages.validate(cfg, root)
    lines = failed.value.lines
    assert all("\n" not in line for line in lines)
    reasons = ["duplicated timestamp(s)", "timestamp(s) not after the previous row",
               "step(s) from the previous row differ from 5min", "expected numbers, found dtype str; e.g. row 302 ('nil')"]  # fmt: skip
    for reason in reasons:
        assert any(reason in line for line in lines), (reason, lines)
    assert not (root / paths.ACCEPTED_PROFILE).exists()


def test_policies_clean_the_file_and_count_exactly_what_was_planted(messy, monkeypatch):
    root, planted = messy
    cfg, lines = run_data_stages(root, POLICIES + ["data.duplicates=first"])
    expected = {
        "placeholders": len(PLACEHOLDERS), "out_of_order": len(SWAPS), "snapped": len(JITTER), "beyond_tolerance": 0,
        "duplicated_timestamps": len(DUPLICATES), "duplicate_rows": len(DUPLICATES), "binned": 0, "merged": 0,
        "filled_rows": len(PLACEHOLDERS), "filled_values": len(PLACEHOLDERS), "incomplete_rows_removed": 0,
        "gaps": len(GAPS), "gap_steps": sum(n for _, n in GAPS), "segments": len(GAPS) + 1,
    }  # fmt: skip
    report = read_json(root / paths.VALIDATION)
    assert report["success"] and report["cleaning"] == expected
    # The console lines say it too, and so does the HTML report.
    assert "4 placeholder value(s) read as missing" in lines[0] and "7 timestamp(s) snapped" in lines[0]
    assert "5 duplicate row(s) removed (data.duplicates: first)" in lines[1]
    assert "2 gap(s) left in the index (588 missing steps)" in (root / "reports/validation.html").read_text()

    snap = pd.read_parquet(root / paths.SNAPSHOT)
    assert len(snap) == len(planted.clean)  # every grid row that exists, once
    assert (snap["time"] == planted.clean["time"]).all()  # sorted and snapped onto the grid
    at = snap.set_index("time")
    for k in DUPLICATES:  # first: the row written first
        assert at.loc[planted_time(k), "level"] == pytest.approx(planted_value(planted, k, "level"))
    for k in PLACEHOLDERS:  # filled by interpolation between its neighbours
        before, after = planted_time(k) - STEP, planted_time(k) + STEP
        assert at.loc[planted_time(k), "temp"] == pytest.approx((at.loc[before, "temp"] + at.loc[after, "temp"]) / 2)

    meta = Prepared.load(root / paths.PREPARED)
    short = SHORT_SEGMENT[1] - SHORT_SEGMENT[0]
    assert [b - a for a, b in meta.segments] == [1500, short, len(planted.clean) - 1500 - short]
    w = meta.windows
    assert w["segments"] == 2 and w["segments_dropped"] == 1 and w["rows_dropped"] == short
    times = meta.timestamps()
    assert (times == snap["time"]).all()
    for part in ("train", "val", "test"):  # kept: exactly the windows whose rows are 5 minutes apart
        every = origins(meta.split, part, L, H)
        whole = [t for t in every if (np.diff(times[t - L : t + H]) == STEP).all()]
        kept = origins(meta.split, part, L, H, meta.segments)
        assert kept.tolist() == whole and meta.windows[f"{part}_kept"] == len(whole)
        assert meta.windows[f"{part}_lost"] == len(every) - len(whole)
    assert meta.windows["train_lost"] > 0
    assert f"segments: 2 kept, 1 dropped as too short for one window ({short} rows)" in lines[2]

    # The training run gets every count as a metric (stages.train calls this inside its MLflow run).
    import mlflow

    logged: dict[str, float] = {}
    monkeypatch.setattr(mlflow, "log_metrics", logged.update)
    stages._log_data_counts(root, forecast.trainer(cfg, root, torch.device("cpu")).summary())
    assert logged == {**{f"cleaning_{k}": v for k, v in expected.items()}, **{f"windows_{k}": v for k, v in w.items()}}


def planted_time(k: int) -> pd.Timestamp:
    return pd.Timestamp("2024-03-01") + k * STEP


def planted_value(planted: Planted, k: int, column: str) -> float:
    return float(planted.clean.set_index("time").loc[planted_time(k), column])


@pytest.mark.parametrize("policy, offset", [("first", 0.0), ("last", 1.0), ("mean", 0.5)])
def test_duplicates_policy_keeps_first_last_or_mean(messy, policy, offset):
    root, planted = messy
    cfg = config.load(REPO, BASE + POLICIES + [f"data.duplicates={policy}"])
    stages.ingest(cfg, root)
    at = pd.read_parquet(root / paths.SNAPSHOT).set_index("time")
    for k in DUPLICATES:
        assert at.loc[planted_time(k), "level"] == pytest.approx(planted_value(planted, k, "level") + offset)


def test_duplicates_left_at_fail_are_refused_at_validation_as_before(messy):
    root, _ = messy
    cfg = config.load(REPO, BASE + POLICIES)  # duplicates: fail (the default)
    stages.ingest(cfg, root)
    with pytest.raises(ValidationFailed, match="duplicated timestamp"):
        stages.validate(cfg, root)


def test_placeholders_alone_stream_and_their_count_reaches_the_report(messy):
    root, _ = messy
    cfg = config.load(REPO, BASE + ["data.na_values=[nil, '-']"])  # no other policy: ingest streams
    assert "4 placeholder value(s) read as missing" in stages.ingest(cfg, root)
    with pytest.raises(ValidationFailed) as failed:  # nothing fills them, and the other problems remain
        stages.validate(cfg, root)
    assert any("column 'temp': 4 null value(s)" in line for line in failed.value.lines)
    assert read_json(root / paths.VALIDATION)["cleaning"] == {"placeholders": 4}


def rows_of(n: int) -> torch.Tensor:
    """A one-feature series whose value is the row number: gathered windows show which rows they read."""
    return torch.arange(n, dtype=torch.float64)[:, None]


def assert_on_the_grid(times: pd.DatetimeIndex, rows: torch.Tensor) -> None:
    rows = rows.to(torch.int64).numpy()
    assert (np.diff(rows) == 1).all(), rows
    assert (np.diff(times[rows]) == STEP).all(), times[rows]


@pytest.mark.parametrize("mode", ["window", "sequence"])
def test_no_window_or_span_crosses_a_gap_and_a_short_run_trains_and_evaluates(messy, mode):
    root, _ = messy
    cfg, _ = run_data_stages(root, POLICIES + ["data.duplicates=mean", f"train.mode={mode}"])
    trainer = forecast.trainer(cfg, root, torch.device("cpu"))
    meta, times = trainer.meta, trainer.meta.timestamps()
    ids = rows_of(meta.split.length)
    batches = trainer.epoch_batches(torch.Generator().manual_seed(3))
    trained = []
    for batch in batches:
        if mode == "window":
            x, y = gather(ids, trainer.train_origins[batch], L, H, 0)
            for inputs, target in zip(x, y, strict=True):
                assert_on_the_grid(times, torch.cat([inputs[:, 0], target]))
            trained += trainer.train_origins[batch].tolist()
        else:
            starts, lengths = trainer.train_origins[batch[:, 0]], batch[:, 1]
            x, y, mask = gather_spans(ids, starts, lengths, cfg.train.positions, cfg.burn_in, H, 0)
            for inputs, targets, start, n in zip(x, y, starts.tolist(), lengths.tolist(), strict=True):
                # What the counted positions read: the burn-in, the inputs up to the last one, and its target.
                assert_on_the_grid(times, torch.cat([inputs[: cfg.burn_in + n - 1, 0], targets[n - 1]]))
                trained += range(start, start + n)
            assert int(mask.sum()) == int(lengths.sum())
    assert sorted(trained) == trainer.train_origins.tolist()  # every training window once per epoch
    assert len(trainer.train_origins) == meta.windows["train_kept"]

    from lstmops.train import fit

    fit(cfg, partial(forecast.trainer, cfg, root), root / paths.CHECKPOINT)
    forecast.evaluate(cfg, root)
    metrics = read_json(root / paths.METRICS)
    assert metrics["test_windows"] == meta.windows["test_kept"]
    test = metrics["test"]
    assert set(test) == {"lstm", "persistence", "naive_hour"}
    assert metrics["best_baseline"] == min(("persistence", "naive_hour"), key=lambda k: test[k]["rmse"])
    # MASE's scale: the naive-hour MAE on the training span, over pairs 12 steps apart inside kept segments.
    level = pd.read_parquet(root / paths.SNAPSHOT)["level"].to_numpy()
    kept = meta.kept_rows()
    pairs = [t for t in range(12, meta.split.train_end) if kept[t] and kept[t - 12] and times[t] - times[t - 12] == 12 * STEP]
    t = np.array(pairs)
    scale = np.mean(np.abs(level[t] - level[t - 12]))
    assert metrics["mase_scale"] == {"period": 12, "train_mae": pytest.approx(scale, rel=1e-5)}
    for m in test.values():
        assert m["mase"] == pytest.approx(m["mae"] / scale, rel=1e-4)


@pytest.mark.parametrize("override, key", [
    ("data.duplicates=drop", "data.duplicates"),
    ("data.gaps=skip", "data.gaps"),
    ("data.na_values=nil", "data.na_values"),
    ("data.snap_tolerance=3min", "data.snap_tolerance"),  # not below half of 5 minutes
    ("data.snap_tolerance=0.5", "data.snap_tolerance"),
    ("data.snap_tolerance=soon", "data.snap_tolerance"),
    ("evaluate.mase_period=0", "evaluate.mase_period"),
])  # fmt: skip
def test_a_bad_policy_value_is_one_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        config.load(REPO, BASE + [override])
    assert key in str(error.value) and "\n" not in str(error.value)
