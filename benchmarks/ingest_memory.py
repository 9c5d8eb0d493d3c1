"""Peak memory of ingest on a large CSV: lstmops's streaming ingest vs reading it whole.

    .venv/bin/python benchmarks/ingest_memory.py [--rows 10000000] [--dir DIR]

Writes a CSV of --rows rows (a timestamp every minute and 7 float columns) into a temporary
directory (under DIR if given, removed at the end), runs each step below in a fresh interpreter
and reports the wall time of the step's work (imports done before the clock starts) and the peak
RSS of its process (VmHWM), raw: the interpreter and its imports are included, and shown on their
own. (Not ru_maxrss: a forked child's counts the parent's memory from before the exec.)
  imports    the imports both ingests need, nothing else
  streaming  lstmops ingest: pyarrow CSV blocks -> parsed time column -> ParquetWriter
  baseline   the previous approach: pd.read_csv of the whole file, pd.to_datetime, to_parquet
Peak RSS is set against the size of the data in memory (the snapshot read back: the arrow
table's nbytes, and pandas' memory_usage(deep=True)); the target is streaming < 3x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEATURES = [f"v{i}" for i in range(7)]
CHUNK_ROWS = 1_000_000  # rows generated and written at a time, so the generator stays small
MB = 1 << 20


def write_csv(path: Path, rows: int) -> None:
    """A minute-by-minute timestamp and 7 random walks rounded to 3 decimals (sensor-like text)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(0)
    level = np.zeros(len(FEATURES))
    start = np.datetime64("2000-01-01T00:00:00", "s")
    schema = pa.schema([("time", pa.timestamp("s"))] + [(name, pa.float64()) for name in FEATURES])
    with pa_csv.CSVWriter(path, schema) as writer:
        for first in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - first)
            walk = level + rng.standard_normal((n, len(FEATURES))).cumsum(axis=0)
            level = walk[-1]
            times = start + np.arange(first, first + n, dtype="int64") * np.timedelta64(60, "s")
            columns = [pa.array(times)] + [pa.array(walk[:, i].round(3)) for i in range(len(FEATURES))]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


# --- the measured steps, each run in its own interpreter ------------------------------------------


def step_imports(csv: Path, out: Path) -> None:
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import lstmops.data.ingest  # noqa: F401


def step_streaming(csv: Path, out: Path) -> None:
    from lstmops import config
    from lstmops.data.ingest import ingest

    overrides = [f"data.source={csv}", "data.time_column=time", "data.target=v0",
                 f"data.features=[{', '.join(FEATURES)}]", "data.frequency=1min", "data.bounds={}"]  # fmt: skip
    ingest(config.load(ROOT, overrides).data, ROOT, out)


def step_baseline(csv: Path, out: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(csv)
    frame["time"] = pd.to_datetime(frame["time"], format="ISO8601")
    frame.to_parquet(out, index=False)


STEPS = {"imports": step_imports, "streaming": step_streaming, "baseline": step_baseline}


def peak_rss() -> int:
    """This process's peak resident set size in bytes, since its exec."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # reported in kB


def run_step(name: str, csv: Path, out: Path) -> tuple[float, int]:
    """Run one step in a fresh interpreter; returns (seconds of work, peak RSS in bytes)."""
    command = [sys.executable, __file__, "--step", name, "--csv", str(csv), "--out", str(out)]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return result["seconds"], result["peak"]


def in_memory(snapshot: Path) -> tuple[int, int, int]:
    """Rows, arrow bytes and pandas bytes of the snapshot read back."""
    import pyarrow.parquet as pq

    table = pq.read_table(snapshot)
    return table.num_rows, table.nbytes, int(table.to_pandas().memory_usage(deep=True).sum())


def report(rows: int, csv: Path, work: Path) -> None:
    results = {name: run_step(name, csv, work / f"{name}.parquet") for name in STEPS}
    table_rows, arrow_bytes, pandas_bytes = in_memory(work / "streaming.parquet")
    assert table_rows == rows, (table_rows, rows)
    import pyarrow.parquet as pq

    same = pq.read_table(work / "streaming.parquet").equals(pq.read_table(work / "baseline.parquet"))
    print(f"rows: {rows:,}   CSV: {csv.stat().st_size / MB:,.1f} MB, {1 + len(FEATURES)} columns")
    print(f"in memory (snapshot read back): arrow {arrow_bytes / MB:,.1f} MB, pandas {pandas_bytes / MB:,.1f} MB")
    print(f"{'step':<10} {'seconds':>8} {'peak RSS':>11} {'peak RSS / arrow table':>23}")
    for name, (seconds, peak) in results.items():
        print(f"{name:<10} {seconds:8.1f} {peak / MB:8,.0f} MB {peak / arrow_bytes:22.2f}x")
    (stream_s, stream_peak), (base_s, base_peak) = results["streaming"], results["baseline"]
    print(f"streaming / baseline: time {stream_s / base_s:.2f}x, peak RSS {stream_peak / base_peak:.2f}x")
    print(f"streaming and baseline snapshots hold the same table: {same}")
    verdict = "pass" if stream_peak < 3 * arrow_bytes else "FAIL"
    print(f"acceptance, streaming peak RSS < 3x the table: {stream_peak / arrow_bytes:.2f}x -> {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, help="where to put the temporary directory for the CSV and snapshots")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # internal: one measured step
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step_imports(args.csv, args.out)  # outside the timing: every step pays the same imports
        tick = time.perf_counter()
        STEPS[args.step](args.csv, args.out)
        print(json.dumps({"seconds": time.perf_counter() - tick, "peak": peak_rss()}))
        return
    with tempfile.TemporaryDirectory(prefix="ingest-memory-", dir=args.dir) as tmp:
        work = Path(tmp)
        csv = work / "large.csv"
        tick = time.perf_counter()
        write_csv(csv, args.rows)
        print(f"generated {csv.name} in {time.perf_counter() - tick:.1f} s")
        report(args.rows, csv, work)


if __name__ == "__main__":
    main()
