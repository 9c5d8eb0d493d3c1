"""How the flow tells an outage (retry later) from a real failure (stop), for stages started by
`dvc repro` in their own process: by the command's exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lstmops.errors import EXIT_UNAVAILABLE, StageFailed, StageUnavailable
from lstmops.orchestrate import reproduce, run_in_process


def dvc_project(root: Path, exit_code: int) -> Path:
    root.mkdir()
    (root / "stage.py").write_text(f"import sys\nsys.exit({exit_code})\n")
    (root / "dvc.yaml").write_text(f"stages:\n  flaky:\n    cmd: {sys.executable} stage.py\n    deps: [stage.py]\n")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def test_an_unreachable_server_exit_status_is_retryable_and_any_other_is_not(tmp_path):
    with pytest.raises(StageUnavailable, match="unreachable"):
        reproduce(dvc_project(tmp_path / "outage", EXIT_UNAVAILABLE), "flaky")
    with pytest.raises(StageFailed) as failed:
        reproduce(dvc_project(tmp_path / "broken", 1), "flaky")
    assert not isinstance(failed.value, StageUnavailable)


def test_in_process_runner_skips_a_stage_dvc_finds_unchanged(project):
    """DVC decides for the in-process runner too: ingest runs once, then is up to date."""
    assert run_in_process(project, "ingest") == ["ingest"]
    assert run_in_process(project, "ingest") == []
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "ingest", "--json"], cwd=project,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert status.stdout.strip() == "{}"  # recorded in dvc.lock as `dvc repro` would


def test_the_source_watcher_sees_a_changed_source_and_nothing_else(project):
    from lstmops.orchestrate import source_changed

    assert source_changed(project)  # never ingested
    run_in_process(project, "ingest")
    assert not source_changed(project)
    source = project / "data/source/vic_elec_2014.csv"
    source.write_text(source.read_text() + "2014-01-26 00:00:00,4.0,20.0,1\n")  # a new row lands
    assert source_changed(project)
