"""Shared fixtures: small real data, a throw-away project (git + DVC), a real MLflow server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_CSV = REPO / "data" / "source" / "vic_elec_2014.csv"
SMALL_ROWS = 1200  # 25 days of half-hours: enough for every split at the small window below

# A small version of the default task, used wherever a test trains: same code, tiny sizes.
SMALL = [
    "window.input_steps=48",
    "window.horizon=12",
    "model.hidden_size=8",
    "model.num_layers=1",
    "train.epochs=4",
    "train.positions=32",
    "train.warmup_steps=0",
    "train.batch_size=32",
    "train.patience=2",
    "evaluate.seasonal_periods={seasonal_naive_day: 48}",
    "evaluate.plot_days=2",
]

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def small_frame() -> pd.DataFrame:
    return pd.read_csv(SOURCE_CSV, nrows=SMALL_ROWS)


def make_project(path: Path, frame: pd.DataFrame) -> Path:
    """A fresh lstmops project: the repo's params, pipeline and flow, small data, git + DVC."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, path / name)
    shutil.copytree(REPO / "flows", path / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    # dvc.yaml names code files as deps; DVC needs them present.
    shutil.copytree(REPO / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (path / "data" / "source").mkdir(parents=True)
    frame.to_csv(path / "data" / "source" / "vic_elec_2014.csv", index=False)
    run = lambda *cmd: subprocess.run(cmd, cwd=path, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    return path


@pytest.fixture
def project(tmp_path: Path, small_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_project(tmp_path / "project", small_frame)
    monkeypatch.chdir(root)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifacts)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination", str(home / "artifacts"), "--workers", "1",
        ],  # fmt: skip
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 60, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's offline test harness: a temporary database and API server for the session.
    Yields the API URL, so `lstmops run` in a subprocess reports to the same server."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield PREFECT_API_URL.value()
