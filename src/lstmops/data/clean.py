"""Cleaning policies: what ingest may change in a series before validation judges it.

Every policy is off by default, and validation then refuses what it would have changed. A policy
that is on counts what it changed; the counts are stored in the snapshot's Parquet metadata, so
they reach the ingest line, the validation report and the MLflow run (see ``stages.train``).

Order, and why:
1. placeholders (``na_values``) become missing while the source streams (``Placeholders``);
2. rows are sorted by time (stable): duplicates and the grid are only defined in time order;
3. timestamps within ``snap_tolerance`` of the grid move onto it (this may create duplicates);
4. duplicated timestamps are resolved (``duplicates``);
5. ``irregular_index: resample`` puts the rows on the grid and fills runs of at most
   ``fill_limit`` incomplete steps; a longer run fails, or with ``gaps: segment`` is cut out;
6. with ``gaps: segment`` the remaining gaps split the series into segments (prepare keeps
   windows inside them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lstmops.config import DataConfig
from lstmops.errors import DataError, row_label

METADATA_KEY = b"lstmops.cleaning"  # Parquet key-value metadata of the snapshot: the counts as JSON


def needs_whole_series(cfg: DataConfig) -> bool:
    """Policies that need every row of the series in memory (placeholders do not: they stream)."""
    return (
        cfg.irregular_index == "resample" or cfg.duplicates != "fail" or cfg.snap_tolerance is not None
        or cfg.gaps == "segment"
    )  # fmt: skip


def reports(cfg: DataConfig) -> bool:
    """Whether ingest reports cleaning counts at all (with every policy at its default it changes nothing)."""
    return bool(cfg.na_values) or needs_whole_series(cfg)


# --- placeholders, block by block ---------------------------------------------------------------


@dataclass
class Placeholders:
    """Reads ``na_values`` as missing in the feature columns of each block and makes those columns
    float64. A feature is read as text for this (see ``ingest.stream``): with pyarrow's own type
    inference a placeholder first met in a later block would break the column's type. Any other
    text that is not a number is an error naming the row (it would otherwise be hidden as missing)."""

    values: list[str]
    columns: list[str]
    origin: str
    count: int = 0

    def __call__(self, batch: pa.RecordBatch, start: int) -> pa.RecordBatch:
        for name in self.columns:
            index = batch.schema.get_field_index(name)
            kind = batch.schema.field(index).type if index >= 0 else None
            if kind is None or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                continue  # absent (validation names it), or a numeric Parquet column: no placeholder
            raw = batch.column(index).to_pandas()
            hits = raw.isin(self.values)
            numbers = pd.to_numeric(raw.mask(hits), errors="coerce")
            bad = (numbers.isna() & raw.notna() & ~hits).to_numpy().nonzero()[0]
            if len(bad):
                raise DataError(
                    f"{self.origin}: column {name!r}, {row_label(start + int(bad[0]))}: {raw.iloc[bad[0]]!r} is not a "
                    f"number and not one of data.na_values {self.values}"
                )
            self.count += int(hits.sum())
            batch = batch.set_column(index, name, pa.array(numbers.to_numpy(np.float64), type=pa.float64()))
        return batch


# --- the whole series ---------------------------------------------------------------------------


def sort_by_time(frame: pd.DataFrame, time: str) -> tuple[pd.DataFrame, int]:
    """Stable sort (rows with one timestamp keep their file order, so ``first`` means first in the
    file); returns how many rows were out of order: earlier than a row above them."""
    times = frame[time]
    backwards = int((times < times.cummax().shift(1)).sum())
    if not backwards:
        return frame, 0
    return frame.sort_values(time, kind="stable").reset_index(drop=True), backwards


def grid_origin(times: pd.Series) -> pd.Timestamp:
    """Where the grid starts: midnight of the first day, as ``resample`` bins by default."""
    return times.min().normalize()


def snap(frame: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, int, int]:
    """Move timestamps at most ``snap_tolerance`` off the grid onto the nearest grid point.
    Returns the frame, the rows moved, and the rows further off than that (left for validation
    or resample to judge)."""
    time, step = cfg.time_column, pd.Timedelta(cfg.frequency)
    times = frame[time]
    origin = grid_origin(times)
    nearest = origin + ((times - origin) / step).round().astype("int64") * step
    off = (times - nearest).abs()
    moved = (off > pd.Timedelta(0)) & (off <= cfg.snap)
    beyond = int((off > cfg.snap).sum())
    if not moved.any():
        return frame, 0, beyond
    frame = frame.copy()
    frame[time] = times.where(~moved, nearest).astype(times.dtype)
    return frame, int(moved.sum()), beyond


def deduplicate(frame: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """One row per timestamp (the frame is sorted): the first or last row, or the mean of each
    numeric feature (missing values skipped) with the first row's other columns."""
    time = cfg.time_column
    if cfg.duplicates in ("first", "last"):
        return frame.drop_duplicates(subset=time, keep=cfg.duplicates).reset_index(drop=True)
    averaged = {c for c in cfg.features if c in frame.columns and pd.api.types.is_numeric_dtype(frame[c])}
    how = {c: ("mean" if c in averaged else "first") for c in frame.columns if c != time}
    return frame.groupby(time, sort=False, as_index=False).agg(how)[list(frame.columns)]


def _numeric(frame: pd.DataFrame, columns: list[str], origin: str) -> pd.DataFrame:
    """The features as numbers. Text that is not a number is refused, naming the row: resample
    used to read it as missing silently (list real placeholders in ``data.na_values``)."""
    out = {}
    for column in columns:
        values = frame[column]
        numbers = pd.to_numeric(values, errors="coerce")
        bad = (numbers.isna() & values.notna()).to_numpy().nonzero()[0]
        if len(bad):
            raise DataError(
                f"{origin}: column {column!r}, {row_label(int(bad[0]))}: {values.iloc[bad[0]]!r} is not a number "
                "(list placeholders for missing values in data.na_values)"
            )
        out[column] = numbers.astype(np.float64)
    return pd.DataFrame(out, index=frame.index)


def _runs(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each run of True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return starts, ends - starts


def regularize(frame: pd.DataFrame, cfg: DataConfig, origin: str, counts: dict[str, int]) -> pd.DataFrame:
    """``irregular_index: resample``: put the rows on the ``frequency`` grid (mean per step), then
    fill runs of at most ``fill_limit`` incomplete steps (any feature missing) by time
    interpolation. A longer run fails, or with ``gaps: segment`` is removed (the series continues
    as a new segment after it). Keeps the time column and the features."""
    time, step = cfg.time_column, pd.Timedelta(cfg.frequency)
    columns = [c for c in cfg.features if c in frame.columns]
    times = frame[time]
    bins = grid_origin(times) + ((times - grid_origin(times)) // step) * step
    counts["binned"] = int((bins != times).sum())  # rows off the grid, moved to their step's start
    counts["merged"] = int(len(bins) - bins.nunique())  # rows averaged with another in one step
    grid = frame[columns].set_index(times).resample(cfg.frequency).mean()
    incomplete = grid.isna().any(axis=1).to_numpy()
    starts, lengths = _runs(incomplete)
    long = lengths > cfg.fill_limit
    if long.any() and cfg.gaps == "fail":
        worst = int(np.argmax(lengths))
        raise DataError(
            f"{origin}: gap of {int(lengths[worst])} steps starting {grid.index[starts[worst]]} exceeds "
            f"data.fill_limit={cfg.fill_limit} (data.gaps: segment splits the series there instead)"
        )
    filled = grid.interpolate(method="time", limit_area="inside")
    keep = np.ones(len(grid), dtype=bool)
    for start, length in zip(starts[long], lengths[long], strict=True):
        keep[start : start + length] = False
    short = incomplete & keep
    counts["filled_rows"] = int((short & filled.notna().all(axis=1).to_numpy()).sum())
    counts["filled_values"] = int((grid[short].isna() & filled[short].notna()).to_numpy().sum())
    # Rows that held some data but lay in a run too long to fill (the missing steps are in "gaps").
    counts["incomplete_rows_removed"] = int((~keep & grid.notna().any(axis=1).to_numpy()).sum())
    out = filled[keep].reset_index().rename(columns={"index": time})
    return out[[time, *columns]]


def count_gaps(frame: pd.DataFrame, cfg: DataConfig, counts: dict[str, int]) -> None:
    """Gaps left in the index (whole missing steps) and the segments they make."""
    step = pd.Timedelta(cfg.frequency)
    steps = (frame[cfg.time_column].diff() / step).to_numpy()
    gaps = steps > 1
    counts["gaps"] = int(gaps.sum())
    counts["gap_steps"] = int(np.round(steps[gaps] - 1).sum())
    counts["segments"] = int(gaps.sum()) + 1


def clean(frame: pd.DataFrame, cfg: DataConfig, origin: str, counts: dict[str, int]) -> pd.DataFrame:
    """Apply the whole-series policies (steps 2-6 above); add their counts to ``counts``.

    With ``duplicates: fail`` and duplicated timestamps in the source, the frame is returned as read,
    so that validation refuses it naming the rows of the file, as without any policy."""
    time = cfg.time_column
    if frame[time].isna().any() or (frame[time].duplicated().any() and cfg.duplicates == "fail"):
        return frame  # validation names the null or duplicated timestamps
    if cfg.irregular_index == "resample":  # checked before sorting: errors name the rows as read
        frame = frame.assign(**_numeric(frame, [c for c in cfg.features if c in frame.columns], origin))
    frame, counts["out_of_order"] = sort_by_time(frame, time)
    if cfg.snap_tolerance is not None:
        frame, counts["snapped"], counts["beyond_tolerance"] = snap(frame, cfg)
    duplicated = frame[time].duplicated(keep=False)
    if duplicated.any() and cfg.duplicates == "fail":
        first = frame.loc[duplicated, time].iloc[0]
        raise DataError(
            f"{origin}: {int(frame[time].duplicated().sum())} row(s) snap onto a timestamp another row has (first: "
            f"{first}); set data.duplicates (first, last or mean) or a smaller data.snap_tolerance"
        )
    if cfg.duplicates != "fail":
        counts["duplicated_timestamps"] = int(frame.loc[duplicated, time].nunique())
        before = len(frame)
        frame = deduplicate(frame, cfg)
        counts["duplicate_rows"] = before - len(frame)
    if cfg.irregular_index == "resample":
        frame = regularize(frame, cfg, origin, counts)
    if cfg.gaps == "segment":
        count_gaps(frame, cfg, counts)
    return frame


# --- reporting ----------------------------------------------------------------------------------

PHRASES = {  # count key -> how the console and the HTML report say it
    "placeholders": "placeholder value(s) read as missing (data.na_values)",
    "out_of_order": "row(s) out of time order, sorted",
    "snapped": "timestamp(s) snapped onto the grid (data.snap_tolerance)",
    "beyond_tolerance": "timestamp(s) off the grid by more than data.snap_tolerance, left as they were",
    "duplicated_timestamps": "duplicated timestamp(s)",
    "duplicate_rows": "duplicate row(s) removed (data.duplicates: {duplicates})",
    "binned": "off-grid row(s) moved to their step by resample",
    "merged": "row(s) averaged with another in one step by resample",
    "filled_rows": "incomplete step(s) filled by interpolation ({filled_values} values; data.fill_limit: {fill_limit})",
    "incomplete_rows_removed": "incomplete row(s) in runs longer than data.fill_limit removed",
    "gaps": "gap(s) left in the index ({gap_steps} missing steps)",
    "segments": "segment(s) (data.gaps: segment)",
}
SILENT_AT_ZERO = {"beyond_tolerance", "binned", "merged", "incomplete_rows_removed"}  # said only when they happen


def describe(counts: dict[str, int], cfg: DataConfig) -> str:
    """One line: every count of a policy that is on (zeros too: a policy that changed nothing says so)."""
    values = {"duplicates": cfg.duplicates, "fill_limit": cfg.fill_limit, "gap_steps": counts.get("gap_steps", 0),
              "filled_values": counts.get("filled_values", 0)}  # fmt: skip
    parts = [
        f"{counts[key]:,} {phrase.format(**values)}"
        for key, phrase in PHRASES.items()
        if key in counts and not (key in SILENT_AT_ZERO and counts[key] == 0)
    ]
    return "; ".join(parts)


def write_metadata(counts: dict[str, int]) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps(counts).encode()}


def read_counts(snapshot: Path) -> dict[str, int] | None:
    """The counts ingest stored in the snapshot, or None if no policy was on."""
    metadata = pq.read_metadata(snapshot).metadata or {}  # the file's key-value metadata (both writers)
    raw = metadata.get(METADATA_KEY)
    return json.loads(raw) if raw is not None else None
