"""Malformed inputs, each refused by the first stage that can tell, in one line naming the file,
column, row or rule, with nothing written downstream of that stage. (The S3 cases, a missing key
and wrong credentials, are in test_s3.py; the CLI's exit code and output in test_pipeline.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstmops import config, paths, stages
from lstmops.errors import LstmopsError, ValidationFailed

from .conftest import SMALL

SOURCE = Path("data/source/input.csv")
# What the refusing stage must not leave behind: its published output, or the next stage's.
OUTPUTS = {"ingest": paths.SNAPSHOT, "validate": paths.ACCEPTED_PROFILE, "prepare": paths.PREPARED}


def csv_from(change: Callable[[pd.DataFrame], pd.DataFrame]):
    def write(root: Path, frame: pd.DataFrame) -> None:
        change(frame.copy()).to_csv(root / SOURCE, index=False)

    return write


def raw_bytes(content: bytes):
    def write(root: Path, frame: pd.DataFrame) -> None:
        (root / SOURCE).write_bytes(content)

    return write


def set_cell(row: int, column: str, value):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object})
        frame.loc[row, column] = value
        return frame

    return change


def truncated_parquet(root: Path, frame: pd.DataFrame) -> None:
    full = root / "data/source/full.parquet"
    frame.to_parquet(full)
    (root / "data/source/input.parquet").write_bytes(full.read_bytes()[:-300])


def mixed_offsets(frame: pd.DataFrame) -> pd.DataFrame:
    frame["timestamp"] = frame["timestamp"] + "+10:00"
    frame.loc[600:, "timestamp"] = frame.loc[600:, "timestamp"].str.replace("+10:00", "+11:00")
    return frame


CASES = {
    # name: (write the input, extra overrides, failing stage, message fragment)
    "empty file": (raw_bytes(b""), [], "ingest", "input.csv: file is empty"),
    "header only": (raw_bytes(b"timestamp,demand_gw,temperature_c,workday\n"), [], "ingest", "no data rows"),
    "wrong delimiter": (raw_bytes(b"timestamp;demand_gw\n2014-01-01 00:00;3.9\n"), [], "ingest", "wrong delimiter?"),
    "non-UTF-8 bytes": (raw_bytes(b"timestamp,demand_gw\n2014-01-01 00:00,\xff\xfe3\n"), [], "ingest",
                        "cannot be read as csv ('utf-8' codec can't decode"),
    "unparseable date": (csv_from(set_cell(20, "timestamp", "32/13/2014")), [], "ingest",
                         "column 'timestamp', row 21: '32/13/2014' is not a timestamp"),
    "mixed time-zone offsets": (csv_from(mixed_offsets), [], "ingest",
                                "mixes time-zone offsets (+10:00 at row 1, +11:00 at row 601)"),
    "truncated parquet": (truncated_parquet, ["data.source=data/source/input.parquet"], "ingest",
                          "input.parquet: cannot be read as parquet"),
    "missing source file": (raw_bytes(b"x"), ["data.source=data/source/absent.csv"], "ingest",
                            "data/source/absent.csv: source file not found"),
    "unsupported file type": (raw_bytes(b"x"), ["data.source=data/source/input.xlsx"], "ingest",
                              "unsupported file type '.xlsx'"),
    "mixed types in a column": (csv_from(set_cell(7, "temperature_c", "warm")), [], "validate",
                                "column 'temperature_c': expected numbers, found dtype str; e.g. row 8 ('warm')"),
    "NaN in a feature": (csv_from(set_cell(11, "temperature_c", np.nan)), [], "validate",
                         "column 'temperature_c': 1 null value(s): row 12"),
    "inf in a feature": (csv_from(set_cell(13, "demand_gw", np.inf)), [], "validate",
                         "column 'demand_gw': 1 value(s) outside [0.0, 15.0]: row 14 (inf)"),
    "inf in an unbounded feature": (csv_from(set_cell(13, "workday", -np.inf)), ["data.bounds={}"], "validate",
                                    "column 'workday': 1 infinite value(s): row 14 (-inf)"),
    "duplicated timestamps": (csv_from(lambda f: f.assign(timestamp=f["timestamp"].where(f.index != 31, f["timestamp"][30]))),
                              [], "validate", "column 'timestamp': 2 duplicated timestamp(s): row 31"),
    "unsorted rows": (csv_from(lambda f: f.iloc[[*range(40), 41, 40, *range(42, len(f))]]), [], "validate",
                      "timestamp(s) not after the previous row: row 42"),
    "gap in the time index": (csv_from(lambda f: f.drop(index=range(100, 104))), [], "validate",
                              "1 step(s) from the previous row differ from 30min: row 101"),
    "gap longer than the fill limit": (csv_from(lambda f: f.drop(index=range(100, 104))),
                                       ["data.irregular_index=resample", "data.fill_limit=2"], "ingest",
                                       "gap of 4 steps starting 2014-01-03 02:00:00 exceeds data.fill_limit=2"),
    "value out of bounds": (csv_from(set_cell(5, "temperature_c", 71.5)), [], "validate",
                            "column 'temperature_c': 1 value(s) outside [-10.0, 50.0]: row 6 (71.5)"),
    "missing target column": (csv_from(lambda f: f.drop(columns=["demand_gw"])), [], "validate",
                              "column 'demand_gw': required column is missing"),
    "params name a column that does not exist": (csv_from(lambda f: f), ["data.features=[demand_gw, humidity]"],
                                                 "validate", "column 'humidity': required column is missing"),
    # Validation applies prepare's rules to the series, so these never reach prepare.
    "target constant over the training span": (csv_from(lambda f: f.assign(demand_gw=4.2)), [], "validate",
                                               "column 'demand_gw' is constant over the training span"),
    "fewer rows than one window plus horizon": (csv_from(lambda f: f.head(80)), [], "validate",
                                                "80 rows: training span has 56 rows, fewer than window.input_steps + window.horizon = 60"),
}  # fmt: skip


def run_until_failure(root: Path, overrides: list[str]) -> tuple[str | None, LstmopsError | None]:
    cfg = config.load(root, SMALL + [f"data.source={SOURCE}", *overrides])
    for name in ("ingest", "validate", "prepare"):
        try:
            stages.RUNNERS[name](cfg, root)
        except LstmopsError as exc:
            return name, exc
    return None, None


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_in_one_line_and_nothing_downstream_is_written(case, project, small_frame):
    write, overrides, stage, fragment = CASES[case]
    write(project, small_frame)
    failed_at, error = run_until_failure(project, overrides)
    assert failed_at == stage, f"{case}: expected {stage} to refuse it, got {failed_at}: {error}"
    lines = error.lines if isinstance(error, ValidationFailed) else [str(error)]
    assert any(fragment in line for line in lines), lines
    assert all("\n" not in line for line in lines)
    assert not (project / OUTPUTS[stage]).exists()
