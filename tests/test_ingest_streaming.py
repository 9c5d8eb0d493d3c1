"""Ingest streams its source block by block (tiny blocks here, to make several out of small data):
the snapshot does not depend on the block size, and what only shows in a later block or a later
file is refused in one line naming the file, column and row, with no snapshot written."""

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from lstmops import config
from lstmops.data.ingest import Snapshot, ingest, load_frame, stream
from lstmops.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CFG = config.load(REPO)
SMALL_BLOCKS = {"block_bytes": 4096, "batch_rows": 100}  # 1200 rows -> 10 or more blocks


def data_cfg(source: Path):
    return CFG.data.model_copy(update={"source": str(source)})


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


def partitions(tmp_path: Path, parts: list[pd.DataFrame], suffix: str = ".csv") -> Path:
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate(parts):
        write(part, folder / f"part-{i}{suffix}")
    return folder


def thirds(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [frame.iloc[:400], frame.iloc[400:800], frame.iloc[800:]]


SOURCES: dict[str, Callable[[Path, pd.DataFrame], Path]] = {
    "csv file": lambda tmp, frame: write(frame, tmp / "data.csv"),
    "parquet file": lambda tmp, frame: write(frame, tmp / "data.parquet"),
    "csv partitions": lambda tmp, frame: partitions(tmp, thirds(frame)),
    "parquet partitions": lambda tmp, frame: partitions(tmp, thirds(frame), ".parquet"),
}


def with_cell(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.astype({column: object})
    frame.loc[row, column] = value
    return frame


@pytest.mark.parametrize("layout", list(SOURCES))
def test_small_blocks_give_the_same_snapshot_as_one_block(tmp_path, small_frame, layout):
    cfg = data_cfg(SOURCES[layout](tmp_path, small_frame))
    assert len(list(stream(cfg, cfg.source, tmp_path, **SMALL_BLOCKS))) >= 10
    assert ingest(cfg, tmp_path, tmp_path / "whole.parquet") == Snapshot(rows=1200, columns=4)
    assert ingest(cfg, tmp_path, tmp_path / "blocks.parquet", **SMALL_BLOCKS) == Snapshot(rows=1200, columns=4)
    blocks = pd.read_parquet(tmp_path / "blocks.parquet")
    pd.testing.assert_frame_equal(blocks, pd.read_parquet(tmp_path / "whole.parquet"))
    pd.testing.assert_frame_equal(blocks, small_frame.assign(timestamp=pd.to_datetime(small_frame["timestamp"])))


def test_validate_data_reads_a_source_as_ingest_writes_it(tmp_path, small_frame):
    cfg = data_cfg(SOURCES["csv partitions"](tmp_path, small_frame))
    ingest(cfg, tmp_path, tmp_path / "snap.parquet")
    pd.testing.assert_frame_equal(load_frame(cfg, cfg.source, tmp_path), pd.read_parquet(tmp_path / "snap.parquet"))


def test_a_value_breaking_its_columns_type_in_a_later_block_is_named_by_file_column_and_row(tmp_path, small_frame):
    src = write(with_cell(small_frame, 1000, "demand_gw", "abc"), tmp_path / "data.csv")
    with pytest.raises(DataError) as err:
        ingest(data_cfg(src), tmp_path, tmp_path / "snap.parquet", **SMALL_BLOCKS)
    assert str(err.value) == (
        f"{src}: column 'demand_gw', row 1001: 'abc' does not fit the column's type double, "
        "taken from the rows read before it"
    )
    assert not (tmp_path / "snap.parquet").exists()


def test_a_later_partition_takes_the_first_ones_column_types(tmp_path, small_frame):
    parts = thirds(small_frame)
    parts[2] = with_cell(parts[2].reset_index(drop=True), 5, "workday", 0.5)
    folder = partitions(tmp_path, parts)
    with pytest.raises(DataError, match="part-2.csv: column 'workday', row 6: '0.5' does not fit the column's type"):
        ingest(data_cfg(folder), tmp_path, tmp_path / "snap.parquet")


def in_zones(frame: pd.DataFrame, switch_at: int) -> pd.DataFrame:
    zones = ["+10:00" if i < switch_at else "+11:00" for i in range(len(frame))]
    return frame.assign(timestamp=frame["timestamp"] + pd.Series(zones, index=frame.index))


@pytest.mark.parametrize("layout, switch_at", [("csv file", 900), ("csv partitions", 800)])  # 800: a file's first row
def test_time_zone_offsets_changing_in_a_later_block_or_file_are_refused_naming_both_rows(
    tmp_path, small_frame, layout, switch_at
):
    cfg = data_cfg(SOURCES[layout](tmp_path, in_zones(small_frame, switch_at)))
    message = rf"mixes time-zone offsets \(\+10:00 at row 1, \+11:00 at row {switch_at + 1}\)"
    with pytest.raises(DataError, match=message):
        ingest(cfg, tmp_path, tmp_path / "snap.parquet", **SMALL_BLOCKS)


@pytest.mark.parametrize(
    "change, suffix, message",
    [
        (lambda f: f.drop(columns=["workday"]), ".csv", "part-1.csv: column 'workday' is missing"),
        (lambda f: f.rename(columns={"workday": "holiday"}), ".csv", "part-1.csv: column 'workday' is missing"),
        (lambda f: f.astype({"workday": float}), ".parquet", "part-1.parquet: column 'workday' is double, not int64"),
    ],
)
def test_a_partition_with_other_columns_is_refused_naming_the_file(tmp_path, small_frame, change, suffix, message):
    folder = partitions(tmp_path, [small_frame.iloc[:600], change(small_frame.iloc[600:])], suffix)
    with pytest.raises(DataError, match=message):
        ingest(data_cfg(folder), tmp_path, tmp_path / "snap.parquet")


def test_a_failed_ingest_keeps_the_previous_snapshot_and_leaves_no_temporary_file(tmp_path, small_frame):
    out = tmp_path / "raw" / "snapshot.parquet"
    src = write(small_frame, tmp_path / "data.csv")
    ingest(data_cfg(src), tmp_path, out)
    before = out.read_bytes()
    write(with_cell(small_frame, 1100, "timestamp", "not-a-date"), src)
    with pytest.raises(DataError, match="row 1101: 'not-a-date' is not a timestamp"):
        ingest(data_cfg(src), tmp_path, out, **SMALL_BLOCKS)
    assert out.read_bytes() == before
    assert list(out.parent.iterdir()) == [out]
