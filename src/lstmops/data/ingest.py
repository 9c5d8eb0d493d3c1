"""Ingest: read the source named in params, parse its time column, write a Parquet snapshot.

The snapshot is the DVC-tracked input of everything downstream; ingest does not judge the
data (that is validate's job), it only refuses what it cannot read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lstmops.config import DataConfig
from lstmops.data.sources import load
from lstmops.errors import DataError
from lstmops.io import atomic_path

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def row_label(position: int) -> str:
    """Rows are counted from 1 at the first data row (line 2 of a CSV with a header)."""
    return f"row {position + 1}"


def read_source(path: Path, label: Path | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame, with one-line errors (naming ``label``,
    the path as the user wrote it) for what cannot be read."""
    label = label or path
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{label}: unsupported file type {path.suffix!r} (use .csv or .parquet)")
    if not path.is_file():
        raise DataError(f"{label}: source file not found")
    try:
        if kind == "csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{label}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise DataError(f"{label}: cannot be read as {kind} ({reason})") from None


OFFSET = r"(Z|[+-]\d\d:?\d\d)$"


def mixed_offsets(raw: pd.Series, time_column: str, origin: Path) -> str:
    """Describe the first two different UTC offsets (or offset vs none) in a time column."""
    offsets = raw.astype(str).str.extract(OFFSET, expand=False).fillna("no offset")
    first = offsets.iloc[0]
    other = int((offsets != first).to_numpy().nonzero()[0][0])
    return (
        f"{origin}: column {time_column!r} mixes time-zone offsets ({first} at {row_label(0)}, "
        f"{offsets.iloc[other]} at {row_label(other)}); convert the timestamps to one zone"
    )


def parse_time(frame: pd.DataFrame, time_column: str, origin: Path) -> pd.DataFrame:
    """Parse ``time_column`` to datetimes; an unparseable value is an error naming its row."""
    if time_column not in frame.columns:
        columns = ", ".join(map(str, frame.columns))
        hint = " - wrong delimiter? expected ','" if len(frame.columns) == 1 and any(d in columns for d in ";\t|") else ""
        raise DataError(f"{origin}: time column {time_column!r} not found (columns: {columns}){hint}")
    if frame.empty:
        raise DataError(f"{origin}: no data rows (header only)")
    raw = frame[time_column]
    try:
        parsed = pd.to_datetime(raw, errors="coerce", format="ISO8601")
    except ValueError:  # pandas refuses to mix offsets in one column
        raise DataError(mixed_offsets(raw, time_column, origin)) from None
    bad = parsed.isna() & raw.notna()
    if bad.any():
        pos = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{origin}: column {time_column!r}, {row_label(pos)}: {raw.iloc[pos]!r} is not a timestamp "
            f"({int(bad.sum())} such rows)"
        )
    out = frame.copy()
    out[time_column] = parsed
    return out


def select_series(frame: pd.DataFrame, cfg: DataConfig, origin: Path) -> pd.DataFrame:
    """Keep one series of long-format data (one row per series per time); drop the id column."""
    if cfg.series_column is None:
        return frame
    if cfg.series_column not in frame.columns:
        raise DataError(f"{origin}: series column {cfg.series_column!r} not found")
    ids = frame[cfg.series_column].astype(str)
    chosen = frame[ids == str(cfg.series_id)]
    if chosen.empty:
        known = ", ".join(sorted(ids.unique())[:5])
        raise DataError(f"{origin}: no rows with {cfg.series_column} = {cfg.series_id!r} (ids include: {known})")
    return chosen.drop(columns=[cfg.series_column]).reset_index(drop=True)


def regularize(frame: pd.DataFrame, cfg: DataConfig, origin: Path) -> pd.DataFrame:
    """``irregular_index: resample``: put the rows on the ``frequency`` grid (mean per step), then
    fill gaps of at most ``fill_limit`` steps by time interpolation; a longer gap is an error.
    The number of filled rows is kept in ``frame.attrs["filled_rows"]``. Duplicated timestamps are
    left for validation to report: averaging them away would hide a data problem."""
    time = cfg.time_column
    if cfg.irregular_index != "resample" or frame[time].duplicated().any() or frame[time].isna().any():
        return frame
    columns = [c for c in cfg.features if c in frame.columns]
    numeric = frame[columns].apply(pd.to_numeric, errors="coerce")
    grid = numeric.set_index(frame[time]).sort_index().resample(cfg.frequency).mean()
    missing = grid.isna().all(axis=1).to_numpy()
    run_id = (~missing).cumsum()  # consecutive missing rows share an id
    runs = pd.Series(missing).groupby(run_id).sum()
    if len(runs) and runs.max() > cfg.fill_limit:
        longest = int(runs.idxmax())
        start = grid.index[(run_id == longest) & missing][0]
        raise DataError(
            f"{origin}: gap of {int(runs.max())} steps starting {start} exceeds data.fill_limit={cfg.fill_limit}"
        )
    filled = grid.interpolate(method="time", limit_area="inside")
    out = filled.reset_index().rename(columns={"index": time})
    out.attrs["filled_rows"] = int(missing.sum())
    return out


def load_frame(cfg: DataConfig, source: str, root: Path) -> pd.DataFrame:
    """Read ``source`` as the pipeline sees it: one series, parsed times, on the time grid if asked."""
    frame = select_series(load(source, root, read_source), cfg, Path(source))
    frame = parse_time(frame, cfg.time_column, Path(source))
    return regularize(frame, cfg, Path(source))


def ingest(cfg: DataConfig, root: Path, out: Path) -> pd.DataFrame:
    """Read ``cfg.source`` (a file or glob relative to ``root``, a directory, or s3://) and
    write it as a Parquet snapshot at ``out``."""
    frame = load_frame(cfg, cfg.source, root)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    return frame
