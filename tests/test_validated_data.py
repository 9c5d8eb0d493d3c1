"""Validation bound to data: ``reports/validation.json`` names the snapshot it judged (its md5, as
dvc.lock records it), and prepare, train, register and gate refuse, in one line, a snapshot whose
validation failed or that no report matches, whichever way they run (`lstmops STAGE`,
`dvc repro -s STAGE`, the flow's in-process stages). Bad files given to `lstmops validate --data`
are refused without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstmops import config, paths, stages
from lstmops.errors import DataError
from lstmops.io import md5_file, read_json

from .conftest import SMALL, lstmops, make_project

SOURCE = Path("data/source/vic_elec_2014.csv")  # the project's source, as params.yaml names it


@pytest.fixture
def validated(tmp_path, small_frame):
    """A project (SMALL settings written to params.yaml) whose snapshot passed validation."""
    root = make_project(tmp_path / "project", small_frame)
    cfg = config.write_overrides(root, SMALL)
    for stage in ("ingest", "validate"):
        stages.RUNNERS[stage](cfg, root)
    return root, cfg


def refuse_source(root: Path, small_frame) -> None:
    """Replace the source with one that validation refuses (a temperature of 71.5 C, out of bounds)."""
    bad = small_frame.copy()
    bad.loc[5, "temperature_c"] = 71.5
    bad.to_csv(root / SOURCE, index=False)


def test_the_report_names_the_md5_of_the_snapshot_it_judged(validated):
    root, _ = validated
    report = read_json(root / paths.VALIDATION)
    assert report["success"] and report["data_md5"] == md5_file(root / paths.SNAPSHOT)
    assert stages.require_validated(root) == report["data_md5"]


def test_after_a_refused_validation_prepare_exits_non_zero_in_one_line_by_cli_and_by_dvc(validated, small_frame, monkeypatch):
    root, cfg = validated
    monkeypatch.chdir(root)
    refuse_source(root, small_frame)
    assert lstmops(root, {}, "ingest").returncode == 0
    refused = lstmops(root, {}, "validate")
    assert refused.returncode == 1 and "value(s) outside [-10.0, 50.0]: row 6 (71.5)" in refused.stderr
    md5 = md5_file(root / paths.SNAPSHOT)
    assert read_json(root / paths.VALIDATION)["data_md5"] == md5  # the failed report names the snapshot too

    prepared = lstmops(root, {}, "prepare")
    assert prepared.returncode == 1 and "Traceback" not in prepared.stderr
    assert prepared.stderr == (f"error: data/raw/snapshot.parquet (md5 {md5}) failed validation (1 failed checks in "
                               "reports/validation.json); fix the source, then ingest and validate again\n")  # fmt: skip
    assert not (root / paths.PREPARED).exists()

    # dvc repro -s prepare runs `lstmops prepare`, which refuses the same way.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # where `lstmops` is installed
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro", "-s", "prepare"], cwd=root, capture_output=True,
                           text=True, env={**os.environ, "PATH": path})  # fmt: skip
    assert repro.returncode != 0 and "failed validation" in repro.stderr + repro.stdout
    assert not (root / paths.PREPARED).exists()

    # The stages the flow runs in its own process refuse alike, each before doing anything.
    for stage in ("prepare", "train", "register", "gate"):
        with pytest.raises(DataError, match=r"^data/raw/snapshot.parquet \(md5 [0-9a-f]{32}\) failed validation"):
            stages.RUNNERS[stage](cfg, root)


def test_a_snapshot_that_no_report_matches_is_refused(validated, monkeypatch):
    root, cfg = validated
    monkeypatch.chdir(root)  # messages name paths relative to where the user is
    table = root / paths.SNAPSHOT
    judged = md5_file(table)
    table.write_bytes(table.read_bytes() + b"\0")  # changed after validation (ingest again, or by hand)
    with pytest.raises(DataError) as changed:
        stages.prepare(cfg, root)
    assert str(changed.value) == (f"reports/validation.json judged other data ({judged}) than data/raw/snapshot.parquet "
                                  f"(md5 {md5_file(table)}); run validate again")  # fmt: skip
    (root / paths.VALIDATION).unlink()
    with pytest.raises(DataError, match=r"^data/raw/snapshot.parquet has no validation report \(reports/validation.json\)"):
        stages.train(cfg, root)


def test_a_validation_that_dies_before_its_report_leaves_no_stale_pass(validated, monkeypatch):
    root, cfg = validated

    class Dying:  # a task whose validation fails before it writes its report
        def validate(self, cfg, root, data=None):
            raise DataError("boom")

    monkeypatch.setattr(stages, "task", lambda cfg: Dying())
    with pytest.raises(DataError, match="boom"):
        stages.validate(cfg, root)
    assert not (root / paths.VALIDATION).exists()
    with pytest.raises(DataError, match="has no validation report"):
        stages.prepare(cfg, root)


def test_validate_data_with_an_infinite_target_and_an_accepted_profile_fails_without_a_traceback(validated, small_frame):
    root, _ = validated
    assert (root / paths.ACCEPTED_PROFILE).is_file()  # drift is judged against it: the mean of inf is no number
    bad = small_frame.copy()
    bad.loc[13, "demand_gw"] = np.inf
    bad.to_csv(root / "data/source/inf.csv", index=False)
    result = lstmops(root, {}, "validate", "--data", "data/source/inf.csv", "-S", "data.bounds={}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert errors == ["error: validation failed (1 failed expectations):",
                      "  data/source/inf.csv: column 'demand_gw': 1 infinite value(s): row 14 (inf)"]  # fmt: skip
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert all("is not a number (infinite or missing values)" in line for line in warnings) and len(warnings) == 2


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda f: f.assign(demand_gw=4.2), "column 'demand_gw' is constant over the training span (zero variance): cannot scale it"),
        (lambda f: f.head(80), "80 rows: training span has 56 rows, fewer than window.input_steps + window.horizon = 60"),
    ],
    ids=["constant", "too short"],
)
def test_validate_data_refuses_constant_and_too_short_series(validated, small_frame, change, words):
    root, _ = validated
    change(small_frame.copy()).to_csv(root / "data/source/other.csv", index=False)
    result = lstmops(root, {}, "validate", "--data", "data/source/other.csv", "-S", "data.drift_threshold=null")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"  data/source/other.csv: {words}" in result.stderr.splitlines()
