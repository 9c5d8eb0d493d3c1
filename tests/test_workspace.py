"""A flow run's workspace: a clone that starts from the last run's dvc.lock and outputs and leaves
its own for the next run on any worker, never writing the checkout it was deployed from; a
Prefect run may override only what params allow; what a stage read is fingerprinted before it
read it, so data landing meanwhile is the next run's."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from lstmops import config, stages
from lstmops.errors import ConfigError
from lstmops.orchestrate import run_in_process, source_changed
from lstmops.workspace import MARKER, STATE_BRANCH, is_workspace, publish, pull

from .conftest import SOURCE_CSV, make_project

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def sh(cwd: Path, *cmd: str) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"
    return done.stdout


def dvc(cwd: Path, *args: str) -> str:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


# --- what a Prefect run may change --------------------------------------------------------------


def test_a_run_may_override_only_the_allowed_keys_and_sections():
    config.check_overridable(["train.epochs=1", "train.device=cpu"], ["train.epochs", "train.device"])
    config.check_overridable(["train.learning_rate=0.1"], ["train"])  # a section allows all its keys
    with pytest.raises(ConfigError) as refused:
        config.check_overridable(["data.source=s3://elsewhere/x.csv"], ["train.epochs"])
    assert str(refused.value) == ("override 'data.source=s3://elsewhere/x.csv': data.source may not be set by a run's "
                                  "parameters (allowed by retrain.overridable: train.epochs)")  # fmt: skip
    with pytest.raises(ConfigError, match="train.epochs_x may not be set"):
        config.check_overridable(["train.epochs_x=1"], ["train.epochs"])  # a prefix of a key is not the key


def test_the_default_allowlist_leaves_out_the_source_the_gate_and_the_model_name():
    allowed = config.load(Path(__file__).resolve().parents[1]).retrain.overridable
    for key in ("data.source", "promote.min_improvement", "mlflow.model_name", "retrain.overridable"):
        with pytest.raises(ConfigError):
            config.check_overridable([f"{key}=x"], allowed)


# --- the workspace: clone, pull, run, publish -------------------------------------------------------


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, Path]:
    """A deployed project (a bare repository with a DVC remote in its config) and the checkout it
    was pushed from. Its one stage copies a file, standing in for the pipeline."""
    checkout, bare, remote = tmp_path / "checkout", tmp_path / "origin.git", tmp_path / "dvc-remote"
    checkout.mkdir()
    sh(checkout, "git", "init", "-q", "-b", "main")
    dvc(checkout, "init", "-q")
    dvc(checkout, "remote", "add", "-d", "storage", str(remote))
    (checkout / "data.txt").write_text("v1\n")
    (checkout / "dvc.yaml").write_text("stages:\n  copy:\n    cmd: cp data.txt out.txt\n    deps: [data.txt]\n    outs: [out.txt]\n")
    (checkout / ".gitignore").write_text("/out.txt\n")
    sh(checkout, "git", "add", "-A")
    sh(checkout, *GIT, "commit", "-qm", "project")
    sh(tmp_path, "git", "clone", "-q", "--bare", str(checkout), str(bare))
    sh(checkout, "git", "remote", "add", "origin", str(bare))
    return bare, checkout


def clone(bare: Path, where: Path) -> Path:
    where.parent.mkdir(parents=True, exist_ok=True)
    sh(where.parent, "git", "clone", "-q", str(bare), str(where))
    return where


def test_a_run_leaves_its_lock_and_outputs_and_the_next_clone_skips_what_did_not_change(origin, tmp_path):
    bare, checkout = origin
    first = clone(bare, tmp_path / "worker-a" / "run-1")
    said = pull(first)
    assert said[0] == f"no {STATE_BRANCH} branch yet: every stage runs from the deployed ref's dvc.lock"
    assert is_workspace(first) and not is_workspace(checkout)
    assert "Running stage 'copy'" in dvc(first, "repro")
    said = publish(first, first, "run 1")
    assert said == ["outputs pushed to the DVC remote", said[1]] and said[1].startswith(f"dvc.lock pushed to {STATE_BRANCH}")

    second = clone(bare, tmp_path / "worker-b" / "run-2")  # another machine: nothing shared but the remotes
    assert pull(second)[:2] == [f"dvc.lock from {STATE_BRANCH}: dvc.lock", "outputs pulled from the DVC remote (what it had)"]
    assert (second / "out.txt").read_text() == "v1\n"
    assert json.loads(dvc(second, "status", "--json")) == {}  # nothing to recompute
    assert publish(second, second, "run 2")[-1] == f"dvc.lock unchanged on {STATE_BRANCH}"
    # The deployed checkout was never written, and the deployed branch did not move.
    assert sh(checkout, "git", "status", "--porcelain") == ""
    assert sh(checkout, "git", "rev-parse", "HEAD") == sh(bare, "git", "rev-parse", "main")
    log = sh(bare, "git", "log", "--format=%s", STATE_BRANCH).split("\n")
    assert log[:2] == ["run 1", "project"]  # one commit per run that changed something, on the deployed ref


def test_a_cold_or_missing_remote_is_tolerated(origin, tmp_path):
    bare, _ = origin
    work = clone(bare, tmp_path / "run")
    said = pull(work)  # the remote does not exist yet: no run pushed to it
    assert said[1] == "outputs pulled from the DVC remote (what it had)" and not (work / "out.txt").exists()
    assert "Running stage 'copy'" in dvc(work, "repro")  # nothing to fetch: computed


def test_runs_of_two_pipelines_publishing_at_once_both_land(origin, tmp_path):
    bare, _ = origin
    runs = [clone(bare, tmp_path / f"run-{i}") for i in range(2)]
    for i, work in enumerate(runs):
        pull(work)
        folder = work / "pipelines" / f"p{i}"
        folder.mkdir(parents=True)
        (folder / "dvc.lock").write_text(f"schema: '2.0'\nstages: {{}}\n# pipeline {i}\n")
    done: list[list[str]] = []
    threads = [threading.Thread(target=lambda w=w: done.append(publish(w, w / "pipelines" / w.name.replace("run-", "p"),
                                                                        f"run of {w.name}"))) for w in runs]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 2
    tree = sh(bare, "git", "ls-tree", "-r", "--name-only", STATE_BRANCH).split()
    assert {"pipelines/p0/dvc.lock", "pipelines/p1/dvc.lock"} <= set(tree)


# --- what a stage read is what dvc.lock records ----------------------------------------------------


def test_a_partition_landing_while_ingest_runs_is_a_change_for_the_next_run(tmp_path, monkeypatch):
    frame = pd.read_csv(SOURCE_CSV, nrows=400)
    root = make_project(tmp_path / "project", frame.iloc[:10])
    parts = root / "data" / "source" / "parts"
    parts.mkdir()
    frame.iloc[:300].to_csv(parts / "part-001.csv", index=False)
    config.write_overrides(root, ["data.source=data/source/parts"])
    real = stages.RUNNERS["ingest"]

    def ingest_while_a_partition_lands(cfg, root_):
        said = real(cfg, root_)
        frame.iloc[300:].to_csv(parts / "part-002.csv", index=False)  # lands after the read, before DVC records
        return said

    monkeypatch.setitem(stages.RUNNERS, "ingest", ingest_while_a_partition_lands)
    assert run_in_process(root, "ingest") == ["ingest"]
    assert pd.read_parquet(root / "data/raw/snapshot.parquet").shape[0] == 300  # what ingest read
    assert source_changed(root)  # the next run ingests part-002, which was never read
    monkeypatch.setitem(stages.RUNNERS, "ingest", real)
    assert run_in_process(root, "ingest") == ["ingest"] and not source_changed(root)
    assert pd.read_parquet(root / "data/raw/snapshot.parquet").shape[0] == 400


def test_the_marker_is_what_makes_a_workspace(tmp_path):
    assert not is_workspace(tmp_path)
    (tmp_path / MARKER).write_text("x")
    assert is_workspace(tmp_path)


def test_training_threads_fit_the_cpus_and_ranks_share_them(monkeypatch):
    import torch

    from lstmops import cpus

    monkeypatch.setattr(cpus, "available_cpus", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        assert cpus.configure_threads() == 8 and torch.get_num_threads() == 8
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, 4 ranks on this machine
        assert cpus.configure_threads() == 2
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
        assert cpus.configure_threads() == 1  # never none
    finally:
        torch.set_num_threads(before)
