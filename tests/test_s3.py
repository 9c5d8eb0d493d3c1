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
