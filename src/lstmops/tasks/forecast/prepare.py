"""Prepare: chronological train/validation/test split and a scaler fitted on the training span.

Output is the whole scaled series (rows x features, float32) plus its metadata; windows are
never materialized here (see ``windows.py``), so the prepared data stays the size of the input.

With ``data.gaps: segment`` the series may have gaps: the rows are kept back to back and the
metadata lists the segments ([start, end) rows) so that no window crosses a gap. A segment too
short for one window (``input_steps + horizon`` rows) is dropped: no window comes from it and the
scaler does not see it. The split stays chronological by row over the gapless rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lstmops.data.split import Split, chronological_split
from lstmops.errors import DataError
from lstmops.io import atomic_dir, read_json, write_json
from lstmops.tasks.forecast.settings import Settings

__all__ = ["Prepared", "Split", "chronological_split", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """Everything downstream stages need to know about the prepared series."""

    features: list[str]
    target: str
    target_index: int
    mean: list[float]
    std: list[float]
    split: Split
    start: str
    frequency: str
    input_steps: int
    horizon: int
    # data.gaps: segment only (absent otherwise): [start, end) rows of each segment, its first
    # timestamp, and the windows kept and lost per span (the report of prepare).
    segments: list[list[int]] | None = None
    segment_starts: list[str] | None = None
    windows: dict[str, int] | None = None

    @staticmethod
    def load(directory: Path) -> Prepared:
        raw = read_json(Path(directory) / "meta.json")
        return Prepared(**{**raw, "split": Split(**raw["split"])})

    def timestamps(self) -> pd.DatetimeIndex:
        if self.segments is None:
            return pd.date_range(self.start, periods=self.split.length, freq=self.frequency)
        ranges = [pd.date_range(t, periods=end - start, freq=self.frequency)
                  for (start, end), t in zip(self.segments, self.segment_starts or [], strict=True)]  # fmt: skip
        return ranges[0].append(ranges[1:]) if len(ranges) > 1 else ranges[0]

    def kept_rows(self) -> np.ndarray:
        """Rows of segments long enough for a window (every row without segments)."""
        return kept_rows(self.segments, self.split.length, self.input_steps + self.horizon)


def kept_rows(segments: list[list[int]] | None, length: int, window: int) -> np.ndarray:
    """Mask of the rows in segments of at least ``window`` rows (all rows without segments)."""
    kept = np.ones(length, dtype=bool)
    for start, end in segments or []:
        kept[start:end] = end - start >= window
    return kept


def check_sizes(split: Split, input_steps: int, horizon: int) -> None:
    """Each span must hold at least one forecast; the training span also one full window."""
    need = input_steps + horizon
    if split.train_end < need:
        raise DataError(
            f"training span has {split.train_end} rows, fewer than window.input_steps + window.horizon = {need}"
        )
    for name, size in (("validation", split.val_end - split.train_end), ("test", split.length - split.val_end)):
        if size < horizon:
            raise DataError(f"{name} span has {size} rows, fewer than window.horizon = {horizon}")


def fit_scaler(train: np.ndarray, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature, from the training span only."""
    for i, name in enumerate(features):
        why = constant_reason(name, train[:, i])
        if why is not None:
            raise DataError(why)
    return train.mean(axis=0), train.std(axis=0)


def constant_reason(name: str, values: np.ndarray) -> str | None:
    """Why a column cannot be scaled from these training values (None: it can). Rounding leaves
    ~1e-16 of spread on a constant column, hence the relative tolerance."""
    mean, std = values.mean(), values.std()
    if std > 1e-9 * max(1.0, abs(mean)):
        return None
    return f"column {name!r} is constant over the training span (zero variance): cannot scale it"


def series_rules(cfg: Settings, frame: pd.DataFrame) -> list[dict]:
    """Validation's checks of the whole series, the ones prepare would otherwise be first to
    refuse: long enough for every span of the split (``series_length``), and no feature constant
    over the training span (``constant``). Same rules, same words as ``check_sizes`` and
    ``fit_scaler``, so a series that passes validation does not fail them at prepare."""
    from lstmops.data.validate import rule

    split = chronological_split(len(frame), cfg.split.val_fraction, cfg.split.test_fraction)
    try:
        check_sizes(split, cfg.window.input_steps, cfg.window.horizon)
        checks = [rule("series_length", None, True, f"{split.length:,} rows: every span holds a window")]
    except DataError as exc:
        return [rule("series_length", None, False, f"{split.length:,} rows: {exc}")]  # no training span to judge
    for name in cfg.data.features:
        if name not in frame.columns or not pd.api.types.is_numeric_dtype(frame[name]):
            continue  # the columns and types expectations report it
        train = frame[name].iloc[: split.train_end].to_numpy(np.float64)
        train = train[np.isfinite(train)]  # nulls and infinities have checks of their own
        if len(train) < 2:
            continue
        why = constant_reason(name, train)
        checks.append(rule("constant", name, why is None, why or f"column {name!r} varies over the training span"))
    return checks


def find_segments(times: pd.Series, frequency: str) -> list[list[int]]:
    """[start, end) rows of the runs of rows exactly one ``frequency`` apart (validation has
    refused any other step, so every break is a gap of whole steps)."""
    breaks = np.flatnonzero((times.diff() != pd.Timedelta(frequency)).to_numpy())  # row 0 (NaT) is one
    ends = [*breaks[1:].tolist(), len(times)]
    return [[int(a), int(b)] for a, b in zip(breaks.tolist(), ends, strict=True)]


def window_report(split: Split, segments: list[list[int]], input_steps: int, horizon: int) -> dict[str, int]:
    """Windows each span keeps inside segments, and loses against the same rows without gaps
    (windows crossing a gap, or in a segment too short for one); segments kept and dropped."""
    from lstmops.tasks.forecast.windows import origins

    report: dict[str, int] = {}
    for part in ("train", "val", "test"):
        kept = len(origins(split, part, input_steps, horizon, segments))
        report[f"{part}_kept"] = kept
        report[f"{part}_lost"] = len(origins(split, part, input_steps, horizon)) - kept
    short = [end - start for start, end in segments if end - start < input_steps + horizon]
    report.update(segments=len(segments) - len(short), segments_dropped=len(short), rows_dropped=sum(short))
    return report


def check_segment_windows(report: dict[str, int], input_steps: int, horizon: int) -> None:
    names = {"train": "training", "val": "validation", "test": "test"}
    for part, name in names.items():
        if report[f"{part}_kept"] == 0:
            raise DataError(
                f"{name} span has no window of window.input_steps + window.horizon = {input_steps + horizon} rows "
                f"inside one segment (data.gaps: segment; {report['segments']} segment(s) long enough)"
            )


def prepare(cfg: Settings, snapshot: Path, out_dir: Path, split: Split | None = None) -> Prepared:
    """Split, scale and write ``series.npy`` + ``meta.json`` into ``out_dir`` (atomically).

    ``split``: given boundaries instead of params' fractions, over the first ``split.length``
    rows only (a backtest fold: the rows after its test span do not exist for it).
    """
    frame = pd.read_parquet(snapshot, columns=[cfg.data.time_column, *cfg.data.features])
    if split is not None:
        frame = frame.iloc[: split.length]
    values = frame[cfg.data.features].to_numpy(dtype=np.float64)
    split = split or chronological_split(len(values), cfg.split.val_fraction, cfg.split.test_fraction)
    check_sizes(split, cfg.window.input_steps, cfg.window.horizon)
    segments = starts = report = None
    if cfg.data.gaps == "segment":
        times = frame[cfg.data.time_column]
        segments = find_segments(times, cfg.data.frequency)
        starts = [pd.Timestamp(times.iloc[start]).isoformat() for start, _ in segments]
        report = window_report(split, segments, cfg.window.input_steps, cfg.window.horizon)
        check_segment_windows(report, cfg.window.input_steps, cfg.window.horizon)
    train = values[: split.train_end]
    if segments is not None:  # training span statistics from the rows windows use: not dropped segments
        train = train[kept_rows(segments, len(values), cfg.window.input_steps + cfg.window.horizon)[: split.train_end]]
    mean, std = fit_scaler(train, cfg.data.features)
    scaled = ((values - mean) / std).astype(np.float32)
    meta = Prepared(
        features=list(cfg.data.features),
        target=cfg.data.target,
        target_index=cfg.target_index,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        split=split,
        start=pd.Timestamp(frame[cfg.data.time_column].iloc[0]).isoformat(),
        frequency=cfg.data.frequency,
        input_steps=cfg.window.input_steps,
        horizon=cfg.window.horizon,
        segments=segments,
        segment_starts=starts,
        windows=report,
    )
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "series.npy", scaled)
        # Segment fields only when there are segments: a gapless series keeps its meta.json as it was.
        write_json(tmp / "meta.json", {k: v for k, v in asdict(meta).items() if v is not None})
    return meta
