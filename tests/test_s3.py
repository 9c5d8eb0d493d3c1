"""S3 against a real server (SeaweedFS on 127.0.0.1): s3:// sources for ingest, and a DVC S3
remote that restores the pipeline's outputs bit for bit after the local cache is gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pandas as pd
import pytest

from lstmops import config

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CLI = Path(sys.executable).parent / "lstmops"


def client(env: dict[str, str]):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")  # fmt: skip


def lstmops(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], cwd=project, env={**os.environ, **env}, capture_output=True, text=True)


def test_ingest_reads_partitions_under_an_s3_prefix(project, s3_server, small_frame):
    s3 = client(s3_server)
    half = len(small_frame) // 2
    for i, part in enumerate((small_frame.iloc[:half], small_frame.iloc[half:])):
        s3.put_object(Bucket="lstmops", Key=f"vic/part-{i}.csv", Body=part.to_csv(index=False).encode())
    result = lstmops(project, s3_server, "ingest", "-S", "data.source=s3://lstmops/vic/")
    assert result.returncode == 0, result.stderr
    snapshot = pd.read_parquet(project / "data/raw/snapshot.parquet")
    assert snapshot["demand_gw"].tolist() == small_frame["demand_gw"].tolist()


@pytest.mark.parametrize(
    "source, env_change, message",
    [
        ("s3://lstmops/vic/missing.csv", {}, "s3://lstmops/vic/missing.csv: object not found"),
        ("s3://lstmops/vic/part-0.csv", {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "access denied"),
    ],
)
def test_bad_s3_source_fails_in_one_line_and_writes_nothing(project, s3_server, source, env_change, message):
    result = lstmops(project, {**s3_server, **env_change}, "ingest", "-S", f"data.source={source}")
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not (project / "data/raw/snapshot.parquet").exists()


def test_dvc_remote_round_trip_restores_identical_outputs(project, s3_server):
    env = {**s3_server, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=project, check=True,
                   env={**os.environ, **env, "PATH": f"{CLI.parent}:{os.environ['PATH']}"}, capture_output=True)  # fmt: skip
    assert (project / "data/prepared/meta.json").exists()
    lock_before = (project / "dvc.lock").read_text()

    setup = lstmops(project, s3_server, "remote", "s3://lstmops/dvc-cache")
    assert setup.returncode == 0, setup.stderr
    assert "endpointurl" not in (project / ".dvc/config").read_text()  # endpoint and secrets stay local
    assert "secret_access_key" in (project / ".dvc/config.local").read_text()

    dvc = lambda *a: subprocess.run([sys.executable, "-m", "dvc", *a], cwd=project, env={**os.environ, **env},  # noqa: E731
                                    capture_output=True, text=True)  # fmt: skip
    assert dvc("push", "--with-deps", "prepare").returncode == 0
    shutil.rmtree(project / ".dvc/cache")
    shutil.rmtree(project / "data/raw")
    shutil.rmtree(project / "data/prepared")

    pulled = dvc("pull", "--with-deps", "prepare")
    assert pulled.returncode == 0, pulled.stderr
    status = dvc("status", "--with-deps", "--json", "prepare")
    assert json.loads(status.stdout) == {}
    assert (project / "dvc.lock").read_text() == lock_before
    assert (project / "data/prepared/meta.json").exists()


def test_dvc_repro_takes_the_pipeline_input_from_s3_and_reruns_when_an_object_changes(project, s3_server, small_frame):
    s3 = client(s3_server)
    half = len(small_frame) // 2
    for i, part in enumerate((small_frame.iloc[:half], small_frame.iloc[half:])):
        s3.put_object(Bucket="lstmops", Key=f"feed/part-{i}.csv", Body=part.to_csv(index=False).encode())
    config.write_overrides(project, ["data.source=s3://lstmops/feed/"])
    env = {**os.environ, **s3_server, "PATH": f"{CLI.parent}:{os.environ['PATH']}"}
    dvc = lambda *a: subprocess.run([sys.executable, "-m", "dvc", *a], cwd=project, env=env,  # noqa: E731
                                    capture_output=True, text=True)  # fmt: skip

    first = dvc("repro", "validate")
    assert first.returncode == 0, first.stderr
    snapshot = pd.read_parquet(project / "data/raw/snapshot.parquet")
    assert snapshot["demand_gw"].tolist() == small_frame["demand_gw"].tolist()
    assert "s3://lstmops/feed/" in (project / "dvc.lock").read_text()  # the S3 objects are a tracked dependency
    assert "up to date" in dvc("repro", "validate").stdout

    changed = small_frame.iloc[half:].assign(demand_gw=lambda f: f["demand_gw"] + 0.01)
    s3.put_object(Bucket="lstmops", Key="feed/part-1.csv", Body=changed.to_csv(index=False).encode())
    assert "ingest" in json.loads(dvc("status", "--json", "--with-deps", "validate").stdout)
    assert dvc("repro", "validate").returncode == 0
    snapshot = pd.read_parquet(project / "data/raw/snapshot.parquet")
    assert snapshot["demand_gw"].iloc[half:].tolist() == changed["demand_gw"].tolist()
