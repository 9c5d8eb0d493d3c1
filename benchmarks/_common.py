"""What both benchmarks start from: the default data, ingested and prepared in a temporary folder."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lstmops.config import Config
from lstmops.data.ingest import ingest
from lstmops.tasks.forecast.prepare import Prepared, prepare

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def prepared_dir(cfg: Config) -> Iterator[Path]:
    """Run ingest and prepare for ``cfg`` in a temporary folder (the project is left as it is);
    yields the prepared directory, as the prepare stage writes it."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ingest(cfg.data, ROOT, work / "snapshot.parquet")
        prepare(cfg, work / "snapshot.parquet", work / "prepared")
        yield work / "prepared"


def load_prepared(directory: Path) -> tuple[Prepared, np.ndarray]:
    """The prepared metadata and the scaled series."""
    return Prepared.load(directory), np.load(directory / "series.npy")
