"""Ingest: stream the source named in params into a Parquet snapshot.

The snapshot is the DVC-tracked input of everything downstream; ingest does not judge the
data (that is validate's job), it only refuses what it cannot read.

Sources are read in bounded blocks (CSV: ``BLOCK_BYTES`` of text through pyarrow's streaming
reader; Parquet: ``BATCH_ROWS`` rows at a time). Each block is narrowed to one series, its time
column parsed, and appended to the snapshot, so memory stays flat however large the source is.
A CSV column's type is inferred from the first block (for partitions: of the first file); a later
value that does not fit it is an error naming the file, column and row.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from lstmops.config import DataConfig
from lstmops.data.clean import Placeholders, clean, needs_whole_series, reports, write_metadata
from lstmops.data.sources import READERS, source_files
from lstmops.errors import DataError, row_label
from lstmops.io import atomic_path

BLOCK_BYTES = 2 << 20  # CSV text per block; pyarrow reads ~35 blocks ahead, and the first one sets the types
BATCH_ROWS = 1 << 18  # Parquet rows per batch (a row group is decoded column by column anyway)
ROW_GROUP_BYTES = 64 << 20  # blocks gathered per snapshot row group: one per block writes slower
OFFSET = r"(Z|[+-]\d\d:?\d\d)$"


@dataclass(frozen=True)
class Snapshot:
    """What ingest wrote; ``filled_rows`` is set when ``irregular_index: resample`` resampled,
    ``cleaning`` (what each cleaning policy changed, see ``clean.py``) when a policy is on."""

    rows: int
    columns: int
    filled_rows: int | None = None
    cleaning: dict[str, int] | None = None


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


# --- reading one file in blocks -----------------------------------------------------------------


def _pandas_type(field: pa.Field) -> pa.DataType | None:
    """The type pandas gives a column that pyarrow would infer otherwise: an all-empty column is
    float (NaN), and dates are left as text (only the time column is parsed)."""
    if pa.types.is_null(field.type):
        return pa.float64()
    if pa.types.is_temporal(field.type):
        return pa.string()
    return None


def _open_csv(path: Path, types: dict[str, pa.DataType], block_bytes: int) -> pa_csv.CSVStreamingReader:
    """A streaming reader; columns not in ``types`` get the type inferred from the first block,
    as pandas would read it (which takes reopening the file when pyarrow's guess differs)."""

    def open_with(column_types: dict[str, pa.DataType]) -> pa_csv.CSVStreamingReader:
        return pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=block_bytes),
            convert_options=pa_csv.ConvertOptions(column_types=column_types, strings_can_be_null=True),
        )

    reader = open_with(types)
    fixes = {f.name: t for f in reader.schema if f.name not in types and (t := _pandas_type(f)) is not None}
    if not fixes:
        return reader
    reader.close()
    return open_with(types | fixes)


def _not_utf8(batch: pa.RecordBatch, column: str, label: str) -> DataError:
    """pyarrow keeps a column with non-UTF-8 bytes in its first block as binary: name the value."""
    for i, value in enumerate(batch.column(column).to_pylist()):
        try:
            (value or b"").decode()
        except UnicodeDecodeError as exc:
            return DataError(f"{label}: cannot be read as csv ({exc}; column {column!r}, {row_label(i)})")
    return DataError(f"{label}: cannot be read as csv (column {column!r} is not UTF-8 text)")


def _first_row_of(path: Path, column: str, value: str, block_bytes: int) -> int | None:
    """Error path only: pyarrow does not say which row broke a column's type, so read that column
    again as text and find the value it named."""
    options = pa_csv.ConvertOptions(include_columns=[column], column_types={column: pa.string()})
    try:
        reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=block_bytes), convert_options=options)
        seen = 0
        for batch in reader:
            hit = pc.index(batch.column(0), value).as_py()
            if hit >= 0:
                return seen + hit
            seen += batch.num_rows
    except pa.ArrowInvalid:  # e.g. the value is not UTF-8 either
        pass
    return None


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        return next(csv.reader(fh), [])


def _csv_error(exc: pa.ArrowInvalid, path: Path, label: str, rows: int, block_bytes: int) -> DataError:
    """A block (from row ``rows`` on) that pyarrow cannot read. A value that does not fit the type
    its column got from the first rows is named by column and row; anything else by pyarrow's reason."""
    reason = _reason(exc)
    if "Empty CSV file" in reason:
        return DataError(f"{label}: file is empty")
    where = re.match(r"In CSV column #(\d+): (.*)", reason)
    if where is None:
        return DataError(f"{label}: cannot be read as csv ({reason})")
    column, detail = _header(path)[int(where[1])], where[2]
    found = re.match(r"CSV conversion error to (\w+): invalid value '(.*)'$", detail)
    row = _first_row_of(path, column, found[2], block_bytes) if found else None
    if row is None:
        return DataError(f"{label}: column {column!r}, in the block from {row_label(rows)} on: {detail}")
    return DataError(
        f"{label}: column {column!r}, {row_label(row)}: {found[2]!r} does not fit the column's type "
        f"{found[1]}, taken from the rows read before it"
    )


Blocks = tuple[pa.Schema, Iterator[pa.RecordBatch]]


def _read_csv(path: Path, label: str, types: dict[str, pa.DataType], block_bytes: int) -> Blocks:
    try:  # opening reads and converts the first block
        reader = _open_csv(path, types, block_bytes)
    except pa.ArrowInvalid as exc:
        raise _csv_error(exc, path, label, 0, block_bytes) from None
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{label}: cannot be read as csv ({_reason(exc)})") from None
    binary = [f.name for f in reader.schema if pa.types.is_binary(f.type)]

    def blocks() -> Iterator[pa.RecordBatch]:
        rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise _csv_error(exc, path, label, rows, block_bytes) from None
            if binary:
                raise _not_utf8(batch, binary[0], label)
            rows += batch.num_rows
            yield batch

    return reader.schema, blocks()


def _read_parquet(path: Path, label: str, batch_rows: int) -> Blocks:
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{label}: cannot be read as parquet ({_reason(exc)})") from None
    # A named pandas index is stored as columns; pandas reads it back as the index, not as data.
    meta = file.schema_arrow.pandas_metadata or {}
    index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    schema = pa.schema([f for f in file.schema_arrow if f.name not in index])

    def blocks() -> Iterator[pa.RecordBatch]:
        try:
            for batch in file.iter_batches(batch_size=batch_rows, columns=schema.names):
                # The source's pandas metadata describes its columns, not the parsed ones written.
                yield batch.replace_schema_metadata()
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{label}: cannot be read as parquet ({_reason(exc)})") from None

    return schema, blocks()


def read_blocks(path: Path, label: str, types: dict[str, pa.DataType], block_bytes: int, batch_rows: int) -> Blocks:
    """Open one file (named ``label`` in errors): its columns, and its blocks to iterate."""
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{label}: unsupported file type {path.suffix!r} (use .csv or .parquet)")
    if not path.is_file():
        raise DataError(f"{label}: source file not found")
    return _read_csv(path, label, types, block_bytes) if kind == "csv" else _read_parquet(path, label, batch_rows)


# --- narrowing and parsing blocks ---------------------------------------------------------------


def _require_columns(names: list[str], cfg: DataConfig, label: str) -> None:
    if cfg.series_column is not None and cfg.series_column not in names:
        raise DataError(f"{label}: series column {cfg.series_column!r} not found")
    if cfg.time_column not in names:
        columns = ", ".join(names)
        hint = " - wrong delimiter? expected ','" if len(names) == 1 and any(d in columns for d in ";\t|") else ""
        raise DataError(f"{label}: time column {cfg.time_column!r} not found (columns: {columns}){hint}")


@dataclass
class _Series:
    """Keeps one series of long-format data (one row per series per time) and drops the id column;
    until a row matches, it remembers the first few ids for the error message."""

    column: str
    wanted: str
    matched: int = 0
    known: tuple[str, ...] = ()

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = pc.cast(batch.column(self.column), pa.string())
        keep = pc.equal(ids, self.wanted)
        self.matched += pc.sum(keep).as_py() or 0
        if not self.matched:
            self.known = tuple(sorted(set(self.known) | set(pc.unique(ids).drop_null().to_pylist()))[:5])
        return batch.drop_columns([self.column]).filter(keep)


def _offsets(raw: pd.Series) -> pd.Series:
    return raw.astype(str).str.extract(OFFSET, expand=False).fillna("no offset")


def _same_zone(a: str, b: str) -> bool:
    canonical = lambda offset: "+0000" if offset == "Z" else offset.replace(":", "")  # noqa: E731
    return canonical(a) == canonical(b)


@dataclass
class _Times:
    """Parses the time column block by block exactly as ``pd.to_datetime(format="ISO8601")`` parses
    a whole column; the first block's zone holds for all, as pandas holds one column to one zone.
    Rows are counted over everything kept so far (the snapshot's rows)."""

    column: str
    origin: str
    dtype: object = None  # of the first block with a timestamp
    first: tuple[str, int] | None = None  # its first offset, and the row of it

    def __call__(self, batch: pa.RecordBatch, start: int) -> pa.RecordBatch:
        index = batch.schema.get_field_index(self.column)
        parsed = self.parse(batch.column(index).to_pandas(), start)
        return batch.set_column(index, self.column, pa.Array.from_pandas(parsed))

    def parse(self, raw: pd.Series, start: int) -> pd.Series:
        try:
            parsed = pd.to_datetime(raw, errors="coerce", format="ISO8601")
        except ValueError:  # pandas refuses to mix offsets in one column
            raise DataError(self.mixed(raw, start)) from None
        bad = parsed.isna() & raw.notna()
        if bad.any():
            pos = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{self.origin}: column {self.column!r}, {row_label(start + pos)}: {raw.iloc[pos]!r} is not a "
                f"timestamp ({int(bad.sum())} such rows in rows {start + 1}-{start + len(raw)})"
            )
        if parsed.isna().all():  # no zone to check; take the one already set
            return parsed if self.dtype is None else pd.Series(pd.NaT, index=raw.index, dtype=self.dtype)
        if self.dtype is None:
            first = raw.dropna().iloc[:1]
            self.dtype, self.first = parsed.dtype, (_offsets(first).iloc[0], start + int(first.index[0]))
        elif getattr(parsed.dtype, "tz", None) != getattr(self.dtype, "tz", None):
            raise DataError(self.mixed(raw, start))
        return parsed.astype(self.dtype)  # first block's zone and unit (finer fractions are cut)

    def mixed(self, raw: pd.Series, start: int) -> str:
        """Describe the first offset that differs from the first one (or an offset from none)."""
        offsets = _offsets(raw.dropna())  # indexed by position in the block
        first, at = self.first or (offsets.iloc[0], start + int(offsets.index[0]))
        other = offsets[~offsets.map(lambda offset: _same_zone(offset, first))]
        return (
            f"{self.origin}: column {self.column!r} mixes time-zone offsets ({first} at {row_label(at)}, "
            f"{other.iloc[0]} at {row_label(start + int(other.index[0]))}); convert the timestamps to one zone"
        )


def _conform(batch: pa.RecordBatch, schema: pa.Schema, label: str) -> pa.RecordBatch:
    """A block must have the columns and types of the first block written (a partition with another
    layout is refused, naming the column); the same columns in another order are reordered."""
    missing = [name for name in schema.names if name not in batch.schema.names]
    if missing:
        raise DataError(f"{label}: column {missing[0]!r} is missing (the first file has it)")
    extra = [name for name in batch.schema.names if name not in schema.names]
    if extra:
        raise DataError(f"{label}: column {extra[0]!r} is not in the first file")
    batch = batch.select(schema.names)
    for field in batch.schema:
        expected = schema.field(field.name).type
        if field.type != expected:
            raise DataError(f"{label}: column {field.name!r} is {field.type}, not {expected} as in the rows before")
    return batch


def stream(
    cfg: DataConfig, source: str, root: Path, *, block_bytes: int = BLOCK_BYTES, batch_rows: int = BATCH_ROWS,
    tally: dict[str, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield ``source`` (a file or glob relative to ``root``, a directory, or s3://) block by block
    as the snapshot holds it: one series, parsed times. Partitions follow one another; CSV ones are
    read with the column types of the first file with rows, and all must have its columns.
    With ``data.na_values``, placeholders in the features are read as missing and counted into
    ``tally["placeholders"]`` once the source has been read."""
    series = None if cfg.series_column is None else _Series(cfg.series_column, str(cfg.series_id))
    times = _Times(cfg.time_column, source)
    placeholders = Placeholders(cfg.na_values, list(cfg.features), source) if cfg.na_values else None
    # Read as text: pandas parses the time column, and series ids are compared as text; features
    # too when they may hold placeholders (Placeholders makes them numbers).
    named = (cfg.time_column, cfg.series_column, *(cfg.features if placeholders else ()))
    text = {name: pa.string() for name in named if name is not None}
    types = text
    schema: pa.Schema | None = None  # of the first block kept; every later block must match it
    read = kept = 0
    with source_files(source, root) as files:
        for path, label in files:
            columns, blocks = read_blocks(path, label, types, block_bytes, batch_rows)
            _require_columns(columns.names, cfg, label)
            for batch in blocks:
                read += batch.num_rows
                batch = series(batch) if series else batch
                if batch.num_rows == 0:
                    continue
                batch = times(batch, kept)
                batch = placeholders(batch, kept) if placeholders else batch
                schema = schema or batch.schema
                batch = batch if batch.schema.equals(schema) else _conform(batch, schema, label)
                kept += batch.num_rows
                yield batch
            if read and types is text:  # the first file with rows sets the types of the next ones
                types = dict(zip(columns.names, columns.types)) | text
    if read == 0:
        raise DataError(f"{source}: no data rows (header only)")
    if series and kept == 0:
        raise DataError(
            f"{source}: no rows with {series.column} = {cfg.series_id!r} (ids include: {', '.join(series.known)})"
        )
    if placeholders is not None and tally is not None:
        tally["placeholders"] = placeholders.count


# --- the whole series ---------------------------------------------------------------------------


def load_frame(cfg: DataConfig, source: str, root: Path) -> pd.DataFrame:
    """Read ``source`` whole, as the snapshot would hold it (``validate --data``): the blocks of
    :func:`stream` in one DataFrame, cleaned by the policies that are on. What each policy changed
    is in ``frame.attrs["cleaning"]`` (absent with every policy at its default)."""
    counts: dict[str, int] = {}
    frame = pa.Table.from_batches(list(stream(cfg, source, root, tally=counts))).to_pandas()
    if needs_whole_series(cfg):
        frame = clean(frame, cfg, source, counts)
    if reports(cfg):
        frame.attrs["cleaning"] = counts
    return frame


def _write(blocks: Iterator[pa.RecordBatch], path: Path, tally: dict[str, int] | None = None) -> Snapshot:
    """Write the blocks; ``tally``, filled in by the stream as it ends, goes into the file's metadata."""
    first = next(blocks)  # the stream raises rather than end without a row
    rows, pending, pending_bytes = 0, [], 0
    with pq.ParquetWriter(path, first.schema) as writer:
        for batch in itertools.chain([first], blocks):
            pending.append(batch)
            rows, pending_bytes = rows + batch.num_rows, pending_bytes + batch.nbytes
            if pending_bytes >= ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_batches(pending))
                pending, pending_bytes = [], 0
        if pending:
            writer.write_table(pa.Table.from_batches(pending))
        if tally is not None:
            writer.add_key_value_metadata(write_metadata(tally))
    return Snapshot(rows, len(first.schema), cleaning=tally)


def ingest(
    cfg: DataConfig, root: Path, out: Path, *, block_bytes: int = BLOCK_BYTES, batch_rows: int = BATCH_ROWS
) -> Snapshot:
    """Stream ``cfg.source`` into a Parquet snapshot at ``out``, which is replaced only once the
    whole source has been read (a failed ingest leaves the previous snapshot as it was).

    Policies that need the whole series in time order (``clean.needs_whole_series``: resample,
    duplicates, snapping, segments) collect the stream (already narrowed to one series) and clean
    it in memory before it is written: memory then grows with the series, not with the source."""
    with atomic_path(out) as tmp:
        if not needs_whole_series(cfg):
            tally = {} if reports(cfg) else None
            blocks = stream(cfg, cfg.source, root, block_bytes=block_bytes, batch_rows=batch_rows, tally=tally)
            return _write(blocks, tmp, tally)
        frame = load_frame(cfg, cfg.source, root)
        counts = frame.attrs.pop("cleaning")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **write_metadata(counts)}), tmp)
    return Snapshot(len(frame), frame.shape[1], counts.get("filled_rows"), counts)
