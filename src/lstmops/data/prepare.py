"""Prepare: chronological train/validation/test split and a scaler fitted on the training span.

Output is the whole scaled series (rows x features, float32) plus its metadata; windows are
never materialized here (see ``windows.py``), so the prepared data stays the size of the input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lstmops.config import Config
from lstmops.errors import DataError
from lstmops.io import atomic_dir, read_json, write_json


@dataclass(frozen=True)
class Split:
    """Row boundaries: train is [0, train_end), validation [train_end, val_end), test [val_end, length)."""

    train_end: int
    val_end: int
    length: int


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

    @staticmethod
    def load(directory: Path) -> Prepared:
        raw = read_json(Path(directory) / "meta.json")
        return Prepared(**{**raw, "split": Split(**raw["split"])})

    def timestamps(self) -> pd.DatetimeIndex:
        return pd.date_range(self.start, periods=self.split.length, freq=self.frequency)


def chronological_split(length: int, val_fraction: float, test_fraction: float) -> Split:
    """Split by time: nothing from a later span is ever used to fit an earlier one."""
    val_end = length - round(length * test_fraction)
    train_end = val_end - round(length * val_fraction)
    return Split(train_end=train_end, val_end=val_end, length=length)


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
    mean, std = train.mean(axis=0), train.std(axis=0)
    for name, m, s in zip(features, mean, std, strict=True):
        if not s > 1e-9 * max(1.0, abs(m)):  # rounding leaves ~1e-16 on a constant column
            raise DataError(f"column {name!r} is constant over the training span (zero variance): cannot scale it")
    return mean, std


def prepare(cfg: Config, snapshot: Path, out_dir: Path) -> Prepared:
    """Split, scale and write ``series.npy`` + ``meta.json`` into ``out_dir`` (atomically)."""
    frame = pd.read_parquet(snapshot, columns=[cfg.data.time_column, *cfg.data.features])
    values = frame[cfg.data.features].to_numpy(dtype=np.float64)
    split = chronological_split(len(values), cfg.split.val_fraction, cfg.split.test_fraction)
    check_sizes(split, cfg.window.input_steps, cfg.window.horizon)
    mean, std = fit_scaler(values[: split.train_end], cfg.data.features)
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
    )
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "series.npy", scaled)
        write_json(tmp / "meta.json", asdict(meta))
    return meta
